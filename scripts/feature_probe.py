"""Would test-time flips or feature normalisation help the photos model? Nearest-prototype accuracy on the
validation classes with the body's features post-processed (README, photos model card, "attempts"):

    python scripts/feature_probe.py RUN DATA [--tasks 300]

RUN: a photos run folder (its best checkpoint's body; no SGD step). DATA: its dataset. Variants: raw features;
L2N (L2-normalised); CL2N (centred on the mean feature of 3,000 training-class images, then L2-normalised,
SimpleShot's); sqrt (square-rooted, a power transform, then L2N / CL2N); each also with "+flip": the
features averaged with those of the horizontally mirrored image, and "+flip shots": that for the shots only.
5-way 1-shot and 5-shot, 15 queries, the sampler seed of the trainer's validation.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch.func import functional_call

from fastadapt.data.sampler import TaskSampler
from fastadapt.data.sources import load_splits
from fastadapt.meta_train import inner_loop
from fastadapt.meta_train.evaluate import load_meta_params
from fastadapt.meta_train.run_setup import preprocess_of, to_tensors


def l2(f: torch.Tensor) -> torch.Tensor:
    return f / f.norm(dim=1, keepdim=True).clamp_min(1e-8)


def prototype_accuracy(fs, ys, fq, yq, ways: int) -> float:
    prototypes = torch.stack([fs[ys == c].mean(0) for c in range(ways)])
    return 100.0 * float((torch.cdist(fq, prototypes).argmin(1) == yq).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("data")
    parser.add_argument("--tasks", type=int, default=300)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    config, _, _, model, params, _ = load_meta_params(args.run, "best", cpu)
    spec = preprocess_of(config)
    weights = inner_loop.body_params(params)

    def body(x):
        with torch.no_grad():
            return functional_call(model, weights, (x,))

    splits = load_splits(args.data, config.protocol, config.seed, config.val_classes, config.rotations, spec,
                         need_train=True, ways=5)
    train = TaskSampler(splits.train, 20, 5, 5, 123)  # 30 tasks x 100 images: the training classes' mean feature
    features = torch.cat([body(to_tensors(train.task(i), spec, cpu, 20).support_x) for i in range(30)])
    mean, mean_sqrt = features.mean(0), features.clamp_min(0).sqrt().mean(0)
    variants = {"raw": lambda f: f, "L2N": l2, "CL2N": lambda f: l2(f - mean),
                "sqrt L2N": lambda f: l2(f.clamp_min(0).sqrt()), "sqrt CL2N": lambda f: l2(f.clamp_min(0).sqrt() - mean_sqrt)}
    for shots in (1, 5):
        sampler = TaskSampler(splits.val, 5, shots, 15, config.seed + 1)
        scores = {}
        for i in range(args.tasks):
            t = to_tensors(sampler.task(i), spec, cpu, 5)
            fs, fq = body(t.support_x), body(t.query_x)
            flipped_s, flipped_q = (fs + body(t.support_x.flip(-1))) / 2, (fq + body(t.query_x.flip(-1))) / 2
            for name, v in variants.items():
                scores.setdefault(name, []).append(prototype_accuracy(v(fs), t.support_y, v(fq), t.query_y, 5))
                scores.setdefault(name + " +flip", []).append(
                    prototype_accuracy(v(flipped_s), t.support_y, v(flipped_q), t.query_y, 5))
                scores.setdefault(name + " +flip shots", []).append(  # the shots only: prediction unchanged
                    prototype_accuracy(v(flipped_s), t.support_y, v(fq), t.query_y, 5))
        for name, values in scores.items():
            v = np.array(values)
            print(f"5-way {shots}-shot  {name:15s} {v.mean():.2f} ± {1.96 * v.std() / np.sqrt(len(v)):.2f}", flush=True)


if __name__ == "__main__":
    main()
