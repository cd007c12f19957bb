"""What one meta-step of the default model's recipe costs on this machine, batched and per task:

    python scripts/batched_step_cost.py --data OMNIGLOT [--width 64] [--rounds 5] [--device cpu]
    python scripts/batched_step_cost.py --tiny [--rounds 30]

The recipe is the GPU probe's (FOMAML, prototype head, 20-way 1-shot, 5 queries, 3 steps at lr 0.1,
meta-batch 16). Reported per path (``meta_gradient(vectorize=True)`` and the per-task loop): the aten
operators one meta-step dispatches (all, and those that are not views, which each launch a kernel on a
GPU) and the best wall time of ``--rounds`` meta-steps on one thread. On a GPU these small networks
wait on the host issuing operators, so the operator count is the CPU-side proxy for the GPU's speed;
``--tiny`` keeps the recipe's structure (4 conv layers, 3 steps, 16 tasks, prototype head) on tiny random
tasks (16x16 images, width 2, 2-way 1-shot, 1 query), so the arithmetic is negligible and the CPU time
is that host overhead (best and median of ``--rounds``).
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastadapt.meta_train.algorithms import TaskTensors, meta_gradient
from fastadapt.meta_train.denormals import flushing_denormals
from fastadapt.meta_train.run import TrainConfig
from fastadapt.meta_train.run_setup import init_meta_params, make_samplers, model_spec_of, recipe_of, task_stream
from fastadapt.models.networks import build_model

VIEWS = ("view", "detach", "transpose", "unsqueeze", "expand", "permute", "squeeze", "slice", "select", "alias",
         "aten.t.default", "as_strided")


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="Omniglot: a folder with images_background.zip (not with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny random tasks: the host overhead alone")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if bool(args.data) == args.tiny:
        parser.error("give --data OMNIGLOT or --tiny")
    torch.set_num_threads(1)
    device = torch.device(args.device)
    shape = dict(ways=2, query=1, width=2, image_size=16) if args.tiny else dict(ways=20, query=5, width=args.width)
    c = TrainConfig(data="synthetic" if args.tiny else args.data, algorithm="fomaml", head_init="prototype", shots=1,
                    meta_batch=16, inner_steps=3, inner_lr=0.1, meta_lr=5e-4, device=args.device, **shape)
    model = build_model(model_spec_of(c)).to(device)
    torch.manual_seed(c.seed)
    params = init_meta_params(model, c, device)
    recipe = recipe_of(c)
    if args.tiny:
        g = torch.Generator().manual_seed(0)
        tasks = [TaskTensors(torch.rand(2, 1, 16, 16, generator=g).to(device), torch.arange(2, device=device),
                             torch.rand(2, 1, 16, 16, generator=g).to(device), torch.arange(2, device=device), 2)
                 for _ in range(c.meta_batch)]
    else:
        tasks = task_stream(c, make_samplers(c), device)(list(range(c.meta_batch)))
    for vectorize in (True, False):
        step = lambda: meta_gradient(c.algorithm, model, params, tasks, recipe, vectorize=vectorize)  # noqa: E731
        with flushing_denormals():
            step()  # warm-up
            with CountOps() as ops:
                step()
            times = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
        computing = sum(n for op, n in ops.counts.items() if not any(v in op for v in VIEWS))
        print(json.dumps({"path": "batched" if vectorize else "loop", "tiny": args.tiny, "width": c.width,
                          "aten_ops": sum(ops.counts.values()), "non_view_ops": computing,
                          "best_ms": round(1000 * min(times), 1),
                          "median_ms": round(1000 * sorted(times)[len(times) // 2], 1)}), flush=True)


if __name__ == "__main__":
    main()
