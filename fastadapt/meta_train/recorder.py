"""What a training run writes into its folder: metrics rows, the last and best checkpoints, curves.png and
summary.json (the layout is described in run.py). Under torchrun only rank 0 records; the other ranks'
recorder writes nothing."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from ..errors import FastadaptError, warn
from .plotting import plot_curves
from .run import TrainConfig, optimizer_state_to_numpy, save_checkpoint, write_json


class Diverged(FastadaptError):
    pass


class RunRecorder:
    """The bookkeeping of one run: ``best`` validation score so far, the meta-training clock (over all
    resumed parts: ``elapsed_before`` is what the checkpoint resumed from had run) and the files."""

    def __init__(self, rundir: str, c: TrainConfig, best, elapsed_before: float, writes: bool, log):
        self.rundir, self.best, self.elapsed_before, self.log = rundir, best, elapsed_before, log
        self.last_path, self.best_path = os.path.join(rundir, "last.npz"), os.path.join(rundir, "best.npz")
        self.regression, self.ways = c.regression, c.ways
        self.key = "val_mse" if c.regression else "val_accuracy"
        self.chance = None if c.regression else 100 / c.ways  # accuracy % of guessing
        self.validations, self.at_chance = 0, 0  # validations recorded; how many of the latest sat at chance
        self.plots = True  # until drawing curves.png fails once
        self.metrics = open(os.path.join(rundir, "metrics.jsonl"), "a") if writes else None
        self.t0 = time.time()

    def elapsed(self) -> float:
        """Wall seconds of meta-training so far, over all resumed parts (pre-training not included)."""
        return self.elapsed_before + time.time() - self.t0

    def last_good(self) -> str:
        """Where the run can continue from, for the message of an error that stops it."""
        if os.path.exists(self.last_path):
            return f"the last good checkpoint is {self.last_path} (--resume continues from it)"
        pretrained = os.path.join(self.rundir, "pretrain.npz")
        if os.path.exists(pretrained):  # the folder holds a run now (it is not reused), but its body is worth keeping
            return (f"no meta-training checkpoint was saved, only the pre-trained body {pretrained}: to start from it, "
                    f"train into a new --out with --init-from {pretrained} --pretrain-epochs 0")
        return f"no checkpoint was saved, so {self.rundir} can be reused as --out"

    def training_row(self, iteration: int, loss: float, acc: float, tasks_per_s: float, world_size: int) -> str:
        """Log one meta-update's query loss (and accuracy); returns the progress bar's status text."""
        row = {"iteration": iteration, "loss": round(loss, 5), "tasks_per_s": round(tasks_per_s, 2),
               "world_size": world_size}
        if not self.regression:
            row["accuracy"] = round(100 * acc, 2)
        self._write(row)
        return (f"loss {loss:.3f}" + ("" if self.regression else f" acc {100 * acc:5.1f}%")
                + f" {tasks_per_s:.1f} tasks/s")

    def checkpoint(self, iteration: int, params: dict, optimizer) -> None:
        """last.npz (parameters, optimiser state, progress); non-finite parameters stop the run instead."""
        self.metrics.flush()  # the metrics up to the checkpoint survive a kill with it
        arrays = _snapshot(params)
        if not all(np.isfinite(a).all() for a in arrays.values()):
            raise Diverged(f"parameters became non-finite at iteration {iteration}; {self.last_good()}")
        save_checkpoint(self.last_path, arrays, optimizer_state_to_numpy(optimizer),
                        {"iteration": iteration, "best": self.best, "elapsed_seconds": round(self.elapsed(), 1)})

    def validation(self, vrow: dict, params: dict, optimizer, what: str) -> None:
        """Record a validation: its metrics row, best.npz when it is the best so far, the log line (``what``
        introduces it), last.npz and curves.png; warn when accuracy keeps sitting at chance."""
        iteration = vrow["iteration"]
        self._write(vrow)
        if self.best is None or (vrow[self.key] < self.best if self.regression else vrow[self.key] > self.best):
            self.best = vrow[self.key]
            save_checkpoint(self.best_path, _snapshot(params), None, {"iteration": iteration, "best": self.best, **vrow})
        self.log(f"{what}, validation {self.key} {vrow[self.key]} ± {vrow['val_ci95']} (best {self.best})")
        self.checkpoint(iteration, params, optimizer)
        self._plot()
        self._check_chance(vrow)

    def _plot(self) -> None:
        """curves.png: a by-product, so a failure is one warning and the run goes on without curves."""
        if not self.plots:
            return
        try:
            plot_curves(self.rundir, self.chance)
        except Exception as exc:  # matplotlib can raise anything on odd data or fonts
            self.plots = False
            warn(f"{self.rundir}/curves.png: not drawn ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                 f"the run goes on without curves")

    def _check_chance(self, vrow: dict) -> None:
        """One warning when validation accuracy is within its 95% CI of chance at two consecutive
        validations after the first (the first is of a model that has barely trained)."""
        if self.chance is None:
            return
        self.validations += 1
        at_chance = self.validations > 1 and abs(vrow["val_accuracy"] - self.chance) <= vrow["val_ci95"]
        self.at_chance = self.at_chance + 1 if at_chance else 0
        if self.at_chance == 2:
            warn(f"validation accuracy is at chance ({self.chance:.3g}% for {self.ways}-way tasks) at two validations "
                 f"in a row, up to iteration {vrow['iteration']}: the model is not learning. What usually helps: more "
                 f"classes, {{head_init}} prototype, {{algorithm}} fomaml, a lower {{inner_lr}}",
                 "head_init", "algorithm", "inner_lr")

    def summary(self, summary: dict) -> None:
        write_json(os.path.join(self.rundir, "summary.json"), summary)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()

    def _write(self, row: dict) -> None:
        self.metrics.write(json.dumps(row) + "\n")


def _snapshot(params: dict) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in params.items()}
