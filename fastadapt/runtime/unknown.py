""""Unknown": is an image one of the adapted classes at all?

With a prototype head (``head_init: prototype``, the shipped model's) row c of the head is 2 mu_c and its
bias -|mu_c|^2, so max_c logit_c - |f|^2 = -min_c |f - mu_c|^2: minus the squared feature distance to
the nearest class prototype (exactly before any SGD step; the steps move the head a little). The score
divides it by the median squared distance between the prototypes (mu_c = head row / 2), so it reads the
same for every task and model:

    score = -(squared distance to the nearest prototype) / (median squared distance between prototypes)

With a head scale s (``inner_loop.head_scale``) the head is s times that: rows 2 s mu_c, logits divided
by s give the same distances.

0 is on a prototype; the calibrated threshold THRESHOLD = -0.5 rejects images farther than ~0.7 typical
class spacings from every class. A meta bundle may carry its own (manifest["unknown_calibration"]["threshold"],
``scripts/calibrate_unknown.py``): the photos model's features spread its queries farther from the prototypes,
and at -0.5 it accepted 0.04% of the in-set queries of its test classes. How well the score separates known
from unknown images on Omniglot's evaluation alphabets: README "Unknown images" (``python -m benchmarks --only
unknown``, or ``evaluate_unknown``).

Other heads (zero, learned) have no prototypes: their score is the largest class probability, and there
is no calibrated threshold (pass one).
"""

from __future__ import annotations

import numpy as np

from .head import head_scale_of

NEAREST_PROTOTYPE = "nearest_prototype"
MAX_PROBABILITY = "max_probability"
THRESHOLD = -0.5
MAX_PAIRS_CLASSES = 256  # the prototype spacing is the median over the first 256 classes' pairs


def prototype_scale(params: dict, head_scale: float = 1.0) -> float:
    """Median squared distance between the head's implied prototypes (rows / (2 head_scale)), with the
    colour head's columns where there is one (the joint prototypes [P_c, a Q_c] of runtime/colour.py)."""
    rows = np.concatenate([params[name] for name in ("head.weight", "colour.weight") if name in params], 1)
    protos = rows[:MAX_PAIRS_CLASSES].astype(np.float64) / (2 * head_scale)
    sq = (protos * protos).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2 * protos @ protos.T
    scale = float(np.median(d2[~np.eye(len(protos), dtype=bool)]))
    return scale if np.isfinite(scale) and scale > 0 else 1.0  # identical prototypes: raw distances


def describe(manifest: dict, params: dict) -> dict:
    """manifest["unknown"] of an adapted model: the score it uses and the calibrated threshold."""
    if (manifest.get("inner_loop") or {}).get("head_init") == "prototype":
        threshold = (manifest.get("unknown_calibration") or {}).get("threshold", THRESHOLD)
        return {"score": NEAREST_PROTOTYPE, "threshold": threshold,
                "scale": round(prototype_scale(params, head_scale_of(manifest)), 6)}
    return {"score": MAX_PROBABILITY, "threshold": None}


def scores(kind: str, scale: float, logits: np.ndarray, features: np.ndarray, probabilities: np.ndarray,
           head_scale: float = 1.0) -> np.ndarray:
    """In-set score of each image (higher = more likely one of the classes)."""
    if kind == NEAREST_PROTOTYPE:
        f = features.astype(np.float64)
        return (logits.astype(np.float64).max(1) / head_scale - (f * f).sum(1)) / scale
    return probabilities.max(1)


def auroc(in_set, unknown) -> float:
    """Probability that an in-set image scores above an unknown one (ties count half)."""
    a, b = np.sort(np.asarray(in_set, np.float64)), np.asarray(unknown, np.float64)
    below = np.searchsorted(a, b, side="left")
    above = np.searchsorted(a, b, side="right")
    return float((len(a) * len(b) - above.sum() + 0.5 * (above - below).sum()) / (len(a) * len(b)))
