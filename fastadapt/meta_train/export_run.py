"""``fastadapt export RUNDIR``: a run folder's checkpoint -> a verified .fadapt bundle with provenance."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform

import torch

from .. import __version__
from ..errors import FastadaptError, warn
from ..images import to_float
from .evaluate import load_meta_params
from .bundle_export import export_bundle


def read_evaluations(rundir: str) -> list:
    path = os.path.join(rundir, "evaluations.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def verification_task(config, ways: int = 5):
    """A real task of the run's unseen classes (preprocessed), or None when the data is not here."""
    from ..data.sampler import TaskSampler
    from ..evaluation import unseen_classes
    from .run_setup import preprocess_of

    preprocess = preprocess_of(config)
    try:
        test = unseen_classes(config.data, config.protocol, config.seed, config.val_classes, preprocess, config.ways)
        sampler = TaskSampler(test, min(ways, len(test)), config.shots, 3, 0, where="test classes")
    except FastadaptError as exc:
        warn(f"export verifies on a synthetic task: the run's data is not available here ({exc})")
        return None
    task = sampler.task(0)
    as_tensor = lambda a: torch.from_numpy(to_float(a, preprocess))  # noqa: E731
    return as_tensor(task.support_x), torch.from_numpy(task.support_y), as_tensor(task.query_x)


def training_stages(rundir: str) -> list:
    """How the parameters came to be: this run and, through --init-from, the runs it started from."""
    from .run import read_config

    stages, seen = [], set()
    while rundir and os.path.isdir(rundir) and os.path.realpath(rundir) not in seen:
        seen.add(os.path.realpath(rundir))
        config = read_config(rundir)
        stage = {"command": " ".join(config.command), "algorithm": config.algorithm,
                 "pretrain_epochs": config.pretrain_epochs, "iterations": config.iterations}
        summary = os.path.join(rundir, "summary.json")
        if os.path.exists(summary):
            with open(summary) as f:
                stage.update({k: v for k, v in json.load(f).items() if k != "rundir"})
        stages.insert(0, stage)
        rundir = config.init_from
    return stages


def export_run(rundir: str, out: str, checkpoint: str = "best", say=lambda stage: None) -> dict:
    """``say(stage)``: called as each stage starts (the CLI prints it on stderr)."""
    say(f"reading {checkpoint} checkpoint of {rundir}")
    config, spec, recipe, model, params, progress = load_meta_params(rundir, checkpoint, torch.device("cpu"))
    # the device runs the evaluation-time recipe (MAML's paper trains with 1 step and tests with 3)
    recipe = dataclasses.replace(recipe, steps=config.test_steps)
    if config.regression:
        raise FastadaptError(f"{rundir} is a sinusoid regression run; export supports image classification runs")
    from .run_setup import preprocess_of

    provenance = {
        "algorithm": config.algorithm,
        "data": config.data,
        "protocol": config.protocol,
        "command": " ".join(config.command),
        "config": config.to_dict(),
        "checkpoint": checkpoint,
        "iteration": progress.get("iteration"),
        "validation_accuracy_pct": progress.get("best"),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fastadapt": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    provenance["stages"] = training_stages(rundir)
    say("loading a task of the run's unseen classes to verify on")
    task = verification_task(config)
    return export_bundle(out, model, spec, recipe, params, preprocess_of(config), provenance,
                         read_evaluations(rundir), task=task, say=say)
