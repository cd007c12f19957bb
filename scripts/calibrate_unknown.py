"""Calibrate a meta bundle's "unknown" threshold on its validation classes and store it in the bundle:

    python scripts/calibrate_unknown.py BUNDLE.fadapt DATA [--accept 0.95] [--tasks 200] [--write]

Adapts the bundle to --tasks 5-way 5-shot tasks of DATA's validation classes (the bundle's own split: never
its test classes) as 'fastadapt adapt' does, scores each task's 15 queries per class (runtime/unknown.py) and
takes the threshold that accepts --accept of them. With --write it becomes the bundle's
manifest["unknown_calibration"] (the bundle is rewritten atomically), which adaptation then stores in adapted
models instead of the default -0.5 (calibrated on Omniglot characters). Without --write it only prints.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from fastadapt.bundle import read_bundle, save_bundle
from fastadapt.data.sampler import TaskSampler
from fastadapt.data.sources import load_splits
from fastadapt.images import to_float
from fastadapt.runtime import load
from fastadapt.runtime.evaluate import split_settings

WAYS, SHOTS, QUERY = 5, 5, 15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("data")
    parser.add_argument("--accept", type=float, default=0.95, help="share of in-set queries to accept")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--write", action="store_true", help="store the threshold in the bundle")
    args = parser.parse_args()
    model = load(args.bundle)
    settings = split_settings(model.manifest)
    protocol = (model.manifest.get("provenance") or {}).get("protocol", "auto")
    splits = load_splits(args.data, protocol, settings["split_seed"], settings["val_classes"], False,
                         model.preprocess, ways=settings["split_ways"])  # Omniglot's validation is background
    sampler = TaskSampler(splits.val, WAYS, SHOTS, QUERY, 12345, where="validation classes")
    scores, right = [], []
    for i in range(args.tasks):
        task = sampler.task(i)
        adapted = model.adapt_arrays(to_float(task.support_x, model.preprocess), task.support_y,
                                     [str(c) for c in range(WAYS)], quiet=True)
        probabilities, task_scores = adapted.scores(to_float(task.query_x, model.preprocess))
        scores.append(task_scores)
        right.append(probabilities.argmax(1) == task.query_y)
    scores, right = np.concatenate(scores), np.concatenate(right)
    threshold = float(np.quantile(scores, 1 - args.accept))
    calibration = {"threshold": round(threshold, 4), "accepts": args.accept,
                   "on": f"{args.tasks} {WAYS}-way {SHOTS}-shot tasks of the validation classes, {QUERY} queries "
                         f"per class (scripts/calibrate_unknown.py)"}
    print(json.dumps({**calibration, "in_set_accepted_at_default": round(float((scores >= -0.5).mean()), 4),
                      "accuracy": round(float(right.mean()), 4)}))
    if args.write:
        bundle = read_bundle(args.bundle)
        bundle.manifest["unknown_calibration"] = calibration
        save_bundle(args.bundle, bundle)
        print(f"wrote {args.bundle}")


if __name__ == "__main__":
    main()
