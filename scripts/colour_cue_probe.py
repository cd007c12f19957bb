"""How much does the colour cue (fastadapt/runtime/colour.py) help the photos model, and where does it cost?

    python scripts/colour_cue_probe.py RUN DATA [--tasks 300] [--episodes 100]

RUN: a photos run folder (its best checkpoint's body; nearest prototype, no SGD step). DATA: its dataset (the
validation classes are scored: 5-way 5-shot, 15 queries, the sampler seed of the trainer's validation); then
the colour photo crops of `python -m benchmarks --only real` (6-way 5-shot, its episodes). Rows: a fixed
colour weight w (relative to the task's feature spacing, as the runtime scales it), and the runtime's
per-task choice by leave-one-shot-out (``colour.choose_scale``) with several candidate weights and margins
("on" = the share of tasks where colour was chosen). The module docstring of runtime/colour.py lists the
results.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch
from torch.func import functional_call

from benchmarks import real, real_images
from fastadapt.data.sampler import TaskSampler
from fastadapt.data.sources import load_splits
from fastadapt.images import preprocess
from fastadapt.meta_train import inner_loop
from fastadapt.runtime import colour
from fastadapt.meta_train.evaluate import load_meta_params
from fastadapt.meta_train.run_setup import preprocess_of, to_tensors

FIXED = (0.0, 1.0, 2.0, 4.0)
RULES = (((1.0, 2.0, 4.0, 8.0), 2), ((2.0,), 2), ((4.0,), 2), ((4.0,), 3))  # (candidate weights, margin)


def nearest_prototype(support, labels, queries, ways: int) -> np.ndarray:
    prototypes = np.stack([support[labels == c].mean(0) for c in range(ways)])
    return ((queries[:, None] - prototypes[None]) ** 2).sum(-1).argmin(1)


def score_task(scores: dict, body, support, labels, queries, truth, ways: int, spec) -> None:
    fs, fq = body(support), body(queries)
    cs, cq = (colour.histograms(x.numpy(), spec).astype(np.float64) for x in (support, queries))
    labels, truth = labels.numpy(), truth.numpy()
    # a = w * sqrt(ratio): the weight relative to the task's spacing, as choose_scale scales it
    ratio = colour._median_spacing(colour._class_means(fs, labels, ways)) / \
        colour._median_spacing(colour._class_means(cs, labels, ways))

    def accuracy(a):
        answer = nearest_prototype(np.hstack([fs, a * cs]), labels, np.hstack([fq, a * cq]), ways)
        return 100.0 * float((answer == truth).mean())

    for w in FIXED:
        scores.setdefault(f"w = {w:g} always", []).append(accuracy(w * np.sqrt(ratio)))
    for weights, margin in RULES:
        a, _ = colour.choose_scale(fs, cs, labels, ways, weights=weights, margin=margin)
        name = f"w in {', '.join(f'{w:g}' for w in weights)}, margin {margin}"
        scores.setdefault(name, []).append(accuracy(a))
        scores.setdefault(name + ": on", []).append(100.0 * (a > 0))


def report(name: str, scores: dict) -> None:
    for key, values in scores.items():
        v = np.array(values)
        print(f"{name}  {key}: {v.mean():.2f} ± {1.96 * v.std() / np.sqrt(len(v)):.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("data")
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--episodes", type=int, default=100)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    config, spec, recipe, model, params, _ = load_meta_params(args.run, "best", cpu)
    spec_pp = preprocess_of(config)
    weights = inner_loop.body_params(params)

    def body(x):
        with torch.no_grad():
            return functional_call(model, weights, (x,)).double().numpy()

    splits = load_splits(args.data, config.protocol, config.seed, config.val_classes, config.rotations, spec_pp,
                         need_train=False, ways=5)
    sampler = TaskSampler(splits.val, 5, 5, 15, config.seed + 1)
    scores = {}
    for i in range(args.tasks):
        t = to_tensors(sampler.task(i), spec_pp, cpu, 5)
        score_task(scores, body, t.support_x, t.support_y, t.query_x, t.query_y, 5, spec_pp)
    report("validation 5w5s", scores)
    crops = real_images.photo_crops(tempfile.mkdtemp(), 0, colour=True)
    scores = {}
    for e in range(args.episodes):
        shots, queries, truth = real.episode(crops, e, 0)
        labels = list(shots)
        xs = torch.from_numpy(preprocess([p for paths in shots.values() for p in paths], spec_pp))
        ys = torch.tensor([labels.index(c) for c, paths in shots.items() for _ in paths])
        xq = torch.from_numpy(preprocess(queries, spec_pp))
        yq = torch.tensor([labels.index(c) for c in truth])
        score_task(scores, body, xs, ys, xq, yq, len(labels), spec_pp)
    report(f"colour crops {crops.ways}w{crops.shots}s", scores)


if __name__ == "__main__":
    main()
