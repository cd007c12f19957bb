"""Few-shot evaluation of a bundle through onnxruntime, on exactly the tasks the torch side samples.

Same tasks (``evaluation.unseen_class_sampler`` with the training run's split seed and validation-class
count, read from the bundle's provenance), same statistics (``evaluation.evaluate_tasks``): the only difference from the torch evaluation is
that adaptation and prediction run the exported graphs, so the two numbers are comparable task by task.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np

from ..bundle import read_bundle, save_bundle
from ..data.sampler import Task
from ..data.sources import DEFAULT_SEED, DEFAULT_VAL_CLASSES, DEFAULT_WAYS
from ..errors import FastadaptError
from ..evaluation import check_test_classes, evaluate_tasks, evaluation_protocol, mean_ci95, unseen_class_sampler
from .colour import check_mode
from ..images import to_float
from .loading import load
from .model import Model
from .unknown import auroc

def split_settings(manifest: dict) -> dict:
    """The training run's split settings (``split_seed``, ``val_classes``, ``split_ways``: keywords of
    ``unseen_class_sampler``): they decide which classes are test classes. A bundle whose provenance does
    not record them was trained with TrainConfig's defaults, which are data.sources' defaults."""
    provenance = manifest.get("provenance") or {}
    config = provenance.get("config") if isinstance(provenance.get("config"), dict) else provenance
    return {"split_seed": int(config.get("seed", DEFAULT_SEED)),
            "val_classes": int(config.get("val_classes", DEFAULT_VAL_CLASSES)),
            "split_ways": int(config.get("ways", DEFAULT_WAYS))}


def _trained_on(model: Model, data: str) -> bool:
    """Whether ``data`` is the data the bundle was trained on: the folder or file of the same name (the bundle
    records its trainer's path)."""
    trained_on = str((model.manifest.get("provenance") or {}).get("data") or "")
    return bool(trained_on) and os.path.basename(os.path.normpath(trained_on)) == os.path.basename(os.path.normpath(data))


def bundle_protocol(model: Model, requested: str, data: str) -> str:
    """``evaluation_protocol`` for a bundle: its training protocol and data from its provenance."""
    provenance = model.manifest.get("provenance") or {}
    return evaluation_protocol(requested, provenance.get("protocol"), data, _trained_on(model, data))


def _check_bundle_test_classes(model: Model, path, data: str, protocol: str, test: list) -> None:
    """On its own training data and split, the test classes must be the run's (provenance.test_classes,
    from the run's split.json): a data folder that gained or lost a class splits differently."""
    provenance = model.manifest.get("provenance") or {}
    recorded = provenance.get("test_classes")
    if (isinstance(recorded, list) and _trained_on(model, data) and protocol == provenance.get("protocol")):
        check_test_classes(recorded, test, data, os.path.basename(os.fspath(path)))


def _meta_model(path, fix: str) -> Model:
    model = load(path)
    if not isinstance(model, Model):
        raise FastadaptError(f"{path}: is an adapted model; {fix}")
    return model


def _check_tasks(tasks: int) -> None:
    if isinstance(tasks, bool) or not isinstance(tasks, (int, np.integer)) or tasks < 2:
        raise FastadaptError(f"{{tasks}} must be at least 2 for a confidence interval, got {tasks}", "tasks")


def evaluate_bundle(path: str, data: str, protocol: str = "auto", ways: int = 5, shots: int = 1,
                    query: int = 15, tasks: int = 600, seed: int = 0, progress: Callable[[int], None] | None = None,
                    steps: int | str | None = None, lr: float | None = None, transductive: bool = False,
                    safeguard: bool = False, colour: str = "off") -> dict:
    """Mean accuracy and 95% CI of the meta bundle at ``path`` over ``tasks`` unseen-class tasks.

    ``safeguard`` and ``colour`` (off by default, so the numbers compare task by task with the torch
    evaluation of the same recipe) and ``steps="auto"`` evaluate what ``Model.adapt`` does with them.

    ``seed`` is the task seed (as in ``fastadapt evaluate --seed``); ``transductive`` changes nothing
    for exported models (their norm is per sample) and is recorded for comparison with torch results.

    >>> result = fastadapt.evaluate_bundle(fastadapt.runtime.DEFAULT_MODEL, "synthetic", tasks=2)
    >>> result["ways"], result["shots"], result["tasks"], 0 <= result["accuracy_pct"] <= 100
    (5, 1, 2, True)
    """
    model = _meta_model(path, "evaluation adapts to every task itself, so pass the meta bundle it came from")
    _check_tasks(tasks)
    colour = check_mode(colour)
    spec = model.preprocess
    protocol = bundle_protocol(model, protocol, data)
    sampler = unseen_class_sampler(data, protocol, preprocess=spec, ways=ways, shots=shots, query=query, seed=seed,
                                   **split_settings(model.manifest))
    _check_bundle_test_classes(model, path, data, protocol, sampler.data.names)
    classes = [str(i) for i in range(ways)]
    steps = int(model.recipe["steps"]) if steps is None else steps
    kept, coloured = [], []

    adapt_seconds = []

    def predict_task(task: Task) -> np.ndarray:
        start = time.perf_counter()
        adapted = model.adapt_arrays(to_float(task.support_x, spec), task.support_y, classes, steps=steps, lr=lr,
                                     safeguard=safeguard, quiet=True, colour=colour)
        adapt_seconds.append(time.perf_counter() - start)
        kept.append(adapted.adaptation["steps"])
        coloured.append("colour" in adapted.manifest)
        return adapted.probabilities(to_float(task.query_x, spec)).argmax(1)

    result = evaluate_tasks(sampler, tasks, predict_task, progress)
    if spec.channels == 3:  # colour models: how often the colour cue was used (runtime/colour.py)
        result.update(colour=colour, colour_used_pct=round(100 * float(np.mean(coloured)), 2))
    result.update(steps=steps, safeguard=safeguard, steps_kept_mean=round(float(np.mean(kept)), 3),
                  transductive=transductive, protocol=protocol, data=data,
                  evaluated_with="onnxruntime", adapt_ms_median=round(1000 * float(np.median(adapt_seconds)), 2))
    return result


def record_evaluation(path: str, result: dict) -> None:
    """Append an evaluation result to the bundle's manifest (the bundle is rewritten atomically).

    The same evaluation recorded again (same settings and data; only its timing differs) replaces the
    earlier row instead of listing it twice."""
    bundle = read_bundle(path)
    row = {k: v for k, v in result.items() if k != "per_task_accuracy"}
    row["data"] = os.path.basename(os.path.normpath(str(row.get("data", ""))))  # no local paths in a shipped file
    same = lambda other: _without_timing(other) == _without_timing(row)  # noqa: E731
    bundle.manifest["evaluation"] = [r for r in bundle.manifest.get("evaluation") or [] if not same(r)] + [row]
    save_bundle(path, bundle)


def _without_timing(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "adapt_ms_median"}


def evaluate_unknown(path: str, data: str, protocol: str = "auto", ways: int = 5, shots: int = 5, query: int = 15,
                     tasks: int = 200, seed: int = 0, false_accept: float = 0.05, steps: int | str | None = None,
                     progress: Callable[[int], None] | None = None) -> dict:
    """Unknown detection of the meta bundle at ``path`` on unseen-class tasks.

    Each task samples 2 * ``ways`` test classes: the model adapts (default: safeguarded) to the first
    ``ways`` and predicts ``query`` images of all of them; the other classes' images are the unknowns.
    Per task: AUROC of the in-set score (in-set vs unknown images), the share of in-set images that are
    accepted and correctly classified when the threshold lets ``false_accept`` of the unknowns through
    (chosen with the unknowns, an upper bound), and the in-set acceptance and false-accept rates of the
    model's calibrated threshold. Means and 95% CIs over tasks.

    >>> result = fastadapt.evaluate_unknown(fastadapt.runtime.DEFAULT_MODEL, "synthetic", tasks=2)
    >>> result["score"], 0 <= result["auroc"] <= 1
    ('nearest_prototype', True)
    """
    model = _meta_model(path, "pass the meta bundle it came from")
    _check_tasks(tasks)
    if isinstance(false_accept, bool) or not isinstance(false_accept, (int, float)) or not 0 < false_accept < 1:
        raise FastadaptError(f"false_accept must be a share of the unknowns between 0 and 1 (e.g. 0.05), "
                             f"got {false_accept!r:.40}")
    spec = model.preprocess
    protocol = bundle_protocol(model, protocol, data)
    try:
        sampler = unseen_class_sampler(data, protocol, preprocess=spec, ways=2 * ways, shots=shots, query=query,
                                       seed=seed, **split_settings(model.manifest))
    except FastadaptError as exc:  # its limits name 2 x ways, which the caller never typed
        raise FastadaptError(f"evaluate_unknown samples 2 x ways classes per task (ways known, as many unknown): "
                             f"{exc}") from None
    _check_bundle_test_classes(model, path, data, protocol, sampler.data.names)
    classes = [str(i) for i in range(ways)]
    rows = {"auroc": [], "accuracy_at_far": [], "accuracy_closed_set": [], "calibrated_accepted_in_set": [],
            "calibrated_false_accept": []}
    for i in range(tasks):
        task = sampler.task(i)
        known = task.support_y < ways
        adapted = model.adapt_arrays(to_float(task.support_x[known], spec), task.support_y[known], classes,
                                     steps=steps, quiet=True)
        probabilities, scores = adapted.scores(to_float(task.query_x, spec))
        in_set = task.query_y < ways
        correct = probabilities.argmax(1) == task.query_y
        rows["auroc"].append(auroc(scores[in_set], scores[~in_set]))
        at_far = np.quantile(scores[~in_set], 1 - false_accept)
        rows["accuracy_at_far"].append(float(np.mean(correct[in_set] & (scores[in_set] > at_far))))
        rows["accuracy_closed_set"].append(float(np.mean(correct[in_set])))
        if adapted.unknown_threshold is not None:
            rows["calibrated_accepted_in_set"].append(float(np.mean(scores[in_set] >= adapted.unknown_threshold)))
            rows["calibrated_false_accept"].append(float(np.mean(scores[~in_set] >= adapted.unknown_threshold)))
        if progress is not None:
            progress(i + 1)
    result = {"ways": ways, "shots": shots, "query": query, "tasks": tasks, "seed": seed, "unknown_classes": ways,
              "false_accept": false_accept, "score": adapted.unknown_score, "threshold": adapted.unknown_threshold,
              "evaluated_with": "onnxruntime", "data": data, "protocol": protocol}
    for name, values in rows.items():
        if values:
            mean, ci = mean_ci95(values)
            result[name] = round(mean, 4)
            result[name + "_ci95"] = round(ci, 4)
    return result


if __name__ == "__main__":  # python -m fastadapt.runtime.evaluate MODEL DATA [WAYS SHOTS TASKS]
    import json
    import sys

    args = sys.argv[1:]
    if len(args) < 2:
        raise SystemExit("usage: python -m fastadapt.runtime.evaluate MODEL.fadapt DATA [WAYS SHOTS TASKS]")
    numbers = [int(a) for a in args[2:5]]
    print(json.dumps(evaluate_unknown(args[0], args[1], **dict(zip(("ways", "shots", "tasks"), numbers))),
                     allow_nan=False))
