"""Damaged run folders (an edited or corrupted checkpoint, metrics log or config): one line naming the file
and the fix on --resume, export and evaluate, never a traceback; damaged metrics rows are left out."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from fastadapt.errors import FastadaptError
from fastadapt.meta_train.run import TrainConfig, load_checkpoint, load_optimizer_state
from fastadapt.meta_train.trainer import train

from conftest import copy_of_run, finished_run, run_files as files
from test_outputs import one_error
from test_cli_runtime import run_cli

TINY = dict(data="synthetic", algorithm="fomaml", width=4, meta_batch=2, query=2, val_tasks=2, val_every=3,
            inner_steps=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return finished_run(tmp_path_factory, **TINY)


@pytest.fixture
def run(trained, tmp_path, one_thread):
    return copy_of_run(trained, tmp_path)


def resume(run, iterations=3):
    return train(TrainConfig(iterations=iterations, **TINY), str(run), resume=True, quiet=True, given={"iterations"})


def arrays_of(path) -> dict:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def rewrite(path, arrays: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def edit_meta(path, change) -> None:
    arrays = arrays_of(path)
    meta = json.loads(str(arrays["meta"]))
    change(meta)
    rewrite(path, {**arrays, "meta": np.array(json.dumps(meta))})


def set_array(path, key, value) -> None:
    rewrite(path, {**arrays_of(path), key: value})


def huge_shape(path, key="param/layers.0.weight") -> None:
    """``key``'s .npy header declares 10^6 x 10^6 float32 (4 TB) over 64 bytes of data."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, value in arrays_of(path).items():
            npy = io.BytesIO()
            if name == key:
                np.lib.format.write_array_header_1_0(npy, {"descr": "<f4", "fortran_order": False,
                                                           "shape": (10**6, 10**6)})
                npy.write(b"\0" * 64)
            else:
                np.lib.format.write_array(npy, value)
            archive.writestr(name + ".npy", npy.getvalue())
    path.write_bytes(buffer.getvalue())


def group(change):
    return lambda meta: change(meta["optimizer_groups"][0])


# ----------------------------------------------------------------------------- 1, 2: checkpoints

LAST_DAMAGES = {
    "best-not-a-number": lambda p: edit_meta(p, lambda m: m["progress"].update(best="abc")),
    "elapsed-not-a-number": lambda p: edit_meta(p, lambda m: m["progress"].update(elapsed_seconds="abc")),
    "iteration-above-the-limit": lambda p: edit_meta(p, lambda m: m["progress"].update(iteration=10**30)),
    "group-of-two-params": lambda p: edit_meta(p, group(lambda g: g.update(params=[0, 1]))),
    "group-lr-a-string": lambda p: edit_meta(p, group(lambda g: g.update(lr="fast"))),
    "group-flag-a-number": lambda p: edit_meta(p, group(lambda g: g.update(amsgrad=1))),
    "groups-not-a-list": lambda p: edit_meta(p, lambda m: m.update(optimizer_groups={"a": 1})),
    "state-wrong-shape": lambda p: set_array(p, "opt/0/exp_avg", np.zeros(3, np.float32)),
    "state-strings": lambda p: set_array(p, "opt/0/exp_avg", np.array(["a", "b"])),
    "state-not-finite": lambda p: set_array(p, "opt/0/exp_avg", np.full((4, 1, 3, 3), np.inf, np.float32)),
    "state-huge-shape": lambda p: huge_shape(p, "opt/0/exp_avg"),
    "param-huge-shape": lambda p: huge_shape(p),
}


def load_for_resume(path) -> None:
    """What --resume does with last.npz: load it, then its optimiser state into the run's Adam."""
    import torch

    ckpt = load_checkpoint(str(path), "the fix")
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.from_numpy(v)) for v in ckpt.params.values()])
    load_optimizer_state(optimizer, ckpt.optimizer_state, "cpu", str(path), "the fix")


@pytest.mark.parametrize("damage", sorted(LAST_DAMAGES))
def test_a_damaged_last_checkpoint_is_refused_when_loaded(run, damage):
    LAST_DAMAGES[damage](run / "last.npz")
    with pytest.raises(FastadaptError) as info:
        load_for_resume(run / "last.npz")
    message = str(info.value)
    assert message.startswith(f"{run / 'last.npz'}: damaged checkpoint (") and message.endswith("; the fix")
    assert "\n" not in message


def test_the_loaded_checkpoint_of_a_sound_run_resumes(run):
    load_for_resume(run / "last.npz")  # the checks refuse nothing a trainer wrote


@pytest.mark.parametrize("damage", ["best-not-a-number", "state-wrong-shape", "iteration-above-the-limit"])
def test_a_damaged_last_checkpoint_is_one_line_on_resume(run, damage):
    LAST_DAMAGES[damage](run / "last.npz")
    before = files(run)
    with pytest.raises(FastadaptError) as info:
        resume(run)
    message = str(info.value)
    assert message.startswith(f"{run / 'last.npz'}: damaged checkpoint") and "\n" not in message
    assert "best.npz" in message and "give" not in message
    assert files(run) == before  # nothing written


def test_a_huge_declared_shape_in_best_is_one_line_in_export_and_evaluate(run, tmp_path, capsys):
    huge_shape(run / "best.npz")
    code, out, err = run_cli(capsys, "export", run, "--out", tmp_path / "m.fadapt")
    one_error(code, out, err, "best.npz: damaged checkpoint", "(1000000, 1000000)")
    assert not (tmp_path / "m.fadapt").exists()
    code, out, err = run_cli(capsys, "evaluate", run, "--tasks", "2")
    one_error(code, out, err, "best.npz: damaged checkpoint")


# ----------------------------------------------------------------------------- 3: metrics.jsonl

DAMAGED_LINES = [b"[1, 2]", b'{"iteration": "x"}', b'\xff\xfe{"a": 1}', b'{"iteration": 0, "loss": "x"}', b"[" * 5000]


def test_damaged_metrics_rows_are_left_out_and_the_resume_runs(run, capsys):
    metrics = run / "metrics.jsonl"
    good = metrics.read_bytes()
    metrics.write_bytes(good + b"\n".join(DAMAGED_LINES) + b"\n")
    assert resume(run)["iterations"] == 3  # validates at 3: curves.png is drawn from the log
    warnings = [w for w in capsys.readouterr().err.splitlines() if w.startswith("warning:")]
    assert len(warnings) == 1 and f"metrics.jsonl: left out {len(DAMAGED_LINES)} damaged line" in warnings[0]
    rows = [json.loads(r) for r in metrics.read_bytes().splitlines()]
    assert metrics.read_bytes().startswith(good) and [r["iteration"] for r in rows if "loss" in r] == [1, 2, 3]
    assert (run / "curves.png").stat().st_size > 0


def test_plotting_leaves_out_rows_it_cannot_draw(tmp_path):
    from fastadapt.meta_train.plotting import plot_curves

    rows = [{"iteration": 1, "loss": 1.0, "accuracy": 20.0}, {"iteration": 2, "loss": 0.5},  # no accuracy
            {"iteration": 2, "val_ci95": 1.0}, {"iteration": 2, "val_accuracy": 30.0, "val_ci95": 1.0}]
    lines = [json.dumps(r).encode() for r in rows] + DAMAGED_LINES
    (tmp_path / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    plot_curves(str(tmp_path), chance=20.0)
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_a_metrics_folder_is_named_as_such(run, capsys):
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    with pytest.raises(FastadaptError, match="metrics.jsonl is a directory, not the run's metrics log; move it") as info:
        resume(run)
    assert "free space" not in str(info.value)
    code, out, err = run_cli(capsys, "train", "--out", run, "--resume", "--iterations", "3", "--quiet")
    one_error(code, out, err, "metrics.jsonl is a directory")


def test_a_failing_plot_is_a_warning_not_the_end_of_the_run(run, capsys, monkeypatch):
    from fastadapt.meta_train import recorder

    def broken(*args):
        raise RuntimeError("no fonts\nhere")

    monkeypatch.setattr(recorder, "plot_curves", broken)
    assert resume(run, iterations=6)["iterations"] == 6  # two validations: one warning
    warnings = [w for w in capsys.readouterr().err.splitlines() if w.startswith("warning:")]
    assert warnings == [f"warning: {run}/curves.png: not drawn (RuntimeError: no fonts here); "
                        f"the run goes on without curves"]


# ----------------------------------------------------------------------------- 4: config.json

@pytest.mark.parametrize("field, value", [("norm", "weird"), ("arch", "vgg"), ("algorithm", "sgd"),
                                          ("augment", "xyz"), ("head_init", "xyz"), ("protocol", "xyz"),
                                          ("device", "tpu")])
def test_a_damaged_config_choice_names_config_json(run, tmp_path, capsys, field, value):
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, field: value}))
    before = files(run)
    with pytest.raises(FastadaptError) as info:
        resume(run)
    message = str(info.value)
    assert message.startswith(f"{run / 'config.json'}: damaged run config ({field} ") and "--" + field not in message
    assert "fix that field" in message
    for command in (["export", run, "--out", tmp_path / "m.fadapt"], ["evaluate", run, "--tasks", "2"]):
        code, out, err = run_cli(capsys, *command)
        one_error(code, out, err, "config.json: damaged run config", f"{field} ")
    assert not (tmp_path / "m.fadapt").exists()
    assert files(run) == before


def test_a_cuda_run_config_still_reads_on_a_machine_without_cuda(run):
    """config.json is checked as a file, not against this machine: --device cuda is the run's, not damage."""
    from fastadapt.meta_train.run import read_config

    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "device": "cuda"}))
    assert read_config(str(run)).device == "cuda"
