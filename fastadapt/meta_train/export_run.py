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
from ..manifest import MAX_MANIFEST_BYTES, valid_evaluation
from .evaluate import load_meta_params
from .bundle_export import export_bundle


# summary.json and evaluations.jsonl hold a few KB; the whole manifest may take at most this much
MAX_RECORD_BYTES = MAX_MANIFEST_BYTES


def _skip(path: str, reason: str, skipped: list) -> None:
    """Provenance is optional: a damaged record is left out with a warning, and the bundle notes it."""
    warn(f"{path}: {reason}; left out of the bundle's provenance (fix or delete the file to keep it)")
    skipped.append(f"{path}: {reason}")


def _read_record(path: str, skipped: list) -> str | None:
    """The text of an optional provenance file; None when it is missing, or (skipped) when it is not a
    regular file, too large or unreadable."""
    if not os.path.lexists(path):
        return None
    try:
        if not os.path.isfile(path):  # a folder, or a FIFO that would block the read
            reason = "not a regular file"
        elif os.path.getsize(path) > MAX_RECORD_BYTES:
            reason = f"larger than {MAX_RECORD_BYTES:,} bytes"
        else:
            with open(path, "rb") as f:
                return f.read(MAX_RECORD_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = f"unreadable ({getattr(exc, 'strerror', None) or exc.__class__.__name__})"
    _skip(path, reason, skipped)
    return None


def _json_object(text: str) -> dict | None:
    """A JSON object, or None for anything else: damaged text, another type, NaN/Infinity (which a
    manifest refuses)."""
    def refuse(constant):
        raise ValueError(constant)

    try:
        value = json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def read_evaluations(rundir: str, skipped: list | None = None) -> list:
    """The rows of RUNDIR/evaluations.jsonl; damaged lines (e.g. one cut by a kill) are left out with a
    warning and noted in ``skipped``."""
    skipped = [] if skipped is None else skipped
    path = os.path.join(rundir, "evaluations.jsonl")
    rows, bad = [], []
    for number, line in enumerate((_read_record(path, skipped) or "").splitlines(), 1):
        if not line.strip():
            continue
        row = _json_object(line)
        if row is None or not valid_evaluation(row):
            bad.append(number)
        else:
            rows.append(row)
    if bad:
        _skip(path, f"{len(bad)} damaged line(s), first: line {bad[0]} (not a JSON object, or an accuracy that "
                    f"is not a number)", skipped)
    return rows


def test_classes(rundir: str, skipped: list) -> list | None:
    """The run's test classes (split.json), for the bundle's provenance; None for a run without the record."""
    from .run import read_split

    try:
        split = read_split(rundir)
    except FastadaptError as exc:
        _skip(os.path.join(rundir, "split.json"), str(exc).split("; ", 1)[0].split(": ", 1)[-1], skipped)
        return None
    return None if split is None else sorted(map(str, split["test"]))


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


def training_stages(rundir: str, skipped: list | None = None) -> list:
    """How the parameters came to be: this run and, through --init-from, the runs it started from.
    A damaged summary.json, or an --init-from run's damaged config.json, is left out with a warning and noted
    in ``skipped``."""
    from .run import config_path, read_config

    skipped = [] if skipped is None else skipped
    stages, seen = [], set()
    while rundir and os.path.isdir(rundir) and os.path.realpath(rundir) not in seen:
        seen.add(os.path.realpath(rundir))
        try:
            config = read_config(rundir)
        except FastadaptError as exc:
            if not stages:  # the exported run's own config: its checkpoint cannot be read without it
                raise
            # an --init-from source's: that stage (and the runs before it, which it names) are left out
            _skip(config_path(rundir), f"unreadable run config ({str(exc)[:200]})", skipped)
            break
        stage = {"command": " ".join(config.command), "algorithm": config.algorithm,
                 "pretrain_epochs": config.pretrain_epochs, "iterations": config.iterations}
        summary = os.path.join(rundir, "summary.json")
        text = _read_record(summary, skipped)
        saved = None if text is None else _json_object(text)
        if saved is not None:
            stage.update({k: v for k, v in saved.items() if k != "rundir"})
        elif text is not None:
            _skip(summary, "damaged (not a JSON object)", skipped)
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
    skipped = []  # damaged optional records: the export goes on, and the bundle says what it lacks
    provenance["stages"] = training_stages(rundir, skipped)
    test = test_classes(rundir, skipped)
    if test is not None:  # evaluate of the bundle on its training data checks the data still splits so
        provenance["test_classes"] = test
    evaluations = read_evaluations(rundir, skipped)
    if skipped:
        provenance["skipped"] = skipped
    say("loading a task of the run's unseen classes to verify on")
    task = verification_task(config)
    return export_bundle(out, model, spec, recipe, params, preprocess_of(config), provenance,
                         evaluations, task=task, say=say)
