"""Honest few-shot evaluation, shared by the torch trainer and the torch-free runtime.

Both sides sample the same tasks (same dataset split, same TaskSampler seed) and differ only in the
function that adapts to a support set and predicts the query set, so their numbers are comparable
task for task.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .data.sampler import Task, TaskSampler


def mean_ci95(values) -> tuple:
    """Mean and 95% confidence half-width 1.96 * std / sqrt(n) (std with ddof=1)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()) if len(values) else float("nan"), float("nan")
    return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))


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
