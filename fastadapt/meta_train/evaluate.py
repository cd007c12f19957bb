"""Evaluation in torch: adapt to each task's support set with the inner loop, predict its queries.

Non-transductive by default: with per-sample norm ("layer"), each query's prediction depends only on
itself; with batch-statistics norm ("batch"), each query is normalised together with the support set
only (Nichol et al.'s non-transductive setting). ``transductive=True`` predicts all queries as one
batch, the papers' transductive setting (the same as non-transductive for per-sample norm).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.sampler import TaskSampler
from ..data.sources import load_splits
from ..errors import FastadaptError
from ..evaluation import evaluate_tasks, mean_ci95
from .algorithms import Batch
from .inner_loop import InnerLoop, adapt, forward
from .parts import preprocess_of, to_batch


def predict_queries(model, params: dict, batch: Batch, norm: str, transductive: bool) -> torch.Tensor:
    with torch.no_grad():
        if norm != "batch" or transductive:
            return forward(model, params, batch.query_x)
        outputs = []
        for q in batch.query_x:
            joint = torch.cat([batch.support_x, q[None]])
            outputs.append(forward(model, params, joint)[-1])
        return torch.stack(outputs)


def adapt_and_predict(model, meta_params: dict, recipe: InnerLoop, batch: Batch, steps: int, lr: float | None,
                      norm: str, transductive: bool) -> torch.Tensor:
    """Outputs for the query set after adapting to the support set (the shared evaluation step)."""
    with torch.enable_grad():
        params = adapt(model, meta_params, batch.support_x, batch.support_y, batch.ways, recipe, steps=steps,
                       lr=lr, first_order=True)
    params = {k: v.detach() for k, v in params.items()}
    return predict_queries(model, params, batch, norm, transductive)


def evaluate_classification(model, meta_params, recipe, sampler: TaskSampler, preprocess, device, tasks: int,
                            steps: int, lr: float | None = None, norm: str = "layer", transductive: bool = False,
                            progress=None) -> dict:
    def predict_task(task):
        batch = to_batch(task, preprocess, device, sampler.ways)
        out = adapt_and_predict(model, meta_params, recipe, batch, steps, lr, norm, transductive)
        return out.argmax(1).cpu().numpy()

    result = evaluate_tasks(sampler, tasks, predict_task, progress)
    result.update(steps=steps, transductive=transductive)
    return result


def evaluate_regression(model, meta_params, recipe, sampler, device, tasks: int, steps: int,
                        lr: float | None = None, progress=None) -> dict:
    """Mean squared error on the query points after ``steps`` SGD steps on the K support points."""
    errors = []
    for i in range(tasks):
        batch = to_batch(sampler.task(i), None, device, 1)
        out = adapt_and_predict(model, meta_params, recipe, batch, steps, lr, "none", False)
        errors.append(float(((out - batch.query_y) ** 2).mean()))
        if progress is not None:
            progress(i + 1)
    mean, ci = mean_ci95(errors)
    return {"mse": round(mean, 5), "ci95": round(ci, 5), "tasks": tasks, "shots": sampler.shots, "steps": steps}


def test_sampler(config, data: str, protocol: str, ways: int, shots: int, query: int, seed: int) -> tuple:
    """The evaluation tasks: the test split of ``data`` (unseen classes), seeded like the runtime's."""
    spec = preprocess_of(config)
    splits = load_splits(data, protocol, config.seed, config.val_classes, False, spec, need_train=False)
    if len(splits.test) == 0:
        raise FastadaptError(f"--data {data}: no test classes")
    return TaskSampler(splits.test, ways, shots, query, seed, where="test classes"), spec

