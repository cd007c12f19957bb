"""The colour cue of colour models: a colour histogram beside the network's features, used when the shots say so.

Why: instance norm (the photos model's body) discards each filter's mean over the picture, and with it much
of a photo's overall colour, so classes that colour alone tells apart (crops of one photo each, a red and a
blue mug) look alike to the network. Measured with the built-in photos model on the benchmark's colour
crops (6-way 5-shot, benchmarks/RESULTS.md 6b): 84.7% from the features, 99.7% for a 1-nearest-neighbour
on colour histograms of the files; 99.5% with this cue.

What: each image's colour histogram h (BINS levels per channel, BINS^3 colours, each colour's share of the
pixels square-rooted, so |h| = 1) joins the features f with a weight a: the prototype head then classifies
the joint features [f, a h], i.e. the nearest class in |f - P_c|^2 + a^2 |h - Q_c|^2 (P_c, Q_c: the class
means of f and h over the shots). It is stored as a second head beside the network's head:

    logits = head(f) + colour.weight . (a h) + colour.bias,   colour.weight_c = 2 s a Q_c,
                                                            colour.bias_c = -s a^2 |Q_c|^2   (s: head scale)

added after the SGD steps (which adapt the network as it was meta-trained, on its own logits).

When: a is chosen per task by leave-one-shot-out on the shots, relative to the task's own spacing:
a^2 = w^2 S_f / S_h (S: the median squared distance between class prototypes, in features and in colour),
w among WEIGHTS. A weight is used only if it classifies at least MARGIN more held-out shots right than no
colour (and then the one with the most); every class needs 2 shots.

Measured with the photos model (nearest prototype, no step; 5-way 5-shot on its 20 validation classes, 300
tasks; 6-way 5-shot on the benchmark's colour crops, 100 episodes), choosing among weights w (in brackets:
validation, crops; colour's share of the tasks):
  no colour                          64.73, 81.05
  w = 4 always                       44.37, 98.88   (ImageNet classes are not told apart by colour)
  w in 1, 2, 4, 8, margin 2          63.58, 98.05   (13%, 99%)
  w = 2, margin 2                    63.91, 98.42   (6%, 99%)
  w = 4, margin 2                    63.87, 98.67   (5%, 99%)
  w = 4, margin 3 (these settings)   64.31, 98.13   (2%, 95%)
The fewer weights tried, the less leave-one-out's choice overfits the shots; the margin trades the two sets.
(python scripts/colour_cue_probe.py RUN DATA: the photos model's run folder and its dataset.)
"""

from __future__ import annotations

import numpy as np

from ..images import Preprocess
from ..manifest import COLOUR, MAX_COLOUR_SCALE

BINS = 8  # levels per channel: 512 colours
WEIGHTS = (4.0,)  # w: the colour distance's weight relative to the feature distance (see the docstring)
MARGIN = 3  # held-out shots a colour weight must classify right beyond no colour
MODES = ("auto", "off")


def check_mode(colour) -> str:
    from ..errors import FastadaptError

    if colour is True:
        return "auto"
    if colour is False:
        return "off"
    if not isinstance(colour, str) or colour not in MODES:
        raise FastadaptError(f"{{colour}} must be 'auto' or 'off', got {colour!r}", "colour")
    return colour


def decision(report: dict | None) -> str:
    """What adaptation decided about colour (adaptation["colour"], ``choose_scale``'s report and the mode), as
    ``fastadapt adapt`` and ``fastadapt info`` print it; '' for grey models (no report)."""
    if not isinstance(report, dict) or not report:
        return ""
    try:
        if report["mode"] == "off":
            return "off"
        if "reason" in report:
            return f"not used ({report['reason']})"
        right, chosen = report["held_out_right"], report["chosen"]
        without = f"{right['0']} of {report['of']} held-out shots right without colour"
        if not chosen:
            return f"not used ({without}, at most {max(right.values())} with it)"
        return f"used, weight {chosen:g} ({without}, {right[f'{chosen:g}']} with it)"
    except (KeyError, TypeError, ValueError, AttributeError):  # a bundle written by other code: show it as stored
        return str(report)[:300]


def histograms(images: np.ndarray, spec: Preprocess, bins: int = BINS) -> np.ndarray:
    """Square-rooted colour shares (B, bins^3) of preprocessed float32 images (B, 3, H, W).

    The pixel levels come back exactly from the normalised values: a uint8 pixel p lands at p / 255 * bins,
    which for bins a power of two (no factor shared with 255) is never within 1/255 of a bin edge, far more
    than float32 rounding (standalone.py builds the same computation in ONNX)."""
    mean = np.asarray(spec.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, -1, 1, 1)
    levels = np.floor(np.clip(images * std + mean, 0.0, np.float32(1 - 1e-6)) * np.float32(bins)).astype(np.int64)
    codes = ((levels[:, 0] * bins + levels[:, 1]) * bins + levels[:, 2]).reshape(len(images), -1)
    rows = codes + (np.arange(len(images)) * bins ** 3)[:, None]
    counts = np.bincount(rows.ravel(), minlength=len(images) * bins ** 3).reshape(len(images), bins ** 3)
    return np.sqrt(counts.astype(np.float32) / np.float32(codes.shape[1]))


def _class_means(x: np.ndarray, labels: np.ndarray, ways: int) -> np.ndarray:
    onehot = np.eye(ways)[labels]
    return (onehot.T @ x) / onehot.sum(0)[:, None]


def _median_spacing(prototypes: np.ndarray) -> float:
    """Median squared distance between class prototypes, by direct differences: identical ones give exactly 0."""
    d2 = ((prototypes[:, None, :] - prototypes[None]) ** 2).sum(-1)
    return float(np.median(d2[~np.eye(len(prototypes), dtype=bool)]))


def _held_out_distances(x: np.ndarray, labels: np.ndarray, ways: int) -> np.ndarray:
    """(n, ways) squared distance of each shot to each class mean, its own class's mean taken without it:
    f_i - (n P - f_i) / (n - 1) = n / (n - 1) (f_i - P), so that distance is (n / (n - 1))^2 times the full one."""
    prototypes = _class_means(x, labels, ways)
    d2 = ((x[:, None, :] - prototypes[None]) ** 2).sum(-1)
    n = np.bincount(labels, minlength=ways)[labels].astype(np.float64)
    d2[np.arange(len(x)), labels] *= (n / (n - 1)) ** 2
    return d2


def choose_scale(features: np.ndarray, colours: np.ndarray, labels: np.ndarray, ways: int,
                 weights: tuple = WEIGHTS, margin: int = MARGIN) -> tuple[float, dict]:
    """-> (a, report): a = 0 (no colour) unless leave-one-shot-out says a colour weight helps (see above)."""
    counts = np.bincount(labels, minlength=ways)
    if counts.min() < 2:
        return 0.0, {"chosen": 0, "reason": "a class has a single shot"}
    f, h = features.astype(np.float64), colours.astype(np.float64)
    spacing_f = _median_spacing(_class_means(f, labels, ways))
    spacing_h = _median_spacing(_class_means(h, labels, ways))
    # |h| = 1, so colour spacings below 1e-9 are rounding; a scale above the manifest's bound is no use either
    if not (spacing_f > 0 and spacing_h > 1e-9 and max(weights) * np.sqrt(spacing_f / spacing_h) <= MAX_COLOUR_SCALE):
        return 0.0, {"chosen": 0, "reason": "the classes' colours (or features) are the same"}
    df, dh = _held_out_distances(f, labels, ways), _held_out_distances(h, labels, ways)
    ratio = spacing_f / spacing_h
    right = {w: int((np.argmin(df + w * w * ratio * dh, 1) == labels).sum()) for w in (0.0,) + tuple(weights)}
    chosen = 0.0
    for w in weights:
        if right[w] >= right[0.0] + margin and right[w] > right[chosen]:
            chosen = w
    report = {"chosen": chosen, "held_out_right": {f"{w:g}": n for w, n in right.items()}, "of": len(labels)}
    return round(float(chosen * np.sqrt(ratio)), 6), report  # rounded as the manifest stores it


def colour_head(colours: np.ndarray, labels: np.ndarray, ways: int, scale: float, head_scale: float) -> dict:
    """The colour head for prototypes a Q_c (see the module docstring)."""
    q = scale * _class_means(colours.astype(np.float64), labels, ways)
    return {COLOUR[0]: np.ascontiguousarray(2 * head_scale * q, dtype=np.float32),
            COLOUR[1]: np.ascontiguousarray(-head_scale * (q * q).sum(1), dtype=np.float32)}


def joint(logits: np.ndarray, features: np.ndarray, images: np.ndarray, params: dict, cue: dict | None,
          spec: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """(logits, features) with the colour term added when ``cue`` (manifest["colour"]) is set: the logits
    the joint prototype head gives, and the joint features [f, a h] it classifies."""
    if not cue:
        return logits, features
    scaled = np.float32(cue["scale"]) * histograms(images, spec, int(cue["bins"]))
    logits = logits + (scaled @ params[COLOUR[0]].T + params[COLOUR[1]])
    return logits.astype(np.float32), np.concatenate([features, scaled], 1)
