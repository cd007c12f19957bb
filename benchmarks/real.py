"""The "real images" benchmark: does on-device adaptation help or hurt on pictures nobody on the project made?

For each image set (benchmarks/real_images.py), seeded N-way K-shot episodes with queries disjoint from
the shots, adapted through the public API (``fastadapt.load().adapt({label: [files]}, ...)``) and
predicted with ``adapted.predict(files)``, in four variants:

  0 steps          steps=0: the head initialised from the shots, no SGD step
  today's recipe   safeguard=False: the meta-trained k steps, whatever they do to the support loss
  safeguarded      the default call: steps that raise the support loss are retried smaller or dropped
  auto             steps="auto": the number of steps chosen by leave-one-shot-out on the shots

plus a naive 1-nearest-neighbour baseline on the same shots (pixels or colour histograms) for context.
A variant the installed fastadapt does not offer (the call raises TypeError or refuses the argument)
is reported as n/a with the error. Then the same camera-like drawings as phones store them: JPEGs
rotated with an EXIF orientation tag against the same pictures upright, and 16:9 frames against square.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
import warnings

import numpy as np
from PIL import Image

from fastadapt.evaluation import mean_ci95


VARIANTS = (("0 steps", {"steps": 0}), ("today's recipe", {"safeguard": False}), ("safeguarded", {}),
            ("auto", {"steps": "auto"}))
PHONE_VARIANTS = (("0 steps", {"steps": 0}), ("safeguarded", {}))  # EXIF and 16:9: the default call, and no steps
QUERY = 10  # query pictures per class and episode


@contextlib.contextmanager
def quietly():
    """No warnings (fastadapt's go through ``warnings``; older versions printed them) while measuring: the
    benchmarks count them from what the API reports instead."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def episode(image_set, index: int, seed: int):
    """Episode ``index``: ({label: shot paths}, query paths, query labels); depends on (seed, index) only."""
    rng = np.random.default_rng([seed, index])
    labels = sorted(image_set.classes)
    shots, queries, truth = {}, [], []
    for c in sorted(rng.choice(len(labels), size=image_set.ways, replace=False)):
        paths = image_set.classes[labels[c]]
        pick = rng.choice(len(paths), size=image_set.shots + QUERY, replace=False)
        shots[labels[c]] = [paths[i] for i in pick[:image_set.shots]]
        queries += [paths[i] for i in pick[image_set.shots:]]
        truth += [labels[c]] * QUERY
    return shots, queries, truth


def adaptation_info(adapted) -> dict:
    """What the adaptation reported: ``adapted.adaptation`` where the API has it, else the manifest's record."""
    info = getattr(adapted, "adaptation", None)
    return info if isinstance(info, dict) else dict(adapted.manifest.get("adaptation") or {})


# ---------------------------------------------------------------- the naive baseline

def features(path: str, kind: str) -> np.ndarray:
    """The file's pixels as stored (no EXIF, squashed to 28x28 grey) or its colour / grey histogram."""
    with Image.open(path) as image:
        if kind == "pixels":
            return np.asarray(image.convert("L").resize((28, 28), Image.BILINEAR), dtype=np.float64).ravel() / 255
        if kind == "colour histogram":
            rgb = np.asarray(image.convert("RGB")) // 32  # 8 levels per channel
            codes = (rgb[..., 0].astype(np.int64) * 64 + rgb[..., 1] * 8 + rgb[..., 2]).ravel()
            hist = np.bincount(codes, minlength=512)
        else:
            hist = np.bincount((np.asarray(image.convert("L")) // 8).ravel(), minlength=32)
    return hist / hist.sum()


def nearest_neighbour(shots: dict, queries: list, kind: str) -> list:
    """1-NN: each query gets the label of the closest shot (L2 on pixels, L1 on histograms)."""
    labels = [label for label, paths in shots.items() for _ in paths]
    bank = np.stack([features(p, kind) for paths in shots.values() for p in paths])
    answers = []
    for path in queries:
        x = features(path, kind)
        d = ((bank - x) ** 2).sum(1) if kind == "pixels" else np.abs(bank - x).sum(1)
        answers.append(labels[int(np.argmin(d))])
    return answers


# ---------------------------------------------------------------- episodes

def evaluate_set(model, image_set, episodes: int, seed: int, variants=VARIANTS) -> dict:
    """Accuracy per variant (and the baseline) over ``episodes`` episodes: mean, 95% CI, per-episode values."""
    from fastadapt import FastadaptError

    accuracies = {name: [] for name, _ in variants}
    accuracies["baseline"] = []
    steps = {name: [] for name, _ in variants}
    loss_rose = {name: [] for name, _ in variants}
    warned = {name: 0 for name, _ in variants}
    missing, seconds = {}, {name: [] for name, _ in variants}
    for index in range(episodes):
        shots, queries, truth = episode(image_set, index, seed)
        truth = np.asarray(truth)
        for name, kwargs in variants:
            if name in missing:
                continue
            start = time.perf_counter()
            try:
                with quietly():  # warnings are counted below, not printed
                    adapted = model.adapt(shots, **kwargs)
            except (TypeError, FastadaptError) as exc:  # an option this fastadapt does not have yet
                missing[name] = f"{type(exc).__name__}: {exc}"
                continue
            seconds[name].append(time.perf_counter() - start)
            answers = [p.label for p in adapted.predict(queries)]
            accuracies[name].append(float((np.asarray(answers) == truth).mean()))
            info = adaptation_info(adapted)
            if isinstance(info.get("steps"), (int, float)):
                steps[name].append(info["steps"])
            if isinstance(info.get("loss_before"), (int, float)) and isinstance(info.get("loss_after"), (int, float)):
                loss_rose[name].append(info["loss_after"] > info["loss_before"])
            warned[name] += bool(info.get("warning"))
        answers = nearest_neighbour(shots, queries, image_set.baseline)
        accuracies["baseline"].append(float((np.asarray(answers) == truth).mean()))
    rows = {}
    for name, values in accuracies.items():
        if name in missing or not values:
            rows[name] = {"n/a": missing.get(name, "not run")}
            continue
        mean, ci = mean_ci95(values)
        row = {"accuracy_pct": round(100 * mean, 2), "ci95_pct": round(100 * ci, 2),
               "per_episode": [round(v, 4) for v in values]}
        if steps.get(name):
            row["mean_steps"] = round(float(np.mean(steps[name])), 2)
        if loss_rose.get(name):
            row["loss_rose_episodes"] = int(sum(loss_rose[name]))
        if loss_rose.get(name) or warned.get(name):
            row["warned_episodes"] = warned[name]
        if seconds.get(name):
            row["adapt_ms_median"] = round(1000 * float(np.median(seconds[name])), 1)
        rows[name] = row
    return {"set": image_set.name, "about": image_set.about, "ways": image_set.ways, "shots": image_set.shots,
            "query": QUERY, "classes": len(image_set.classes), "episodes": episodes, "baseline": image_set.baseline,
            "variants": rows}


def run(episodes: int = 10, seed: int = 0, model_name: str | None = None) -> dict:
    """``model_name``: a bundle path or a built-in model's name (characters, photos); None: the default."""
    import fastadapt

    from . import real_images

    commit = _commit()  # what is measured: the code as the run starts
    model = fastadapt.load(model_name)
    with tempfile.TemporaryDirectory(prefix="fastadapt-real-") as root:
        sets, pairs = real_images.build(root, seed)
        results = []
        for image_set in sets:
            start = time.perf_counter()
            results.append(evaluate_set(model, image_set, episodes, seed))
            print(f"real: {image_set.name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        comparisons = []
        for reference, other in pairs:
            comparisons.append([evaluate_set(model, s, episodes, seed, PHONE_VARIANTS) for s in (reference, other)])
            print(f"real: {reference.name} / {other.name} done", file=sys.stderr)
        fits = []  # the 16:9 frames again with the shipped model's preprocessing set to each other fit
        for fit in ("stretch", "pad", "crop"):
            refit = with_fit(model, fit)
            if refit is not None:
                fits.append({"fit": fit, **evaluate_set(refit, pairs[1][1], episodes, seed, PHONE_VARIANTS)})
        print("real: 16:9 frames under each fit done", file=sys.stderr)
    preprocess = model.manifest.get("preprocess", {})
    shown = "shipped default (fastadapt.load())" if model_name is None else f"fastadapt.load({model_name!r})"
    return {"model": shown, "preprocess": preprocess,
            "fastadapt_commit": commit, "seed": seed, "sets": results, "comparisons": comparisons, "fits": fits}


def with_fit(model, fit: str):
    """The same model with its manifest's preprocess "fit" set to ``fit``; None where it already is, or where
    this fastadapt has no such option."""
    import copy

    from fastadapt import FastadaptError
    from fastadapt.bundle import Bundle
    from fastadapt.runtime.model import Model

    if getattr(model.preprocess, "fit", fit) == fit:
        return None
    manifest = copy.deepcopy(model.manifest)
    manifest["preprocess"]["fit"] = fit
    try:
        return Model(Bundle(manifest, model.bundle.forward_onnx, model.bundle.step_onnx, model.bundle.params))
    except (TypeError, FastadaptError):
        return None


def _commit() -> str:
    import subprocess

    from .common import REPO

    def git(*args) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:  # "-dirty" when the package measured has uncommitted changes (the benchmark's own outputs do not count)
        return git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "--", "fastadapt") else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"
