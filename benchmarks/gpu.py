"""Meta-training on one CUDA GPU: ``fastadapt train`` as shipped against the ``higher`` library, same GPU, same run.

    python -m benchmarks --only gpu        # refuses at once where torch sees no CUDA device

Rows (issue 12): MAML 1 and 5 inner steps, FOMAML 1 and 5 steps (Omniglot 5-way 1-shot, 15 queries,
meta-batch 32, inner lr 0.4, zero head), and the shipped default's recipe (FOMAML, prototype head,
20-way 1-shot, 5 queries, meta-batch 16, 3 steps at lr 0.1).

fastadapt: ``meta_train.trainer.train`` itself on ``device="cuda"`` with its automatic choice (batched
tasks on CUDA), tasks/s read back from metrics.jsonl over iterations 2..N (sampling + meta-gradient +
Adam step; validation excluded), and the same trainer forced to the per-task loop (``batched=False``,
what it ran on CUDA before). higher: the ``innerloop_ctx`` loop of its maml-omniglot example on the
same GPU, same Conv4 plus a linear head, same sampled tasks (moved to the GPU task by task, as that
example does), synchronised each iteration. GFLOP/s: torch's FLOP counter on one task's meta-gradient
times tasks/s, as a share of the GPU's measured peak for the precision the convolutions use (float32:
the trainer turns off the TF32 that torch allows cuDNN by default; TF32 with ``--tf32``). Time to 95%: the default's recipe
end to end (3 pre-training epochs, then FOMAML), ``--stop-at 95`` within a budget of minutes.

Omniglot is decoded once and shared by all runs (loading is not part of any figure).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import time

from .common import data_source, higher_meta_step

# torch is imported inside the functions: report.py renders this section (as "not measured") without it
DEVICE = "cuda"  # what is measured; a dry run of the code on CPU may set "cpu" (the figures then mean nothing)

FIVE_WAY = dict(ways=5, shots=1, query=15, meta_batch=32, inner_lr=0.4, head_init="zero")
# the shipped default's recipe, at its 32x32 input (session 16's H200 row was measured at 28x28, the default then)
DEFAULT_RECIPE = dict(ways=20, shots=1, query=5, meta_batch=16, inner_lr=0.1, head_init="prototype", inner_steps=3,
                      image_size=32)
ROWS = [  # (name, algorithm, settings, target)
    ("MAML, 1 step", "maml", dict(FIVE_WAY, inner_steps=1), "≥ 15x higher"),
    ("MAML, 5 steps", "maml", dict(FIVE_WAY, inner_steps=5), "≥ 15x higher"),
    ("FOMAML, 1 step", "fomaml", dict(FIVE_WAY, inner_steps=1), "≥ 10x higher"),
    ("FOMAML, 5 steps", "fomaml", dict(FIVE_WAY, inner_steps=5), "—"),
    ("default recipe: FOMAML 20-way 1-shot, prototype head, 3 steps, 32x32", "fomaml", DEFAULT_RECIPE, "≥ 600 tasks/s"),
]


def require_cuda() -> None:
    """Refuse at once, in one line, where there is no GPU to measure."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("python -m benchmarks --only gpu: no CUDA device visible to torch here; run it on a "
                         "machine with an NVIDIA GPU (scripts/gpu_check.sh does, with the CUDA tests)")
    try:
        import higher  # noqa: F401  (the peer every row is measured against)
    except ImportError:
        raise SystemExit("python -m benchmarks --only gpu: the 'higher' library is not importable; install it "
                         "(pip install higher==0.2.1: pure Python; scripts/gpu_check.sh shows how to carry it)") from None


def config(algorithm: str, settings: dict, iterations: int, data: str, **extra):
    from fastadapt.meta_train.run import TrainConfig

    fields = dict(data=data, algorithm=algorithm, iterations=iterations, val_every=10 ** 6, val_tasks=5,
                  checkpoint_every=10 ** 6, device=DEVICE)
    return TrainConfig(**{**fields, **settings, **extra})


@contextlib.contextmanager
def shared_data():
    """Decode the dataset once for all runs of the section (the trainer loads it per run otherwise)."""
    from fastadapt.meta_train import run_setup as parts

    original = parts.load_splits
    parts.load_splits = functools.lru_cache(maxsize=4)(original)
    try:
        yield
    finally:
        parts.load_splits = original


def fastadapt_rate(c) -> float:
    """Tasks/s of the trainer over iterations 2..N (iteration 1 is warm-up)."""
    from fastadapt.meta_train.run import read_metrics
    from fastadapt.meta_train.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        rundir = os.path.join(tmp, "run")
        train(c, rundir, quiet=True)
        rows = [r for r in read_metrics(rundir) if "tasks_per_s" in r]
    seconds = [r["iteration"] * c.meta_batch / r["tasks_per_s"] for r in rows]  # cumulative loop time
    return (len(rows) - 1) * c.meta_batch / (seconds[-1] - seconds[0])


def higher_rate(c, samplers) -> float:
    """Tasks/s of higher's maml-omniglot loop on the GPU, same model and tasks (iterations 2..N)."""
    import higher  # noqa: F401  (fail here, before any timing, when it is missing)
    import torch
    from torch import nn

    from fastadapt.meta_train.run_setup import model_spec_of, to_tensors
    from fastadapt.models import build_model

    device = torch.device(DEVICE)
    torch.manual_seed(0)
    body = build_model(model_spec_of(c))
    net = nn.Sequential(body, nn.Linear(body.feature_dim, c.ways)).to(device)
    meta_opt = torch.optim.Adam(net.parameters(), lr=c.meta_lr)
    inner_opt = torch.optim.SGD(net.parameters(), lr=c.inner_lr)
    second_order = c.algorithm == "maml"
    times = []
    for it in range(c.iterations):
        start = time.perf_counter()
        tasks = [to_tensors(samplers.train.task(it * c.meta_batch + j), samplers.preprocess, device, c.ways)
                 for j in range(c.meta_batch)]
        higher_meta_step(net, inner_opt, meta_opt, tasks, c.inner_steps, second_order)
        _sync()
        times.append(time.perf_counter() - start)
    return (len(times) - 1) * c.meta_batch / sum(times[1:])


def flops_per_task(c, samplers) -> float:
    """Floating-point operations of one task's meta-gradient (conv/matmul, forward, backward, double backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from fastadapt.meta_train.algorithms import meta_gradient
    from fastadapt.meta_train.run_setup import init_meta_params, model_spec_of, recipe_of, to_tensors
    from fastadapt.models import build_model

    model = build_model(model_spec_of(c)).to(DEVICE)
    params = init_meta_params(model, c, DEVICE)
    task = to_tensors(samplers.train.task(0), samplers.preprocess, DEVICE, c.ways)
    with FlopCounterMode(display=False) as counter:
        meta_gradient(c.algorithm, model, params, [task], recipe_of(c))
    return counter.get_total_flops()


def matmul_peak_tflops(tf32: bool, n: int = 8192, repeats: int = 20) -> float:
    """The GPU's practical matrix-product peak in float32 (tf32 False) or TF32 (tf32 True)."""
    import torch

    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
        for _ in range(3):
            a @ b
        _sync()
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync()
        return repeats * 2 * n ** 3 / (time.perf_counter() - start) / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _sync() -> None:
    import torch

    if torch.device(DEVICE).type == "cuda":
        torch.cuda.synchronize()


def time_to_95(data: str, minutes: float) -> dict:
    """The default's recipe end to end on the GPU: 3 pre-training epochs, then FOMAML to 95% validation."""
    from fastadapt.meta_train.trainer import train

    c = config("fomaml", DEFAULT_RECIPE, 10 ** 6, data, pretrain_epochs=3, val_every=100, val_tasks=100,
               stop_at=95.0, max_minutes=minutes, checkpoint_every=500)
    with tempfile.TemporaryDirectory() as tmp:
        s = train(c, os.path.join(tmp, "run"), quiet=True)
    reached = bool(s["stopped"]) and "--stop-at" in s["stopped"]
    return {"reached": reached, "seconds": s["seconds"], "pretrain_seconds": s["pretrain_seconds"],
            "iterations": s["iterations"], "best_val_accuracy": s["best"], "budget_minutes": minutes}


def run(iterations: int = 8, minutes: float = 3.0, peak_size: int = 8192) -> dict:
    if DEVICE == "cuda":
        require_cuda()
    import torch

    from fastadapt.meta_train.run_setup import make_samplers, resolve_device

    resolve_device(DEVICE)  # the trainer's numerics (on CUDA: no TF32), so the peak below is the right one
    data = data_source()
    if data == "synthetic":
        raise SystemExit("python -m benchmarks --only gpu: needs real Omniglot (FASTADAPT_OMNIGLOT=folder of "
                         "images_background.zip and images_evaluation.zip)")
    result = {"gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE, "cuda": torch.version.cuda,
              "conv_tf32": torch.backends.cudnn.allow_tf32, "iterations": iterations, "rows": []}
    result["fp32_peak_tflops"] = matmul_peak_tflops(tf32=False, n=peak_size)
    result["tf32_peak_tflops"] = matmul_peak_tflops(tf32=True, n=peak_size)
    peak = result["tf32_peak_tflops"] if result["conv_tf32"] else result["fp32_peak_tflops"]
    with shared_data():
        for name, algorithm, settings, target in ROWS:
            batched = config(algorithm, settings, 4 * iterations, data)  # fast: more iterations, same seconds
            samplers = make_samplers(batched)
            row = {"name": name, "algorithm": algorithm, **settings, "target": target,
                   "fastadapt_tasks_per_s": fastadapt_rate(batched),
                   "loop_tasks_per_s": fastadapt_rate(config(algorithm, settings, iterations, data, batched=False)),
                   "higher_tasks_per_s": higher_rate(config(algorithm, settings, iterations, data), samplers),
                   "gflop_per_task": flops_per_task(batched, samplers) / 1e9}
            row["ratio"] = row["fastadapt_tasks_per_s"] / row["higher_tasks_per_s"]
            row["peak_share"] = row["fastadapt_tasks_per_s"] * row["gflop_per_task"] / (1e3 * peak)
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
        result["time_to_95"] = time_to_95(data, minutes)
        print(json.dumps(result["time_to_95"]), flush=True)
    return result


NOT_MEASURED = ("Not measured: no GPU was lent to the session that wrote this section. `scripts/gpu_check.sh` "
                "runs `python -m benchmarks --only gpu` (with the CUDA equivalence tests) on one.")


def render(r: dict | None) -> str:
    """The GPU section of RESULTS.md; without a measurement every figure reads "not measured"."""
    from .common import table

    header = ["row", "fastadapt train tasks/s (batched, automatic)", "same trainer, --no-batched", "higher tasks/s",
              "ratio to higher", "target", "share of peak"]
    if not r or "rows" not in r:
        rows = [[name, "not measured", "not measured", "not measured", "not measured", target, "not measured"]
                for name, _, _, target in ROWS]
        return "\n".join([NOT_MEASURED, "", table(header, rows), "", "Time to 95% validation accuracy (the "
                          "default's recipe, 3 pre-training epochs then FOMAML): not measured."])
    precision = "TF32" if r["conv_tf32"] else "float32"
    peak = r["tf32_peak_tflops"] if r["conv_tf32"] else r["fp32_peak_tflops"]
    rows = [[x["name"], f"{x['fastadapt_tasks_per_s']:.0f}", f"{x['loop_tasks_per_s']:.0f}",
             f"{x['higher_tasks_per_s']:.0f}", f"**{x['ratio']:.1f}x**", x["target"], f"{100 * x['peak_share']:.1f}%"]
            for x in r["rows"]]
    t = r["time_to_95"]
    reached = (f"{t['seconds'] / 60:.1f} min ({t['pretrain_seconds']:.0f} s pre-training, {t['iterations']} "
               f"iterations)" if t["reached"] else
               f"not reached in {t['budget_minutes']:g} min (best {t['best_val_accuracy']}% after {t['iterations']} "
               f"iterations)")
    return "\n".join([
        f"{r['gpu']} (CUDA {r['cuda']}); Omniglot lake protocol, the same sampled tasks for every column; tasks/s "
        f"over iterations 2..N (the first is warm-up). Convolutions in {precision} (the trainer's setting for every "
        f"column); share of "
        f"peak: achieved FLOP/s (torch's FLOP counter) over the measured {precision} matrix-product peak "
        f"({peak:.0f} TFLOP/s; float32 {r['fp32_peak_tflops']:.0f}).", "",
        table(header, rows), "",
        f"Time to 95% validation accuracy, the default's recipe (3 pre-training epochs, then FOMAML): {reached}."])
