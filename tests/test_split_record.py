"""A run records its class split (split.json). A data folder that gained or lost a class folder splits
differently, so `--resume` and `evaluate RUN` on it refuse instead of training or scoring on the wrong classes
(hostile review 7, finding 2)."""

from __future__ import annotations

import json
import shutil

import pytest

import fastadapt

from sample_data import write_glyph_folders
from test_cli_runtime import assert_user_error, run_cli

TINY = ["--width", "4", "--image-size", "16", "--ways", "3", "--shots", "1", "--query", "2", "--meta-batch", "2",
        "--val-tasks", "4", "--iterations", "2", "--quiet"]


@pytest.fixture
def run(tmp_path, capsys, one_thread):
    data = write_glyph_folders(tmp_path / "data", 15, 4)
    code, out, err = run_cli(capsys, "train", "--data", data, *TINY, "--out", tmp_path / "run")
    assert code == 0, err
    return data, tmp_path / "run"


def test_a_run_records_its_split(run):
    data, rundir = run
    split = json.loads((rundir / "split.json").read_text())
    names = sorted(p.name for p in data.iterdir())
    assert sorted(split["train"] + split["val"] + split["test"]) == names  # each class once, no rotated copies


def test_evaluate_refuses_when_the_data_gained_a_class(run, capsys):
    data, rundir = run
    args = ["evaluate", rundir, "--ways", "3", "--shots", "1", "--query", "2", "--tasks", "2"]
    assert run_cli(capsys, *args)[0] == 0
    shutil.copytree(data / "class00", data / "a_new_class")
    assert_user_error(*run_cli(capsys, *args), "its classes changed since")
    shutil.rmtree(data / "a_new_class")  # as it was: evaluates again
    assert run_cli(capsys, *args)[0] == 0


def test_resume_refuses_when_the_data_lost_a_class(run, capsys):
    data, rundir = run
    shutil.rmtree(data / "class07")
    code, out, err = run_cli(capsys, "train", "--out", rundir, "--resume", "--iterations", "3", "--quiet")
    assert_user_error(code, out, err, "removed: class07")


def test_a_run_without_a_split_record_still_evaluates_and_resumes(run, capsys):
    data, rundir = run
    (rundir / "split.json").unlink()  # a run from before the record
    assert run_cli(capsys, "evaluate", rundir, "--ways", "3", "--shots", "1", "--query", "2", "--tasks", "2")[0] == 0
    assert run_cli(capsys, "train", "--out", rundir, "--resume", "--iterations", "3", "--quiet")[0] == 0
    assert (rundir / "split.json").exists()  # recorded from now on


def test_a_bundle_carries_its_test_classes_and_its_evaluation_checks_them(run, capsys, tmp_path):
    data, rundir = run
    bundle = tmp_path / "m.fadapt"
    code, out, err = run_cli(capsys, "export", rundir, "--out", bundle)
    assert code == 0, err
    split = json.loads((rundir / "split.json").read_text())
    assert fastadapt.load(str(bundle)).manifest["provenance"]["test_classes"] == sorted(split["test"])
    args = ["evaluate", bundle, "--data", data, "--ways", "3", "--shots", "1", "--query", "2", "--tasks", "2"]
    assert run_cli(capsys, *args)[0] == 0
    shutil.rmtree(data / sorted(split["train"])[0])
    assert_user_error(*run_cli(capsys, *args), "its classes changed since m.fadapt was trained")


def test_validation_tasks_come_from_the_validation_classes():
    """Guards validation (best.npz, --stop-at, the chance warning) sampling the training classes while
    split.json still records the true split: every validation task's classes are recorded validation classes."""
    from fastadapt.meta_train.run import TrainConfig
    from fastadapt.meta_train.run_setup import make_samplers

    samplers = make_samplers(TrainConfig(data="synthetic"))
    val, train = set(samplers.split["val"]), set(samplers.split["train"])
    assert val and not val & train
    for i in range(5):
        names = {samplers.val.data.names[k] for k in samplers.val.task(i).classes}
        assert names <= val, names - val
        names = {samplers.train.data.names[k].split("@rot")[0] for k in samplers.train.task(i).classes}
        assert names <= train, names - train
