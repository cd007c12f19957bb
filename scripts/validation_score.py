"""A run's best checkpoint on the validation tasks of another task shape (the README's ablation rows I, J):

    python scripts/validation_score.py RUN [RUN ...] [--ways 20] [--shots 1] [--query 5] [--tasks 300] [--data PATH]
                                       [--steps N] [--lr LR]

The tasks are the ones the trainer itself validates on for a run of that shape (its validation
sampler: the run's seed + 1), so runs trained on different task shapes compare on the same tasks.
--data reads the validation classes from another copy of the run's dataset (the same class names,
so the same split: e.g. a run trained on a GPU machine, scored here on this machine's copy).
--steps: SGD steps instead of the run's own (0: the head alone, e.g. the prototypes of a pre-trained body).
--lr: inner learning rate instead of the run's own (choosing a device recipe on validation).
Validation classes only: the test classes are never touched.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from fastadapt.meta_train.denormals import flushing_denormals
from fastadapt.meta_train.evaluate import evaluate_classification, load_meta_params
from fastadapt.meta_train.run_setup import make_samplers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--ways", type=int, default=20)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--query", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--data", help="the dataset, if not where the run was trained")
    parser.add_argument("--steps", type=int, help="SGD steps (default: the run's)")
    parser.add_argument("--lr", type=float, help="inner learning rate (default: the run's)")
    args = parser.parse_args()
    if args.lr is not None and not 0 < args.lr < float("inf"):
        parser.error(f"--lr {args.lr}: give a positive, finite inner learning rate (e.g. 0.1)")
    if args.steps is not None and args.steps < 0:
        parser.error(f"--steps {args.steps}: give 0 or more SGD steps")
    cpu = torch.device("cpu")
    for run in args.runs:
        config, spec, recipe, model, params, progress = load_meta_params(run, "best", cpu)
        shape = dict(ways=args.ways, shots=args.shots, query=args.query)
        samplers = make_samplers(dataclasses.replace(config, **shape, **({"data": args.data} if args.data else {})))
        with flushing_denormals():
            r = evaluate_classification(model, params, recipe, samplers.val, samplers.preprocess, cpu, args.tasks,
                                        config.test_steps if args.steps is None else args.steps, lr=args.lr,
                                        norm=spec.norm)
        print(f"{run} (iteration {progress.get('iteration')}): {args.ways}-way {args.shots}-shot"
              f"{'' if args.steps is None else f', {args.steps} steps'}{'' if args.lr is None else f', lr {args.lr}'}"
              f" validation "
              f"{r['accuracy_pct']:.2f} ± {r['ci95_pct']:.2f}")


if __name__ == "__main__":
    main()
