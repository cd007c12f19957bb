#!/usr/bin/env bash
# The photos model on a GPU machine, in one device call: supervised pre-training on the 140 training classes
# of Tiny ImageNet (--protocol split --seed 0), optionally first-order MAML from it for a fixed wall-time
# budget, export, and evaluation through the runtime on the 40 test classes (the model card's numbers, each
# beside --steps 0 on the same tasks: with MINUTES=0 that is the transfer baseline). Everything lands in $OUT
# (or ./gpu_train_photos_out).
#
#   SIZE=64 ARCH=conv4 WIDTH=96 NORM=instance EPOCHS=30 MINUTES=0 TASKS=600 bash scripts/gpu_train_photos.sh PHOTOS_ZIP [extra train flags]
#
# PHOTOS_ZIP: a git-ignored zip of this checkout made by scripts/pack_photos_for_device.py (its validation and
# test classes are the shared 100-per-class zip's, byte for byte, so test numbers equal evaluation on that zip):
#   python scripts/pack_photos_for_device.py tin500/ \
#       ../shared/data/tinyimagenet/tiny-imagenet-200-train-100.zip data/tin_device.zip
# (tin500/: the 500 photos per class of the public mirror; the pack script's docstring says how to make it)
# then, with the device tool: run(command="bash scripts/gpu_train_photos.sh data/tin_device.zip",
#                                 carry=["data/tin_device.zip"], timeout_s=...)
# A pack made with --size 32 holds all 499 training photos per class, every photo already 32 x 32 (its held-out
# classes resized too, so not the card's bytes): train it with SIZE=32 TASKS=0 and evaluate the returned bundle
# on the shared zip here.
# Settings (environment): SIZE image side (64), ARCH the network (conv4; or resnet12: its WIDTH is the first
# block's, e.g. 16 or 32), WIDTH Conv4 filters (96), EPOCHS pre-training epochs (30),
# NORM instance | layer (instance; at 32x32 on the CPU layer norm scored 87.0 vs 81.0 on colour sample-photo
# crops but 60.4 vs 62.8 on validation 5-way 5-shot), MINUTES meta-training minutes (0: skip it and export the
# pre-trained run; the shipped model's recipe: FOMAML with the prototype head scaled by 0.1, 1 step at lr 0.001,
# meta lr 2e-4, which on the CPU beat the pre-trained body by 1.3-2.0 points, see the README's photos card),
# TASKS evaluation
# tasks per shape (600), DEVICE the trainer's --device (auto: CUDA when torch sees it; DEVICE=cuda on the GPU
# machine fails at once instead of training on its CPU). Extra flags go to the meta-training stage only
# (e.g. --tf32, --learn-inner-lr). TASKS=0 skips the evaluation (evaluate the returned bundle elsewhere);
# DEADLINE (seconds since the epoch, e.g. $(( $(date +%s) + 540 ))) shortens the meta-training so that export
# can still finish before it (it leaves 150 s), for a device call whose length is fixed.
# The pre-training run records --inner-lr 0.001 (the pre-trained body's device recipe: 3 SGD steps at
# 0.001); it does not change pre-training, only the recipe a MINUTES=0 export carries.
# Budget: start-up and data loading ~15-25 s per command; pre-training (30 epochs of 140 x 197 photos, about
# 6,500 batches of 128: estimated 1-2 min on an H100/H200); MINUTES of meta-training plus a final validation;
# ~1 min export; then evaluation on the CPU (onnxruntime), the costly part at 64x64/width 96: one task of each
# of the six evaluations costs ~10 CPU-core-seconds with the meta-trained 1-step recipe (~16 with the
# pre-trained run's 3 steps; 20-way 5-shot is three quarters of it; measured on a 2-core dev machine), so
# TASKS=600 is ~10 min even on 16 cores and TASKS=100 ~2 min. A device call is at most 10 minutes: lower
# TASKS there (the bundle is written before evaluation starts, and evaluates anywhere later: no GPU needed).
# $OUT: machine.txt, pre/ and meta/ (run folders without last.npz), *.log, photos.fadapt, evaluation.jsonl
# (one JSON object per evaluation: 5w1s, 5w5s, 20w5s, each with the recipe's steps and then "steps": 0),
# timings.txt (seconds per stage).
set -euo pipefail
zip="${1:?usage: bash scripts/gpu_train_photos.sh PHOTOS_ZIP [train flags]}"
shift
[ -f "$zip" ] || { echo "error: $zip is not a file (make it with scripts/pack_photos_for_device.py)" >&2; exit 2; }
out="${OUT:-$PWD/gpu_train_photos_out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
zip="$(cd "$(dirname "$zip")" && pwd)/$(basename "$zip")"
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
size="${SIZE:-64}" width="${WIDTH:-96}" epochs="${EPOCHS:-30}" minutes="${MINUTES:-0}" tasks="${TASKS:-600}"
norm="${NORM:-instance}" arch="${ARCH:-conv4}"
device="${DEVICE:-auto}"
fa() { python3 -m fastadapt "$@"; }
stage() { echo "$1 $((SECONDS - started))" >> "$out/timings.txt"; started=$SECONDS; }
started=$SECONDS
{ nvidia-smi; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"; nproc; } > "$out/machine.txt" 2>&1 || true
echo "SIZE=$size ARCH=$arch WIDTH=$width NORM=$norm EPOCHS=$epochs MINUTES=$minutes TASKS=$tasks DEVICE=$device extra: $*" > "$out/timings.txt"
common=(--data "$zip" --protocol split --channels 3 --image-size "$size" --no-invert --fit crop --no-rotations
        --augment photo --norm "$norm" --arch "$arch" --width "$width" --device "$device")
fa train "${common[@]}" --pretrain-epochs "$epochs" --pretrain-schedule cosine --pretrain-lr 2e-3 --iterations 0 \
    --head-init prototype --inner-lr 0.001 --ways 5 --shots 5 --val-tasks 300 --quiet --out "$out/pre" 2>&1 \
    | tee "$out/pre.log"
stage pre
run="$out/pre"
if [ -n "${DEADLINE:-}" ]; then  # leave 150 s for loading, the final validation and the export
    minutes="$(awk -v m="$minutes" -v left="$(( DEADLINE - $(date +%s) - 150 ))" 'BEGIN { l = left / 60; print (l < m ? (l > 0 ? l : 0) : m) }')"
    echo "meta-training minutes after the DEADLINE: $minutes" >> "$out/timings.txt"
fi
if awk "BEGIN { exit !($minutes > 0) }"; then
    fa train "${common[@]}" --init-from "$out/pre" --algorithm fomaml --head-init prototype --head-scale 0.1 \
        --ways 5 --shots 5 --query 15 --meta-batch 16 --inner-steps 1 --inner-lr 0.001 --meta-lr 2e-4 --iterations 1000000 \
        --val-every 100 --val-tasks 300 --max-minutes "$minutes" "$@" --out "$out/meta" 2>&1 | tail -n 5 \
        | tee "$out/meta.log"
    run="$out/meta"
    stage meta
fi
fa export "$run" --out "$out/photos.fadapt" 2>&1 | tee "$out/export.log"
stage export
# at most 8 files come back from a device call: the run folders travel as one archive (before the evaluation,
# which a time limit may cut), without last.npz (best.npz is what was exported)
rm -f "$out"/pre/last.npz "$out"/meta/last.npz
tar -czf "$out/runs.tar.gz" -C "$out" pre $([ -d "$out/meta" ] && echo meta) && rm -rf "$out/pre" "$out/meta"
if [ "$tasks" -gt 0 ]; then
    for shape in "5 1" "5 5" "20 5"; do
        set -- $shape
        for steps in "" "--steps 0"; do  # the exported recipe, then prototypes alone on the same tasks (--steps 0)
            fa evaluate "$out/photos.fadapt" --data "$zip" --ways "$1" --shots "$2" --query 15 --tasks "$tasks" \
                --colour off --json $steps | tee -a "$out/evaluation.jsonl"  # as the card's model column
            stage "evaluate ${1}w${2}s ${steps:-recipe}"
        done
    done
fi
echo "gpu_train_photos: done; results in $out" >&2
