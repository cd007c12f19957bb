"""Unknown detection: does ``predict`` tell a character of the task from one outside it?

Omniglot evaluation alphabets (characters the shipped model never saw), 5-way 5-shot tasks: the shipped
default model adapted on the shots with the default call, then asked about QUERY new drawings of each task
character (known) and one drawing each of UNKNOWNS characters outside the task (unknown; any evaluation
character, same alphabet or not). All through the public API: ``model.adapt({label: [images]})`` and
``adapted.predict(images, unknown=True)`` on the drawings as a user has them (dark on light, 28x28).

Per task: AUROC of ``Prediction.score`` (known vs unknown), the accuracy on known queries at a 5%
false-accept rate (the threshold that lets 5% of the unknowns through, chosen per task with hindsight),
and what the calibrated threshold stored at adaptation does (unknowns accepted, knowns rejected, knowns
accepted with the right label). The maximum softmax probability is scored the same way for comparison.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from fastadapt.evaluation import mean_ci95

from .common import omniglot_root
from .real import quietly

FAR = 0.05


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(score of a known > score of an unknown), ties counting one half (Mann-Whitney)."""
    diff = np.asarray(known, np.float64)[:, None] - np.asarray(unknown, np.float64)[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def accuracy_at_far(known: np.ndarray, correct: np.ndarray, unknown: np.ndarray, far: float = FAR) -> float:
    """Share of known queries accepted with the right label when at most ``far`` of the unknowns are accepted
    (accepted: score strictly above the threshold)."""
    allowed = int(np.floor(far * len(unknown)))
    threshold = np.sort(unknown)[::-1][allowed]
    return float(((known > threshold) & correct).mean())


def sample(test, index: int, seed: int, ways: int, shots: int, query: int, unknowns: int):
    """Task ``index``: shots {label: [images]}, known queries and their labels, unknown queries (raw uint8 HxW,
    dark on light, as a user would pass them)."""
    rng = np.random.default_rng([seed, index])
    chosen = rng.choice(len(test), size=ways + unknowns, replace=False)
    raw = lambda x: 255 - x[0]  # noqa: E731  (the dataset caches the model's inverted form)
    support, known, labels = {}, [], []
    for label, c in enumerate(chosen[:ways]):
        pick = rng.choice(len(test.images[c]), size=shots + query, replace=False)
        support[str(label)] = [raw(test.images[c][i]) for i in pick[:shots]]
        known += [raw(test.images[c][i]) for i in pick[shots:]]
        labels += [str(label)] * query
    unknown = [raw(test.images[c][rng.integers(len(test.images[c]))]) for c in chosen[ways:]]
    return support, known, np.asarray(labels), unknown


def run(tasks: int = 200, seed: int = 0, ways: int = 5, shots: int = 5, query: int = 10, unknowns: int = 50,
        minutes: float = 4.0) -> dict:
    root = omniglot_root()
    if root is None:
        return {"skipped": "no real Omniglot (set FASTADAPT_OMNIGLOT or put its zips in ../shared/data/omniglot)"}
    import fastadapt
    from fastadapt.evaluation import unseen_classes
    from fastadapt.runtime.evaluate import split_settings

    model = fastadapt.load()
    test = unseen_classes(root, "auto", preprocess=model.preprocess, **split_settings(model.manifest))
    per_task = {k: [] for k in ("closed_set", "auroc_score", "auroc_probability", "acc_at_far_score",
                                "acc_at_far_probability", "calibrated_false_accept", "calibrated_false_reject",
                                "calibrated_accuracy")}
    has_unknown, warned = True, 0
    start = time.perf_counter()
    done = 0
    while done < tasks and time.perf_counter() - start < 60 * minutes:
        support, known, labels, unknown = sample(test, done, seed, ways, shots, query, unknowns)
        with quietly():  # counted below, not printed
            adapted = model.adapt(support)
        info = getattr(adapted, "adaptation", None) or adapted.manifest.get("adaptation") or {}
        warned += bool(info.get("warning"))
        if has_unknown:
            try:
                answers = adapted.predict(known + unknown, unknown=True)
            except TypeError:  # this fastadapt has no unknown option yet: only the probability is scored
                has_unknown = False
        if not has_unknown:
            answers = adapted.predict(known + unknown)
        n = len(known)  # answers: the known queries first, then the unknowns
        correct = np.asarray([p.label for p in answers[:n]]) == labels
        probability = np.asarray([p.probability for p in answers])
        per_task["closed_set"].append(float(correct.mean()))
        per_task["auroc_probability"].append(auroc(probability[:n], probability[n:]))
        per_task["acc_at_far_probability"].append(accuracy_at_far(probability[:n], correct, probability[n:]))
        if has_unknown:
            score = np.asarray([p.score for p in answers], np.float64)
            flagged = np.asarray([bool(p.unknown) for p in answers])
            per_task["auroc_score"].append(auroc(score[:n], score[n:]))
            per_task["acc_at_far_score"].append(accuracy_at_far(score[:n], correct, score[n:]))
            per_task["calibrated_false_accept"].append(float((~flagged[n:]).mean()))
            per_task["calibrated_false_reject"].append(float(flagged[:n].mean()))
            per_task["calibrated_accuracy"].append(float((correct & ~flagged[:n]).mean()))
        done += 1
        if done % 25 == 0:
            print(f"unknown: {done} tasks, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    metrics = {}
    for name, values in per_task.items():
        if values:
            mean, ci = mean_ci95(values)
            metrics[name] = {"mean": round(mean, 4), "ci95": round(ci, 4)}
    return {"data": "omniglot evaluation alphabets", "ways": ways, "shots": shots, "query": query,
            "unknowns": unknowns, "tasks": done, "seed": seed, "far": FAR, "metrics": metrics,
            "score_available": has_unknown, "warned_tasks": warned,
            "seconds": round(time.perf_counter() - start, 1)}
