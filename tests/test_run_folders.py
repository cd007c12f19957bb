"""Run folders: one trainer at a time, damaged checkpoints and configs, leftovers, --resume limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastadapt.errors import FastadaptError
from fastadapt.meta_train.run import RunLock, TrainConfig, load_checkpoint
from fastadapt.meta_train.trainer import Diverged, train

from conftest import copy_of_run, finished_run, rewrite_manifest, run_files as files
from sample_data import REPO
from test_outputs import one_error, run_cli

# width 16: the architecture of conftest's bundles, so exporting this run reuses their traced graphs
TINY = dict(data="synthetic", algorithm="fomaml", width=16, meta_batch=2, query=2, val_tasks=4, val_every=3,
            inner_steps=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return finished_run(tmp_path_factory, **TINY)


@pytest.fixture
def run(trained, tmp_path, one_thread):
    return copy_of_run(trained, tmp_path)


def resume(run, iterations=3):
    return train(TrainConfig(iterations=iterations, **TINY), str(run), resume=True, quiet=True, given={"iterations"})


# ----------------------------------------------------------------------------- one writer

def hold_lock(folder) -> subprocess.Popen:
    """Another process holding the run folder's lock, as a running trainer does."""
    code = ("import sys, time; from fastadapt.meta_train.run import RunLock; lock = RunLock(sys.argv[1]); "
            "lock.acquire(); print('locked', flush=True); time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_trainer_fails_naming_the_first_and_the_lock_dies_with_it(run, tmp_path):
    before = files(run)
    holder = hold_lock(run)
    try:
        with pytest.raises(FastadaptError, match=f"another trainer is writing this run folder \\(pid {holder.pid} "):
            resume(run)
        assert files(run) == before
        fresh = tmp_path / "dup"
        second = hold_lock(fresh)  # the first of two trainers started on a new --out at once
        try:
            with pytest.raises(FastadaptError, match=f"pid {second.pid}"):
                train(TrainConfig(iterations=1, **TINY), str(fresh), quiet=True)
            assert os.listdir(fresh) == ["train.lock"]
        finally:
            second.kill()
            second.wait()
    finally:
        holder.kill()  # kill -9: the kernel drops the flock with the process
        holder.wait()
    lock = RunLock(str(run))
    lock.acquire()
    lock.release()


def test_the_cli_reports_the_other_trainer_in_one_line(run, capsys):
    holder = hold_lock(run)
    try:
        code, out, err = run_cli(capsys, "train", "--out", run, "--resume", "--iterations", "3", "--quiet")
    finally:
        holder.kill()
        holder.wait()
    one_error(code, out, err, f"--out {run}", f"pid {holder.pid}")


# ----------------------------------------------------------------------------- damaged files

def flip(path, where):
    data = bytearray(path.read_bytes())
    data[where(len(data))] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGES = {
    "flipped-data": lambda p: flip(p, lambda n: n // 2),
    "flipped-directory": lambda p: flip(p, lambda n: n - 30),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "npy-not-npz": lambda p: np.save(open(p, "wb"), np.zeros(3)),
    "pickled-object": lambda p: np.savez(open(p, "wb"), meta=np.array([{"x": 1}], dtype=object)),
    "meta-not-json": lambda p: np.savez(open(p, "wb"), meta=np.array("{nope")),
    "iteration-not-int": lambda p: np.savez(open(p, "wb"), meta=np.array(json.dumps(
        {"progress": {"iteration": "25"}, "param_names": []}))),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_last_checkpoint_is_one_line_with_the_fix_on_resume(run, damage):
    DAMAGES[damage](run / "last.npz")
    before = files(run)
    with pytest.raises(FastadaptError) as info:
        resume(run)
    message = str(info.value)
    assert message.startswith(f"{run / 'last.npz'}: damaged checkpoint") and "\n" not in message
    assert "copy" in message and "best.npz" in message
    assert files(run) == before  # nothing rewritten


def test_a_wrong_shape_checkpoint_is_refused_on_resume(run):
    saved = load_checkpoint(str(run / "last.npz"))
    from fastadapt.meta_train.run import save_checkpoint

    params = {k: np.zeros((1,), np.float32) for k in saved.params}
    save_checkpoint(str(run / "last.npz"), params, None, saved.progress)
    with pytest.raises(FastadaptError, match="last.npz: parameter .* is \\(1,\\) there"):
        resume(run)


def test_a_wrong_shape_best_checkpoint_is_one_line_in_export_and_evaluate(run, tmp_path, capsys):
    from fastadapt.meta_train.run import save_checkpoint

    saved = load_checkpoint(str(run / "best.npz"))
    save_checkpoint(str(run / "best.npz"), {k: np.zeros((1,), np.float32) for k in saved.params}, None, saved.progress)
    code, out, err = run_cli(capsys, "export", run, "--out", tmp_path / "m.fadapt")
    one_error(code, out, err, "best.npz: parameter", "another run")
    assert not (tmp_path / "m.fadapt").exists()
    code, out, err = run_cli(capsys, "evaluate", run, "--tasks", "2")
    one_error(code, out, err, "best.npz: parameter", "another run")


def test_cli_empty_checkpoint_is_an_error_not_aborted(run, tmp_path, capsys):
    (run / "last.npz").write_bytes(b"")
    code, out, err = run_cli(capsys, "train", "--out", run, "--resume", "--iterations", "3", "--quiet")
    one_error(code, out, err, "last.npz: damaged checkpoint")
    assert "Aborted" not in err
    DAMAGES["truncated"](run / "best.npz")
    code, out, err = run_cli(capsys, "export", run, "--out", tmp_path / "m.fadapt")
    one_error(code, out, err, "best.npz: damaged checkpoint")
    assert not (tmp_path / "m.fadapt").exists()
    code, out, err = run_cli(capsys, "evaluate", run, "--tasks", "2")
    one_error(code, out, err, "best.npz: damaged checkpoint")


@pytest.mark.parametrize("config", ["[1, 2]", "null", "{\"ways\": \"5\"}", "{\"width\": 1e12}", "\xff\xfe", "{"])
def test_a_damaged_config_is_one_line(run, tmp_path, capsys, config):
    (run / "config.json").write_bytes(config.encode("latin-1"))
    with pytest.raises(FastadaptError, match="config.json: damaged run config .*new --out"):
        resume(run)
    code, out, err = run_cli(capsys, "export", run, "--out", tmp_path / "m.fadapt")
    one_error(code, out, err, "config.json: damaged run config")


# ----------------------------------------------------------------------------- leftovers and resume limits

def test_resume_refuses_fewer_iterations_than_the_run_has_done(run):
    before = files(run)
    with pytest.raises(FastadaptError, match="--iterations 1: the run .* already at iteration 2; .*give 2 or more"):
        resume(run, iterations=1)
    assert files(run) == before
    assert json.loads((run / "summary.json").read_text())["iterations"] == 2


def test_temp_files_of_a_killed_write_are_removed_on_resume(run):
    for name in (".last.npz.k3j2.tmp", "config.json.x.tmp", "curves.tmp.png"):
        (run / name).write_bytes(b"half")
    summary = resume(run, iterations=3)
    assert summary["iterations"] == 3
    assert not [n for n in os.listdir(run) if n.endswith(".tmp") or n == "curves.tmp.png"]


def test_a_diverged_run_without_checkpoint_says_so_and_its_folder_is_reused(tmp_path, monkeypatch, one_thread):
    import fastadapt.meta_train.trainer as trainer

    real = trainer.meta_gradient

    def nan_loss(*args, **kwargs):
        grads, loss, acc = real(*args, **kwargs)
        return grads, float("nan"), acc

    out = tmp_path / "diverged"
    monkeypatch.setattr(trainer, "meta_gradient", nan_loss)
    with pytest.raises(Diverged) as info:
        train(TrainConfig(iterations=5, **TINY), str(out), quiet=True)
    assert "no checkpoint was saved" in str(info.value) and "last.npz" not in str(info.value)
    assert (out / "config.json").exists() and not (out / "last.npz").exists()
    monkeypatch.undo()
    summary = train(TrainConfig(iterations=1, **TINY), str(out), quiet=True)  # no --resume needed
    assert summary["iterations"] == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "loss" in r] == [1]  # the diverged run's rows are gone


def test_a_non_finite_gradient_with_a_finite_loss_stops_the_run(tmp_path, monkeypatch, one_thread):
    """The one fused check of all gradients finds an inf in a single element of one tensor."""
    import fastadapt.meta_train.trainer as trainer

    real = trainer.meta_gradient

    def inf_gradient(*args, **kwargs):
        grads, loss, acc = real(*args, **kwargs)
        last = list(grads)[-1]
        grads[last] = grads[last].clone().reshape(-1).index_fill(0, torch.tensor([0]), float("inf")).view_as(grads[last])
        return grads, loss, acc

    monkeypatch.setattr(trainer, "meta_gradient", inf_gradient)
    with pytest.raises(Diverged, match="diverged at iteration 1"):
        train(TrainConfig(iterations=2, **TINY), str(tmp_path / "run"), quiet=True)


def test_a_run_with_checkpoints_is_never_reused(run):
    with pytest.raises(FastadaptError, match="already holds a run"):
        train(TrainConfig(iterations=1, **TINY), str(run), quiet=True)


def test_write_errors_during_training_are_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "metrics.jsonl").mkdir(parents=True)  # the trainer cannot open its log
    with pytest.raises(FastadaptError) as info:
        train(TrainConfig(iterations=1, **TINY), str(out), quiet=True)
    assert "metrics.jsonl" in str(info.value) and "directory" in str(info.value) and "\n" not in str(info.value)
    long_out = tmp_path / ("r" * 300)
    code, stdout, err = run_cli(capsys, "train", "--out", long_out, "--iterations", "1", "--width", "8",
                                "--meta-batch", "2", "--query", "2", "--val-tasks", "4", "--quiet")
    one_error(code, stdout, err, "File name too long")


@pytest.mark.slow  # exports the run (ONNX)
def test_export_sign_writes_a_bundle_that_a_device_requiring_the_key_accepts(run, tmp_path, capsys):
    import fastadapt
    from fastadapt.signing import write_private_key

    public = write_private_key(str(tmp_path / "signing.key")).hex()
    code, out, err = run_cli(capsys, "export", run, "--out", tmp_path / "m.fadapt", "--sign", tmp_path / "signing.key")
    assert code == 0, err
    assert f"with key {public}" in out
    assert fastadapt.load(str(tmp_path / "m.fadapt"), trusted_keys=[public]).kind == "meta"
    code, out, err = run_cli(capsys, "export", run, "--out", tmp_path / "n.fadapt", "--sign", tmp_path / "missing.key")
    one_error(code, out, err, "missing.key")
    assert not (tmp_path / "n.fadapt").exists()
    (tmp_path / "signing.key.pub").write_text(public + "\n")
    code, out, err = run_cli(capsys, "export", run, "--out", tmp_path / "signing.key.pub", "--sign",
                             tmp_path / "signing.key")
    one_error(code, out, err, "--out")  # never over the key pair
    assert (tmp_path / "signing.key.pub").read_text() == public + "\n"


def test_head_scale_goes_from_the_flag_to_the_bundle_and_the_device(tmp_path, capsys, glyphs):
    """train --head-scale is the recipe the run validates with, the bundle carries and the runtime adapts with."""
    import fastadapt

    run, bundle = tmp_path / "run", tmp_path / "scaled.fadapt"
    args = ["--data", "synthetic", "--algorithm", "fomaml", "--width", "16", "--meta-batch", "2", "--query", "2",
            "--val-tasks", "4", "--iterations", "1", "--inner-steps", "2", "--head-init", "prototype"]
    code, _, err = run_cli(capsys, "train", *args, "--head-scale", "0.25", "--quiet", "--out", run)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["head_scale"] == 0.25
    code, _, err = run_cli(capsys, "export", run, "--out", bundle)
    assert code == 0, err
    model = fastadapt.load(str(bundle))
    assert model.manifest["inner_loop"]["head_scale"] == 0.25 and model.manifest["format_version"] == 2
    unscaled = tmp_path / "unscaled.fadapt"
    rewrite_manifest(str(bundle), str(unscaled), inner_loop={"head_scale": 1.0})
    scaled_head = model.adapt(glyphs["shots"], steps=0).params["head.weight"]
    plain_head = fastadapt.load(str(unscaled)).adapt(glyphs["shots"], steps=0).params["head.weight"]
    assert np.abs(plain_head).max() > 0
    np.testing.assert_allclose(scaled_head, 0.25 * plain_head, rtol=1e-6, atol=0)


@pytest.mark.parametrize("data, key, scores, best_at", [
    ("synthetic", "val_accuracy", (50.0, 60.0, 40.0), 2),  # classification: the highest accuracy
    ("sinusoid", "val_mse", (0.5, 0.2, 0.9), 2),  # regression: the lowest MSE
])
def test_best_checkpoint_is_the_best_validation_not_the_last_or_the_worst(tmp_path, data, key, scores, best_at):
    """Guards best.npz (export's and evaluate's default checkpoint) holding the worst validated model."""
    from fastadapt.meta_train.recorder import RunRecorder

    config = TrainConfig(data=data, ways=1) if data == "sinusoid" else TrainConfig(data=data)
    recorder = RunRecorder(str(tmp_path), config, None, 0.0, True, lambda message: None)
    recorder.plots = False  # curves.png is not what this test is about
    params = {"w": torch.zeros(2, requires_grad=True)}
    optimizer = torch.optim.Adam(list(params.values()))
    for iteration, score in enumerate(scores, 1):
        with torch.no_grad():
            params["w"].fill_(iteration)  # the parameters say which iteration they are from
        recorder.validation({"iteration": iteration, key: score, "val_ci95": 0.01, "elapsed_s": 0.0}, params,
                            optimizer, "x")
    recorder.close()
    best = load_checkpoint(str(tmp_path / "best.npz"))
    assert recorder.best == scores[best_at - 1] and best.progress["best"] == scores[best_at - 1]
    assert best.progress["iteration"] == best_at and (best.params["w"] == best_at).all()
    assert load_checkpoint(str(tmp_path / "last.npz")).progress["iteration"] == len(scores)
