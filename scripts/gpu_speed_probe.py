"""What else pays on a GPU (issue 12, item 3)? The trainer's batched meta-step, timed as it is and with one
change each: TF32, bf16 autocast, torch.compile, torch.compile with CUDA graphs ("reduce-overhead"), and
"cudagraph": the whole training iteration (batched meta-gradient + Adam) captured once as one CUDA graph by
hand and replayed for every meta-batch, each new batch copied into the captured input buffers.

    python scripts/gpu_speed_probe.py --data OMNIGLOT [--device cuda] [--seconds 40] [--variants fp32,tf32,...]

Every variant starts from the same initialisation and meets the same tasks (the default model's recipe:
first-order MAML, prototype head, 20-way 1-shot, 5 queries, meta-batch 16, 3 steps at lr 0.1, Adam 5e-4,
32x32).
"profile" is not a change but a look inside fp32: PROFILED_ITERATIONS meta-steps under torch.profiler, reporting
per iteration the wall time, the GPU's busy time (sum of its kernels' times) and the number of kernels, and
the operators that take the most GPU time: a GPU busy for a small share of the wall time is waiting for the
host (Python, autograd, kernel launches), which compilation or CUDA graphs can remove; a busy GPU needs
faster kernels (TF32, bf16, or cuDNN's own kernel search: "cudnn-benchmark") instead.
Measured on an H200 (session 16, torch 2.11): fp32 250 tasks/s; the GPU is busy 70.7 ms per iteration
(2,222 kernels), as long as the iteration itself: GPU-bound, not waiting for the host. 44% of that time is
cuDNN's grouped direct convolution (the tasks' convolutions as groups, conv2d_grouped_direct_kernel, 2 ms a
call) and 40% convolution backward, so the next lever is the convolution's kernel, not sampling or launches:
"cudnn-benchmark" (cuDNN's own kernel search) and "conv-bmm" (task_batched.CONV_AS_MATRIX_PRODUCT: im2col and
one batched matrix product over tasks) are the two candidates, neither measured yet.
Reported per variant: tasks/s after 3 warm-up iterations, and the mean training query loss of its first
ITERATIONS_COMPARED iterations beside fp32's (a change of numerics shows there first). Rounding alone
moves that mean by a few per cent, so only a larger change means anything: measured on CPU (2 threads)
it was 2.96 for vmap's fp32 (before session 12), 2.90 for the task-batched fp32 and 3.10 for compile, whose
first six iteration losses nevertheless agreed with eager's to 1e-3 (4.8033 / 4.0165 / 3.2878 / 3.1594 /
2.6807 / 2.4788 against 4.8033 / 4.0164 / 3.2881 / 3.1583 / 2.6771 / 2.4790). On that CPU compile ran the
batched step 2.7x as fast as eager (3.8 against 1.4 tasks/s), still slower than the per-task loop there. One JSON line per
variant on stdout, so a device call can bring the lines back. A variant that fails says why and the next
one runs. Nothing here changes the trainer: a variant goes into it only once a GPU measured it faster
with an unchanged validation curve.

On the GPU machine (the Omniglot zips copied into a git-ignored folder of the checkout, see gpu_check.sh;
"profile" runs first, as it takes seconds and says which of the others can pay):
    run(command="PYTHONPATH=. python3 scripts/gpu_speed_probe.py --data data/omniglot --seconds 20 "
                "| tee $OUT/probe.jsonl", carry=["data/omniglot"], timeout_s=540)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

import fastadapt.meta_train.task_batched as task_batched_module
from fastadapt.meta_train.algorithms import TaskTensors, batched_meta_gradient, meta_gradient, outer_optimizer
from fastadapt.meta_train.run import TrainConfig
from fastadapt.meta_train.run_setup import init_meta_params, make_samplers, model_spec_of, recipe_of, task_stream
from fastadapt.models.networks import build_model

# the quick look first, the compilations (minutes, and the likeliest to eat the call's time limit) last
VARIANTS = ("profile", "fp32", "cudnn-benchmark", "conv-bmm", "tf32", "bf16", "cudagraph", "compile", "compile-cudagraphs")
PROFILED_ITERATIONS = 5
ITERATIONS_COMPARED = 30


def recipe_config(data: str, device: str) -> TrainConfig:
    # the shipped default's recipe at its 32x32 input (session 16's measurement below was at 28x28)
    return TrainConfig(data=data, algorithm="fomaml", head_init="prototype", ways=20, shots=1, query=5,
                       meta_batch=16, inner_steps=3, inner_lr=0.1, meta_lr=5e-4, device=device, image_size=32)


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def run_variant(variant: str, c: TrainConfig, device: torch.device, seconds: float) -> dict:
    samplers = make_samplers(c)
    model = build_model(model_spec_of(c)).to(device)
    torch.manual_seed(c.seed)
    params = init_meta_params(model, c, device)
    optimizer = outer_optimizer(c.algorithm, list(params.values()), c.meta_lr)
    sample = task_stream(c, samplers, device)
    recipe = recipe_of(c)
    set_tf32(variant == "tf32")
    torch.backends.cudnn.benchmark = variant == "cudnn-benchmark"  # let cuDNN time its kernels per shape
    task_batched_module.CONV_AS_MATRIX_PRODUCT = variant == "conv-bmm"  # im2col + batched matrix products
    step = lambda tasks: meta_gradient(c.algorithm, model, params, tasks, recipe, vectorize=True)  # noqa: E731
    if variant.startswith("compile"):
        from fastadapt.meta_train.task_batched import task_batched

        task_batched(model, c.meta_batch)  # built (and cached) eagerly: tracing its deepcopy broke the graph 38 times
        step = torch.compile(step, mode="reduce-overhead" if variant == "compile-cudagraphs" else None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if variant == "bf16" else contextlib.nullcontext()

    def one(it):
        with autocast:
            grads, loss, _ = step(sample([it * c.meta_batch + j for j in range(c.meta_batch)]))
        optimizer.zero_grad(set_to_none=True)
        for k, v in params.items():
            v.grad = grads[k].to(v.dtype)
        optimizer.step()
        return loss

    return {"variant": variant, **timed(one, c, device, seconds)}


def timed(one, c: TrainConfig, device: torch.device, seconds: float, start: int = 0, losses: list | None = None) -> dict:
    """Runs ``one(it)`` (an iteration -> its loss) from iteration ``start``: tasks/s over ``seconds`` after 3 more
    warm-up iterations (compilation, cuDNN autotuning), and the mean loss of the first ITERATIONS_COMPARED."""
    losses, it, timed_tasks, started = losses or [], start, 0, None
    while True:
        loss = one(it)
        if it < ITERATIONS_COMPARED:
            losses.append(float(loss))
        it += 1
        if it == start + 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        elif started is not None:
            timed_tasks += c.meta_batch
            if time.perf_counter() - started >= seconds and it > ITERATIONS_COMPARED:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {"tasks_per_s": round(timed_tasks / elapsed, 1), "iterations": it,
            "mean_query_loss_first": round(sum(losses) / len(losses), 5)}


def run_cudagraph(c: TrainConfig, device: torch.device, seconds: float) -> dict:
    """One training iteration captured as a CUDA graph (torch.cuda.graph, whole-network capture as in torch's
    docs): ``batched_meta_gradient`` waits for nothing on the host, and Adam runs with ``capturable=True``."""
    if device.type != "cuda":
        raise RuntimeError("CUDA graphs need --device cuda")
    samplers = make_samplers(c)
    model = build_model(model_spec_of(c)).to(device)
    torch.manual_seed(c.seed)
    params = init_meta_params(model, c, device)
    optimizer = torch.optim.Adam(list(params.values()), lr=c.meta_lr, capturable=True)
    sample, recipe = task_stream(c, samplers, device), recipe_of(c)
    fields = ("support_x", "support_y", "query_x", "query_y")
    first = sample(list(range(c.meta_batch)))
    static = {f: torch.stack([getattr(t, f) for t in first]) for f in fields}  # the graph's input buffers
    tasks = [TaskTensors(*(static[f][j] for f in fields), first[0].ways) for j in range(c.meta_batch)]

    def iteration():
        grads, loss, _ = batched_meta_gradient(c.algorithm, model, params, tasks, recipe)
        for k, v in params.items():
            v.grad = grads[k]
        optimizer.step()
        return loss / c.meta_batch

    def load(it):
        batch = sample([it * c.meta_batch + j for j in range(c.meta_batch)])
        for f in fields:
            static[f].copy_(torch.stack([getattr(t, f) for t in batch]))

    side = torch.cuda.Stream()  # warm-up on a side stream, as capture requires
    side.wait_stream(torch.cuda.current_stream())
    losses = []
    with torch.cuda.stream(side):
        for it in range(3):
            load(it)
            losses.append(float(iteration()))
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = iteration()

    def one(it):
        load(it)
        graph.replay()
        return static_loss

    return {"variant": "cudagraph", **timed(one, c, device, seconds, start=3, losses=losses)}


def profile_variant(c: TrainConfig, device: torch.device) -> dict:
    """fp32 meta-steps under torch.profiler: where the wall time goes (see the module docstring)."""
    from torch.profiler import ProfilerActivity, profile

    samplers = make_samplers(c)
    model = build_model(model_spec_of(c)).to(device)
    params = init_meta_params(model, c, device)
    sample, recipe = task_stream(c, samplers, device), recipe_of(c)
    batches = [sample([it * c.meta_batch + j for j in range(c.meta_batch)]) for it in range(PROFILED_ITERATIONS + 2)]
    for tasks in batches[:2]:  # warm-up: cuDNN autotuning, allocator
        meta_gradient(c.algorithm, model, params, tasks, recipe, vectorize=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        for tasks in batches[2:]:
            meta_gradient(c.algorithm, model, params, tasks, recipe, vectorize=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
    wall = (time.perf_counter() - started) / PROFILED_ITERATIONS
    events = prof.key_averages()
    device_time = lambda e: getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0))  # noqa: E731
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"] if device.type == "cuda" else []
    busy_us = sum(e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total for e in kernels)
    top = sorted(events, key=device_time if device.type == "cuda" else (lambda e: e.self_cpu_time_total),
                 reverse=True)[:12]
    return {"variant": "profile", "wall_ms_per_iteration": round(1000 * wall, 2),
            "gpu_busy_ms_per_iteration": round(busy_us / 1000 / PROFILED_ITERATIONS, 2),
            "kernels_per_iteration": len(kernels) // PROFILED_ITERATIONS,
            "top_ops": [{"op": e.key, "device_ms": round(device_time(e) / 1000 / PROFILED_ITERATIONS, 3),
                         "cpu_ms": round(e.self_cpu_time_total / 1000 / PROFILED_ITERATIONS, 3),
                         "calls": e.count // PROFILED_ITERATIONS} for e in top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="Omniglot: a folder with images_background.zip")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=40.0, help="timed seconds per variant")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    device = torch.device(args.device)
    c = recipe_config(args.data, args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"device": name, "torch": torch.__version__}), flush=True)
    set_tf32(False)  # true float32, as the trainer runs, for every variant but tf32 (torch lets cuDNN use TF32)
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"error: --variants: unknown variant '{variant}', choose from {', '.join(VARIANTS)}")
        try:
            result = (profile_variant(c, device) if variant == "profile" else
                      run_cudagraph(c, device, args.seconds) if variant == "cudagraph" else
                      run_variant(variant, c, device, args.seconds))
            print(json.dumps(result), flush=True)
        except Exception as exc:  # report and go on: one failing variant must not cost the others
            print(json.dumps({"variant": variant, "failed": f"{type(exc).__name__}: {str(exc)[:300]}"}), flush=True)
        finally:
            set_tf32(False)
            torch.backends.cudnn.benchmark = False
            task_batched_module.CONV_AS_MATRIX_PRODUCT = False


if __name__ == "__main__":
    main()
