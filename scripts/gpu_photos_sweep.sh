#!/usr/bin/env bash
# Several photos-model configurations trained side by side on one GPU, in one device call of fixed length
# (issue 16). Each configuration is one run of scripts/gpu_train_photos.sh without its evaluation (TASKS=0):
# they share the GPU, which one such small network leaves mostly idle, and all stop meta-training early
# enough to export by a common deadline. Choose between them on validation (each run's metrics.jsonl) and
# adaptation latency, then evaluate the chosen bundle elsewhere (no GPU needed).
#
#   BUDGET=480 bash scripts/gpu_photos_sweep.sh PHOTOS_ZIP "WIDTH=64" "WIDTH=96" "WIDTH=64 EPOCHS=60"
#
# Each quoted argument: settings of gpu_train_photos.sh (SIZE, ARCH, WIDTH, NORM, EPOCHS, MINUTES; DEVICE=cuda and
# MINUTES=10 unless given). BUDGET: seconds until the deadline (480); a configuration still running 60 s after
# it is stopped. Results: $OUT/config-N.tar.gz (that run's output folder: pre/, meta/, photos.fadapt, logs,
# timings.txt), $OUT/sweep.log (which configuration is which, and how each ended), $OUT/machine.txt.
# A device call for it: run(command="BUDGET=480 bash scripts/gpu_photos_sweep.sh data/tin_device.zip ...",
#                           carry=["data/tin_device.zip"], timeout_s=590)
set -u -o pipefail
zip="${1:?usage: BUDGET=480 bash scripts/gpu_photos_sweep.sh PHOTOS_ZIP \"WIDTH=64\" [\"WIDTH=96\" ...]}"
shift
[ $# -gt 0 ] || { echo "error: name at least one configuration, e.g. \"WIDTH=64\"" >&2; exit 2; }
[ -f "$zip" ] || { echo "error: $zip is not a file (make it with scripts/pack_photos_for_device.py)" >&2; exit 2; }
out="${OUT:-$PWD/gpu_photos_sweep_out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
budget="${BUDGET:-480}"
deadline=$(( $(date +%s) + budget ))
work="$(mktemp -d)"
{ nvidia-smi; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"; nproc; } > "$out/machine.txt" 2>&1
threads=$(( $(nproc) / $# )); [ "$threads" -ge 1 ] || threads=1
n=0
for config in "$@"; do
    n=$((n + 1))
    echo "config-$n: $config" >> "$out/sweep.log"
    # shellcheck disable=SC2086  # $config is a list of NAME=VALUE words on purpose
    ( env DEVICE=cuda MINUTES=10 $config TASKS=0 DEADLINE="$deadline" OUT="$work/config-$n" OMP_NUM_THREADS="$threads" \
          timeout $((budget + 60)) bash scripts/gpu_train_photos.sh "$zip" > "$work/config-$n.log" 2>&1
      echo "config-$n: exit $?" >> "$out/sweep.log" ) &
done
wait
for i in $(seq 1 $n); do
    mv "$work/config-$i.log" "$work/config-$i/" 2>/dev/null
    rm -f "$work/config-$i"/pre/last.npz "$work/config-$i"/meta/last.npz
    tar -czf "$out/config-$i.tar.gz" -C "$work" "config-$i"
done
cat "$out/sweep.log"
