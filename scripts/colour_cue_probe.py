"""Would a colour cue help the photos model? Nearest-prototype accuracy when a colour histogram of each
image is appended to the body's features with weight a (README, photos model card, "attempts"):

    python scripts/colour_cue_probe.py RUN DATA [--tasks 300] [--episodes 100]

RUN: a photos run folder (its best checkpoint's body; no SGD steps). DATA: its dataset (the validation
classes are scored: 5-way 5-shot, 15 queries, the sampler seed of the trainer's validation); then the
colour photo crops of `python -m benchmarks --only real` (6-way 5-shot, its episodes). For each fixed
weight, and for a weight chosen per task by leave-one-shot-out on the shots: the weight with the most
leave-one-out hits among those that beat a = 0 by at least MARGIN shots (1-3 reported; "on" = the share
of tasks where a colour weight was chosen).
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
from fastadapt.meta_train.evaluate import load_meta_params
from fastadapt.meta_train.run_setup import preprocess_of, to_tensors

WEIGHTS = (0, 3, 10, 30, 100)
BINS = 8  # levels per channel: 512 colours


def histogram(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Square-rooted share of the pixels in each of BINS^3 colours, from normalised images (B, 3, H, W)."""
    levels = ((x * std + mean).clamp(0, 1 - 1e-6) * BINS).floor().long()
    codes = (levels[:, 0] * BINS + levels[:, 1]) * BINS + levels[:, 2]
    return torch.nn.functional.one_hot(codes.flatten(1), BINS ** 3).float().mean(1).sqrt()


def nearest_prototype(support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, ways: int) -> torch.Tensor:
    prototypes = torch.stack([support[labels == c].mean(0) for c in range(ways)])
    return torch.cdist(queries, prototypes).argmin(1)


def leave_one_out_counts(features, colours, labels, ways: int) -> dict:
    """Per weight: how many shots the other shots' prototypes classify right."""
    counts = {}
    for a in WEIGHTS:
        s = torch.cat([features, a * colours], 1)
        counts[a] = sum(int(nearest_prototype(s[np.arange(len(s)) != i], labels[np.arange(len(s)) != i],
                                              s[i:i + 1], ways)[0] == labels[i]) for i in range(len(s)))
    return counts


def score_task(scores: dict, body, support, labels, queries, truth, ways: int, mean, std) -> None:
    fs, fq = body(support), body(queries)
    cs, cq = histogram(support, mean, std), histogram(queries, mean, std)

    def accuracy(a):
        answer = nearest_prototype(torch.cat([fs, a * cs], 1), labels, torch.cat([fq, a * cq], 1), ways)
        return 100.0 * float((answer == truth).float().mean())

    for a in WEIGHTS:
        scores.setdefault(f"a = {a}", []).append(accuracy(a))
    counts = leave_one_out_counts(fs, cs, labels, ways)
    for margin in (1, 2, 3):
        chosen = 0  # the weight with the most leave-one-out hits among those margin above a = 0; ties: smaller
        for a in WEIGHTS[1:]:
            if counts[a] >= counts[0] + margin and counts[a] > counts[chosen]:
                chosen = a
        scores.setdefault(f"per task, margin {margin}", []).append(accuracy(chosen))
        scores.setdefault(f"per task, margin {margin}: on", []).append(100.0 * (chosen > 0))


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
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (spec_pp.mean, spec_pp.std))
    weights = inner_loop.body_params(params)

    def body(x):
        with torch.no_grad():
            return functional_call(model, weights, (x,))

    splits = load_splits(args.data, config.protocol, config.seed, config.val_classes, config.rotations, spec_pp,
                         need_train=False, ways=5)
    sampler = TaskSampler(splits.val, 5, 5, 15, config.seed + 1)
    scores = {}
    for i in range(args.tasks):
        t = to_tensors(sampler.task(i), spec_pp, cpu, 5)
        score_task(scores, body, t.support_x, t.support_y, t.query_x, t.query_y, 5, mean, std)
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
        score_task(scores, body, xs, ys, xq, yq, len(labels), mean, std)
    report(f"colour crops {crops.ways}w{crops.shots}s", scores)


if __name__ == "__main__":
    main()
