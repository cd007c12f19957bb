"""Subnormal floats flushed to zero while torch trains and evaluates.

An unscaled prototype head saturates the softmax, and the inner loop's gradients then fill with subnormal
floats (|x| < 1.2e-38), which x86 CPUs compute 10-100x slower. Flushing them to zero changes nothing a
model can see (the same training losses to 6 digits) and made the characters model's recipe (FOMAML,
20-way 1-shot, 2-core Xeon) meta-train 4.8x faster: 1.6 -> 7.8 tasks/s (benchmarks/README.md). The
runtime flushes its SGD steps too (``runtime/sessions.py``), so torch and the device compute alike.

The mode is per thread: this sets it on the calling thread, and threads started while it is on inherit
it (the meta-batch's worker threads; torch's intra-op pool if it starts inside). On exit the calling
thread gets its previous mode back, so a host program's own numpy and Python arithmetic is unchanged
afterwards; torch's intra-op threads started inside keep flushing (they only run torch operators).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def flushing() -> bool:
    """Whether this thread flushes subnormal floats to zero now."""
    tiny = torch.full((1,), 1e-20)
    return bool((tiny * tiny).item() == 0.0)  # 1e-40 is subnormal in float32


@contextmanager
def flushing_denormals():
    was = flushing()
    if not torch.set_flush_denormal(True):  # a CPU without the mode: the same results, just slower
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(was)
