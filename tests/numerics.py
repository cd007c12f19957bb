"""Tolerances derived from the computation, shared by the tests that compare float32 results across paths.

The rule (tests/test_batched.py's): a float32 result is compared with the same computation in float64, and may be
off from it by at most ``factor`` times what a reference float32 computation of the same values is off (its own
rounding: the noise this computation's conditioning gives on this CPU) plus 8 float32 ulps of the values' size.
Another CPU (other SIMD widths, summation orders, FMA) rounds differently but with the same conditioning, so the
bound moves with it instead of being a constant tuned until one machine passes.

Predicted labels are compared only where no logit error within that bound can flip them (``decided``).
"""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def _f64(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor, on any device
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, np.float64)


def float32_bound(noise: float, size: float, factor: float = 4.0) -> float:
    """Allowed |float32 result - float64| for a computation whose reference float32 result is ``noise`` off float64,
    with values of magnitude ``size``."""
    return factor * noise + 8 * EPS32 * size


def assert_float32_close(got, ref32, ref64, factor: float = 4.0, what: str = "") -> float:
    """``got`` (float32, another path: onnxruntime, the batched path) is as close to ``ref64`` as ``float32_bound``
    allows, given the reference float32 path ``ref32``. Arrays, or dicts of arrays (one computation's tensors: the
    noise and the size are the largest over all of them, as rounding anywhere is relative to the largest values
    flowing through it). Returns the bound."""
    if isinstance(ref64, dict):
        got, ref32, ref64 = ({k: _f64(d[k]) for k in ref64} for d in (got, ref32, ref64))
    else:
        got, ref32, ref64 = ({"": _f64(a)} for a in (got, ref32, ref64))
    noise = max(float(np.abs(ref32[k] - ref64[k]).max(initial=0.0)) for k in ref64)
    size = max(float(np.abs(ref64[k]).max(initial=0.0)) for k in ref64)
    bound = float32_bound(noise, size, factor)
    for k in ref64:
        assert got[k].shape == ref64[k].shape, (what, k, got[k].shape, ref64[k].shape)
        err = float(np.abs(got[k] - ref64[k]).max(initial=0.0))
        assert err <= bound, f"{what}{k}: off float64 by {err:.3g}, bound {bound:.3g} (reference float32 path: " \
                             f"{noise:.3g}, size {size:.3g})"
    return bound


def decided(logits64, error: float, min_kept: float = 0.75) -> np.ndarray:
    """Boolean mask over queries (all axes but the last, the classes): those whose float64 top-2 logit margin exceeds
    2 * ``error``. If every logit of a compared path is within ``error`` of float64, the top logit can lose at most
    ``error`` and the runner-up gain at most ``error``, so these queries' predicted labels cannot flip; the others are
    near ties that another CPU's rounding may decide either way. At least ``min_kept`` of the queries must be
    decided, so the label comparison cannot silently become vacuous."""
    top2 = np.sort(_f64(logits64), axis=-1)[..., -2:]
    keep = top2[..., 1] - top2[..., 0] > 2 * error
    assert keep.mean() >= min_kept, f"only {int(keep.sum())} of {keep.size} queries have a float64 top-2 margin " \
                                    f"above {2 * error:.3g}: too few to compare predicted labels"
    return keep


def recorded_predictions(monkeypatch, module) -> list:
    """The predicted labels of each task, as ``module``'s ``evaluate_tasks`` gets them from its ``predict_task``
    (appended to the returned list, one array per task, by every evaluation ``module`` runs from now on)."""
    real, predictions = module.evaluate_tasks, []

    def recording(sampler, tasks, predict_task, progress=None):
        def predict(task):
            predictions.append(np.asarray(predict_task(task)))
            return predictions[-1]

        return real(sampler, tasks, predict, progress)

    monkeypatch.setattr(module, "evaluate_tasks", recording)
    return predictions
