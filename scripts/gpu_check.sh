#!/usr/bin/env bash
# One run on a machine with an NVIDIA GPU (issue 12): the CUDA equivalence tests of batched meta-training,
# then the GPU benchmark section (`python -m benchmarks --only gpu`: the shipped trainer vs higher).
# Everything it writes lands in $OUT (or ./gpu_check_out without it); it takes about 6-7 minutes.
#
#   bash scripts/gpu_check.sh OMNIGLOT_ZIPS
#
# OMNIGLOT_ZIPS: a git-ignored folder of this checkout holding images_background.zip and
# images_evaluation.zip (it travels to the GPU machine only when carried). From a session here:
#   mkdir -p data/omniglot && cp ../shared/data/omniglot/images_*.zip data/omniglot/     # /data/ is ignored
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl higher==0.2.1          # pure Python
# then, with the device tool: run(command="bash scripts/gpu_check.sh data/omniglot",
#                                  carry=["data/omniglot", ".whl"], timeout_s=600)
# The machine's python3 must have torch (2.4+, CUDA), numpy, onnxruntime, pillow, typer, rich, pytest.
# Afterwards copy the "gpu" object of $OUT/gpu_results.json into benchmarks/results.json here and
# re-render benchmarks/RESULTS.md (python -c "from benchmarks.report import render; ...").
set -u -o pipefail
zips="${1:?usage: bash scripts/gpu_check.sh OMNIGLOT_ZIPS (a folder holding images_background.zip and images_evaluation.zip)}"
out="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$out"
zips="$(cd "$zips" 2>/dev/null && pwd)" || { echo "error: $1 is not a folder" >&2; exit 2; }
cd "$(dirname "$0")/.."
for name in images_background.zip images_evaluation.zip; do
    [ -f "$zips/$name" ] || { echo "error: $zips/$name not found; pass the folder holding the Omniglot zips" >&2; exit 2; }
done
data="$(mktemp -d)"
cp "$zips"/images_background.zip "$zips"/images_evaluation.zip "$data"/
export FASTADAPT_OMNIGLOT="$data" PYTHONUNBUFFERED=1 PYTHONPATH=.
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=.:/tmp/site
fi
{ nvidia-smi; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA DEVICE')"; } > "$out/machine.txt" 2>&1
python3 -c "import higher" 2>/dev/null || echo "warning: higher is not importable (carry .whl, see above); the benchmark will fail" >&2

status=0
# 1. batched == per-task loop (and chunks, device-assembled tasks, batched evaluation) on CPU and CUDA
#    (with learned inner rates and the multi-step loss: the same files run on every device torch sees)
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_batched.py tests/test_learned_lrs.py \
    tests/test_multi_step_loss.py -k "batched or weighted_sum" 2>&1 | tee "$out/tests.log" || status=1
started="$(date -u +%Y-%m-%dT%H:%M:%S)"
# 2. the GPU section of the benchmarks (about 5 minutes: 5 rows x 3 measurements, then time to 95%)
timeout 420 python3 -m benchmarks --only gpu 2>&1 | tee "$out/benchmark.log" || status=1
# only a measurement from this run: when the benchmark failed, results.json still holds an older one
python3 - "$out" "$started" <<'EOF' || status=1
import json, sys
out, started = sys.argv[1:]
gpu = json.load(open("benchmarks/results.json")).get("gpu") or {}
if (gpu.get("measured") or {}).get("at", "") < started:
    sys.exit("gpu_check: benchmarks/results.json holds no GPU measurement from this run (see benchmark.log)")
json.dump({"gpu": gpu}, open(f"{out}/gpu_results.json", "w"), indent=1)
EOF
cp benchmarks/RESULTS.md "$out/RESULTS.md" 2>/dev/null
rm -rf "$data"
echo "gpu_check: exit $status; results in $out" >&2
exit $status
