"""Honest few-shot evaluation, shared by the torch trainer and the torch-free runtime.

Both sides sample the same tasks (``unseen_class_sampler``: the same test split, the same TaskSampler
seed) and differ only in the function that adapts to a support set and predicts the query set, so their
numbers are comparable task for task.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .data.classes import ImageClasses, few
from .data.sampler import Task, TaskSampler
from .data.sources import DEFAULT_WAYS, default_protocol, is_omniglot, load_splits
from .errors import FastadaptError, warn
from .images import Preprocess


def mean_ci95(values) -> tuple:
    """Mean and 95% confidence half-width 1.96 * std / sqrt(n) (std with ddof=1)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()) if len(values) else float("nan"), float("nan")
    return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))


def evaluation_protocol(requested: str, trained: str | None, data: str, same_data: bool) -> str:
    """The split whose test classes an evaluation of a model uses. ``trained``: the protocol the model was
    trained with; ``same_data``: whether ``data`` is the data it was trained on. "auto" means the trained
    protocol there: a model trained with vinyals' split has vinyals' test classes, and lake's would be three
    quarters its training characters. An explicit protocol other than the trained one is used as asked,
    with a warning. On other data, the protocol as asked ("auto": that data's default)."""
    if trained in ("lake", "vinyals"):
        same_data = is_omniglot(data)  # trained on Omniglot: any copy of it is the same data
    if not same_data:
        return requested
    if requested == "auto":
        return trained or "auto"
    trained = default_protocol(data) if trained in (None, "auto") else trained
    if requested != trained:
        warn(f"{{protocol}} {requested} is not the {trained} split this model was trained with: on its training "
             f"data, {requested}'s test classes may include classes it was trained or selected on", "protocol")
    return requested


def check_test_classes(recorded: list, now: list, data: str, model: str, seen: list = ()) -> None:
    """Refuse to score ``model`` on its own training data when the data's classes changed since training: the
    split is a function of the class list, so it moved, and today's test classes (``now``; ``recorded``: the
    run's) may include ones it trained or was selected on (``seen``, where known)."""
    now = sorted(map(str, now))
    if sorted(map(str, recorded)) == now:
        return
    before, seen = set(map(str, recorded)), set(map(str, seen))
    leaked = [name for name in now if name in seen]
    what = (f"{len(leaked)} of today's test classes were its training or validation classes ({few(leaked)})" if leaked
            else f"test classes it was not tested on: {few([name for name in now if name not in before])}")
    raise FastadaptError(f"--data {data}: its classes changed since {model} was trained, so its test split moved: "
                         f"{what}; evaluate on the data as it was, or on new classes only with --data NEW "
                         f"--protocol all")


def unseen_classes(data: str, protocol: str, split_seed: int, val_classes: int,
                   preprocess: Preprocess | None, split_ways: int = DEFAULT_WAYS) -> ImageClasses:
    """The test split of ``data``: the classes a model trained with this split (the training run's ``seed``,
    ``val_classes`` and ``ways``) never saw. An error when there are none."""
    test = load_splits(data, protocol, split_seed, val_classes, False, preprocess, need_train=False,
                       ways=split_ways).test
    if len(test) == 0:
        raise FastadaptError(f"{{data}} {data}: no test classes", "data")
    return test


def unseen_class_sampler(data: str, protocol: str, split_seed: int, val_classes: int,
                         preprocess: Preprocess | None, ways: int, shots: int, query: int,
                         seed: int = 0, split_ways: int = DEFAULT_WAYS) -> TaskSampler:
    """The evaluation tasks: ``ways``-way ``shots``-shot tasks with ``query`` queries per class, seeded by
    ``seed``, from the unseen (test) classes of ``data`` (``unseen_classes``). The torch evaluation, the
    runtime's and export verification all sample here, so task ``i`` is the same task everywhere."""
    return TaskSampler(unseen_classes(data, protocol, split_seed, val_classes, preprocess, split_ways), ways, shots,
                       query, seed, where="test classes")


def evaluate_tasks(sampler: TaskSampler, tasks: int, predict_task: Callable[[Task], np.ndarray],
                   progress: Callable[[int], None] | None = None) -> dict:
    """Accuracy over ``tasks`` tasks. ``predict_task(task)`` returns predicted labels for task.query_x."""
    accuracies = []
    for i in range(tasks):
        task = sampler.task(i)
        predicted = np.asarray(predict_task(task))
        accuracies.append(float((predicted == task.query_y).mean()))
        if progress is not None:
            progress(i + 1)
    mean, ci = mean_ci95(accuracies)
    return {"accuracy_pct": round(100 * mean, 3), "ci95_pct": round(100 * ci, 3), "tasks": tasks,
            "ways": sampler.ways, "shots": sampler.shots, "query": sampler.query, "seed": sampler.seed,
            "per_task_accuracy": accuracies}
