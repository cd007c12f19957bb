"""Server-side cases from a hostile review: a diverged adaptation scored as chance, a run's relative --data read
from another folder, symbolic links to class folders, a FIFO as --data, evaluate --record on a link or on a
bundle replaced meanwhile, a run folder named like a built-in model, an Omniglot folder of zips with
--protocol all, and evaluate's --tasks / --transductive messages."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import zipfile

import pytest

import fastadapt
from fastadapt.data import load_class_folders
from fastadapt.data.sources import load_splits
from fastadapt.errors import FastadaptError
from fastadapt.images import Preprocess
from fastadapt.meta_train import evaluate as torch_evaluate
from fastadapt.meta_train.run import TrainConfig
from fastadapt.meta_train.trainer import Diverged, train

from conftest import finished_run
from sample_data import REPO, write_glyph_folders
from test_cli_runtime import run_cli
from test_outputs import one_error

SPEC = Preprocess(size=28, channels=1, invert=True)
DEFAULT = REPO / "fastadapt" / "assets" / "default.fadapt"
PHOTOS = REPO / "fastadapt" / "assets" / "photos.fadapt"
TINY = dict(data="synthetic", algorithm="fomaml", width=4, meta_batch=2, query=2, val_tasks=2, inner_steps=1,
            device="cpu")
TRAIN_FLAGS = ["--width", "4", "--iterations", "2", "--meta-batch", "2", "--query", "2", "--val-tasks", "2",
               "--inner-steps", "1", "--algorithm", "fomaml", "--device", "cpu", "--quiet"]
EVAL_FLAGS = ["--tasks", "2", "--query", "2"]


@pytest.fixture(scope="module")
def prototype_run(tmp_path_factory):
    """A finished run whose prototype head overflows in 3 steps at --lr 1e6 (NaN query logits)."""
    return finished_run(tmp_path_factory, head_init="prototype", **TINY)


def never(*args, **kwargs):
    pytest.fail("evaluated although the flags should have been refused up front")


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """A command that waits on a FIFO fails the test instead of hanging it."""
    def hung(signum, frame):
        raise AssertionError(f"still running after {seconds} s: waiting on a FIFO?")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------- A. diverged adaptation

def test_evaluate_run_refuses_a_diverged_adaptation_and_records_nothing(prototype_run, tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    shutil.copytree(prototype_run, run)
    code, out, err = run_cli(capsys, "evaluate", run, "--lr", "1e6", "--steps", "3", *EVAL_FLAGS)
    one_error(code, out, err, "adaptation diverged", "lower --lr", "nothing was recorded")
    assert "20.00%" not in out  # not chance accuracy
    assert not (run / "evaluations.jsonl").exists()
    code, out, err = run_cli(capsys, "evaluate", run, *EVAL_FLAGS)  # the run's own rate still evaluates
    assert code == 0, err
    assert len((run / "evaluations.jsonl").read_text().splitlines()) == 1


def test_a_diverged_validation_stops_the_run_and_is_never_best(tmp_path, monkeypatch, capsys, one_thread):
    real = torch_evaluate.adapt_and_predict
    # the meta-steps stay finite; only adapting to validation tasks overflows (as a larger --eval-inner-steps can)
    monkeypatch.setattr(torch_evaluate, "adapt_and_predict", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(Diverged, match="validation diverged at iteration 1.*--inner-lr"):
        train(TrainConfig(iterations=2, val_every=1, **TINY), str(tmp_path / "api"), quiet=True)
    assert not (tmp_path / "api" / "best.npz").exists()
    rows = [json.loads(line) for line in (tmp_path / "api" / "metrics.jsonl").read_text().splitlines()]
    assert not [row for row in rows if "val_accuracy" in row]  # no 20% (chance) recorded as a score

    code, out, err = run_cli(capsys, "train", "--data", "synthetic", "--out", tmp_path / "cli", "--val-every", "1",
                             *TRAIN_FLAGS)
    one_error(code, out, err, "validation diverged", "lower --inner-lr", "can be reused as --out")


# ----------------------------------------------------------------------------- B. relative --data

def test_a_run_stores_its_data_path_absolute_so_other_folders_read_the_same_data(tmp_path, monkeypatch, capsys,
                                                                                one_thread):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    write_glyph_folders(work / "data", 8, 4)
    write_glyph_folders(elsewhere / "data", 3, 4, seed=5)  # another dataset under the same relative name
    monkeypatch.chdir(work)
    code, out, err = run_cli(capsys, "train", "--data", "data", "--ways", "2", "--out", "run", *TRAIN_FLAGS)
    assert code == 0, err
    config = json.loads((work / "run" / "config.json").read_text())
    assert config["data"] == str(work / "data")
    code, out, err = run_cli(capsys, "train", "--data", "data", "--out", "run", "--resume", "--iterations", "3",
                             "--quiet")  # the same relative --data from the same folder is the same data
    assert code == 0, err

    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli(capsys, "evaluate", work / "run", "--ways", "2", "--json", *EVAL_FLAGS)
    assert code == 0, err
    assert json.loads(out)["data"] == str(work / "data")
    code, out, err = run_cli(capsys, "train", "--out", work / "run", "--resume", "--iterations", "4", "--quiet")
    assert code == 0, err


def test_builtin_data_names_are_stored_as_they_are(tmp_path, one_thread):
    train(TrainConfig(iterations=1, **TINY), str(tmp_path / "run"), quiet=True)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == "synthetic"


# ----------------------------------------------------------------------------- C. symbolic links

def test_symlinked_class_folders_are_followed_and_each_folder_read_once(tmp_path, capsys):
    root = write_glyph_folders(tmp_path / "d", 3, 2)
    outside = write_glyph_folders(tmp_path / "outside", 2, 2, seed=3)
    os.symlink(outside / "class00", root / "linked")  # a class assembled from elsewhere: read
    os.symlink(root / "class01", root / "again")  # the same folder twice: skipped
    os.symlink("..", root / "class02" / "loop")  # an ancestor: skipped (it would loop)
    data = load_class_folders(str(root), SPEC)
    assert sorted(data.names) == ["class00", "class01", "class02", "linked"]
    assert data.num_images == 8
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "skipped 2 linked folder(s)" in warnings[0] and "again" in warnings[0]


# ----------------------------------------------------------------------------- D. FIFO as --data

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_as_data_is_refused_at_once_and_train_leaves_no_lock(tmp_path, capsys, one_thread):
    fifo = tmp_path / "data.zip"
    os.mkfifo(fifo)
    with no_hang():
        code, out, err = run_cli(capsys, "evaluate", "characters", "--data", fifo, *EVAL_FLAGS)
        one_error(code, out, err, "--data", "FIFO")
        code, out, err = run_cli(capsys, "train", "--data", fifo, "--out", tmp_path / "new", *TRAIN_FLAGS)
        one_error(code, out, err, "--data", "FIFO")
        assert not (tmp_path / "new").exists()
        (tmp_path / "empty").mkdir()
        code, out, err = run_cli(capsys, "train", "--data", fifo, "--out", tmp_path / "empty", *TRAIN_FLAGS)
        one_error(code, out, err, "--data", "FIFO")
        assert os.listdir(tmp_path / "empty") == []  # no train.lock
        omniglot = tmp_path / "omniglot"  # a FIFO inside the data: one of Omniglot's zips
        omniglot.mkdir()
        os.mkfifo(omniglot / "images_background.zip")
        os.mkfifo(omniglot / "images_evaluation.zip")
        with pytest.raises(FastadaptError, match="images_evaluation.zip: is a FIFO"):
            load_splits(str(omniglot), "lake", need_train=False)


# ----------------------------------------------------------------------------- E. evaluate --record

@pytest.fixture
def copy_of_default(tmp_path):
    path = tmp_path / "model.fadapt"
    shutil.copyfile(DEFAULT, path)
    return path


def test_evaluate_record_refuses_a_symlinked_bundle_before_evaluating(copy_of_default, tmp_path, capsys,
                                                                      monkeypatch):
    link = tmp_path / "link.fadapt"
    os.symlink(copy_of_default, link)
    monkeypatch.setattr("fastadapt.runtime.evaluate_bundle", never)  # refused before any evaluation
    code, out, err = run_cli(capsys, "evaluate", link, "--data", "synthetic", "--record", *EVAL_FLAGS)
    one_error(code, out, err, "--record", "symbolic link")
    assert copy_of_default.read_bytes() == DEFAULT.read_bytes()


def test_evaluate_record_records_nothing_onto_a_bundle_replaced_during_the_evaluation(copy_of_default, capsys,
                                                                                     monkeypatch):
    real = fastadapt.runtime.evaluate_bundle

    def then_replaced(path, *args, **kwargs):
        result = real(path, *args, **kwargs)
        shutil.copyfile(PHOTOS, str(path) + ".new")
        os.replace(str(path) + ".new", path)  # another model written over it, as 'fastadapt export' would
        return result

    monkeypatch.setattr("fastadapt.runtime.evaluate_bundle", then_replaced)
    code, out, err = run_cli(capsys, "evaluate", copy_of_default, "--data", "synthetic", "--record", *EVAL_FLAGS)
    one_error(code, out, err, "--record", "changed during the evaluation", "nothing was recorded")
    assert copy_of_default.read_bytes() == PHOTOS.read_bytes()  # the photos model, without the result


# ----------------------------------------------------------------------------- F. a run folder named like a built-in

def test_a_run_folder_named_like_a_built_in_model_is_evaluated(prototype_run, tmp_path, monkeypatch, capsys,
                                                              one_thread):
    shutil.copytree(prototype_run, tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "evaluate", "photos", "--json", *EVAL_FLAGS)
    assert code == 0, err
    assert json.loads(out)["evaluated_with"] == "torch"
    assert (tmp_path / "photos" / "evaluations.jsonl").exists()


# ----------------------------------------------------------------------------- G. Omniglot zips with --protocol all

def test_an_omniglot_folder_of_zips_with_protocol_all_names_the_zip_to_pass(tmp_path, capsys):
    omniglot = tmp_path / "omniglot"
    omniglot.mkdir()
    for part in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(omniglot / f"{part}.zip", "w") as archive:
            archive.writestr(f"{part}/Alphabet/character01/1.png", b"")
    code, out, err = run_cli(capsys, "evaluate", "characters", "--data", omniglot, "--protocol", "all", *EVAL_FLAGS)
    one_error(code, out, err, str(omniglot / "images_evaluation.zip"), "--protocol lake or vinyals")


def test_an_extracted_omniglot_folder_still_splits_by_class_folders(tmp_path):
    for part in ("images_background", "images_evaluation"):
        write_glyph_folders(tmp_path / "omniglot" / part, 2, 2, two_level=True)
    assert len(load_splits(str(tmp_path / "omniglot"), "all").test) == 4


# ----------------------------------------------------------------------------- H. evaluate's messages

def test_evaluate_tasks_range_names_the_true_minimum(capsys):
    code, out, err = run_cli(capsys, "evaluate", "characters", "--data", "synthetic", "--tasks", "0")
    one_error(code, out, err, "--tasks must be from 2 to")


def test_evaluate_refuses_transductive_for_a_bundle(capsys, monkeypatch):
    monkeypatch.setattr("fastadapt.runtime.evaluate_bundle", never)
    code, out, err = run_cli(capsys, "evaluate", "characters", "--data", "synthetic", "--transductive", *EVAL_FLAGS)
    one_error(code, out, err, "--transductive", "drop the flag")


def test_transductive_still_applies_to_run_folders(prototype_run, tmp_path, capsys, one_thread):
    shutil.copytree(prototype_run, tmp_path / "run")
    code, out, err = run_cli(capsys, "evaluate", tmp_path / "run", "--transductive", "--json", *EVAL_FLAGS)
    assert code == 0, err
    assert json.loads(out)["transductive"] is True


def test_evaluate_under_torchrun_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """torchrun would start N evaluations of the same tasks, each appending the same record."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, stdout, err = run_cli(capsys, "evaluate", str(tmp_path / "run"), "--tasks", "2")
    assert code != 0 and "without torchrun" in err and "Traceback" not in err


def test_init_from_is_stored_absolute_too(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    train(TrainConfig(iterations=1, **TINY), str(tmp_path / "base"), quiet=True)
    code, out, err = run_cli(capsys, "train", "--data", "synthetic", "--init-from", "base", "--out", "run", *TRAIN_FLAGS)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["init_from"] == str(tmp_path / "base")
    code, out, err = run_cli(capsys, "train", "--data", "synthetic", "--init-from", "base", "--out", "run", "--resume",
                             "--iterations", "3", "--quiet")  # the same relative --init-from is the same run
    assert code == 0, err
