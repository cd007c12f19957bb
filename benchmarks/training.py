"""Meta-training throughput (tasks/s): ``fastadapt train``'s real loop vs the ``higher`` library.

Same Conv4, same Omniglot tasks (drawn by the same sampler, so both pay the same data-sampling
cost), 5-way 1-shot, 15 queries per class, meta-batch 32, Adam meta-optimiser, inner lr 0.4.

fastadapt: ``meta_train.trainer.train`` itself, its tasks/s read back from metrics.jsonl (sampling
+ meta-gradient + optimiser step; validation excluded; the first iteration is warm-up and dropped).
higher: the ``innerloop_ctx`` loop of higher's own maml-omniglot example (second order:
``copy_initial_weights=False``, ``qry_loss.backward()`` per task). Its first-order variant is the
cheapest one higher offers: ``track_higher_grads=False`` and the query gradient w.r.t. the fast
weights added to the meta-parameters' ``.grad`` (no graph through the inner steps at all).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import torch
from torch import nn

from fastadapt.meta_train.run_setup import make_samplers, model_spec_of, to_tensors
from fastadapt.meta_train.run import TrainConfig, read_metrics
from fastadapt.meta_train.trainer import train
from fastadapt.models import build_model

from .common import data_source, higher_meta_step, sgemm_peak_gflops

WAYS, SHOTS, QUERY, META_BATCH, INNER_LR = 5, 1, 15, 32, 0.4


def config(algorithm: str, steps: int, iterations: int, data: str) -> TrainConfig:
    return TrainConfig(data=data, algorithm=algorithm, ways=WAYS, shots=SHOTS, query=QUERY, inner_steps=steps,
                       inner_lr=INNER_LR, meta_batch=META_BATCH, iterations=iterations, val_every=10 ** 6,
                       val_tasks=5, checkpoint_every=10 ** 6, device="cpu")


def fastadapt_rate(algorithm: str, steps: int, iterations: int, data: str) -> float:
    """Tasks/s of the trainer's loop over iterations 2..N (iteration 1 is warm-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        rundir = os.path.join(tmp, "run")
        train(config(algorithm, steps, iterations, data), rundir, quiet=True)
        rows = [r for r in read_metrics(rundir) if "tasks_per_s" in r]
    seconds = [r["iteration"] * META_BATCH / r["tasks_per_s"] for r in rows]  # cumulative loop time
    return (len(rows) - 1) * META_BATCH / (seconds[-1] - seconds[0])


def higher_rate(algorithm: str, steps: int, iterations: int, data: str, samplers=None) -> float:
    """Tasks/s of higher's maml-omniglot loop on the same model and tasks (iterations 2..N)."""
    import higher  # noqa: F401  (fail here, before any timing, when it is missing)

    c = config(algorithm, steps, iterations, data)
    samplers = samplers or make_samplers(c)
    torch.manual_seed(0)
    body = build_model(model_spec_of(c))
    net = nn.Sequential(body, nn.Linear(body.feature_dim, WAYS))
    meta_opt = torch.optim.Adam(net.parameters(), lr=c.meta_lr)
    inner_opt = torch.optim.SGD(net.parameters(), lr=INNER_LR)
    second_order = algorithm == "maml"
    times = []
    for it in range(iterations):
        start = time.perf_counter()
        tasks = [to_tensors(samplers.train.task(it * META_BATCH + j), samplers.preprocess, "cpu", WAYS)
                 for j in range(META_BATCH)]
        higher_meta_step(net, inner_opt, meta_opt, tasks, steps, second_order)
        times.append(time.perf_counter() - start)
    return (len(times) - 1) * META_BATCH / sum(times[1:])


def flops_per_task(algorithm: str, steps: int, data: str, samplers) -> float:
    """Floating-point operations of one task's meta-gradient (torch's FLOP counter: conv/matmul,
    forward, backward and double backward), the same for both implementations."""
    from torch.utils.flop_counter import FlopCounterMode

    from fastadapt.meta_train.algorithms import meta_gradient
    from fastadapt.meta_train.run_setup import init_meta_params, recipe_of

    c = config(algorithm, steps, 1, data)
    model = build_model(model_spec_of(c))
    params = init_meta_params(model, c, "cpu")
    task = to_tensors(samplers.train.task(0), samplers.preprocess, "cpu", WAYS)
    with FlopCounterMode(display=False) as counter:
        meta_gradient(algorithm, model, params, [task], recipe_of(c))
    return counter.get_total_flops()


def run(iterations: int = 6, algorithms=("maml", "fomaml"), steps_list=(1, 5), rounds: int = 2) -> dict:
    """Each figure is the best of ``rounds`` alternating measurements (ours, theirs, ours, theirs...),
    so a burst of load from elsewhere on a shared machine does not decide a ratio."""
    data = data_source()
    samplers = make_samplers(config("maml", 1, 1, data))
    peak = sgemm_peak_gflops()
    rows = []
    for algorithm in algorithms:
        for steps in steps_list:
            ours, theirs = 0.0, 0.0
            for _ in range(rounds):
                ours = max(ours, fastadapt_rate(algorithm, steps, iterations, data))
                theirs = max(theirs, higher_rate(algorithm, steps, iterations, data, samplers))
            flops = flops_per_task(algorithm, steps, data, samplers)
            rows.append({"algorithm": algorithm, "inner_steps": steps, "fastadapt_tasks_per_s": ours,
                         "higher_tasks_per_s": theirs, "ratio": ours / theirs, "gflop_per_task": flops / 1e9,
                         "fastadapt_gflops": ours * flops / 1e9, "higher_gflops": theirs * flops / 1e9})
            print(json.dumps(rows[-1]), flush=True)
    return {"data": "omniglot" if data != "synthetic" else "synthetic", "threads": torch.get_num_threads(),
            "sgemm_peak_gflops": peak, "iterations": iterations, "rounds": rounds, "rows": rows}


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
