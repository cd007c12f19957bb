"""Shared helpers of the benchmark suite: where the data is, timing, and markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def omniglot_root() -> str | None:
    """Real Omniglot: $FASTADAPT_OMNIGLOT, else ../shared/data/omniglot beside the checkout."""
    for candidate in (os.environ.get("FASTADAPT_OMNIGLOT"), REPO.parent / "shared" / "data" / "omniglot"):
        if candidate and (Path(candidate) / "images_evaluation.zip").exists():
            return str(candidate)
    return None


def data_source() -> str:
    """Omniglot when present (what the numbers are about), else the built-in synthetic glyphs."""
    return omniglot_root() or "synthetic"


def sgemm_peak_gflops() -> float:
    """The machine's practical float32 peak: a large matrix product on all of torch's threads. A shared
    machine's speed drifts (3x between two days here), so sections that report absolute times record it."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(2):
        a @ b
    start, n = time.perf_counter(), 10
    for _ in range(n):
        a @ b
    return n * 2 * 2048 ** 3 / (time.perf_counter() - start) / 1e9


def repeat_ms(fn, repeats: int, warmup: int = 2) -> list:
    """Wall milliseconds of ``repeats`` calls of fn() after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return times


def median(values) -> float:
    return statistics.median(values)


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


def table(header: list, rows: list) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def higher_meta_step(net, inner_opt, meta_opt, tasks: list, inner_steps: int, second_order: bool) -> None:
    """One meta-iteration of higher's maml-omniglot example (``innerloop_ctx``), the peer both the CPU and
    the GPU training benchmarks measure against: every task's inner loop, then one meta-optimiser step."""
    import higher
    import torch
    import torch.nn.functional as F

    meta_opt.zero_grad()
    for task in tasks:
        with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False,
                                  track_higher_grads=second_order) as (fnet, diffopt):
            for _ in range(inner_steps):
                diffopt.step(F.cross_entropy(fnet(task.support_x), task.support_y))
            loss = F.cross_entropy(fnet(task.query_x), task.query_y) / len(tasks)
            if second_order:
                loss.backward()
            else:
                grads = torch.autograd.grad(loss, list(fnet.parameters()))
                for p, g in zip(net.parameters(), grads):
                    p.grad = g if p.grad is None else p.grad + g
    meta_opt.step()
