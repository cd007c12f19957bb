"""--resume and --init-from say what they do: advice that works, schedules that are not reshaped, learned
rates that start where the docs say, and sources that match the model being trained."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from fastadapt.meta_train.inner_loop import LEARNED_LRS
from fastadapt.meta_train.run import load_checkpoint

from test_outputs import one_error, run_cli

TINY = ["--data", "synthetic", "--width", "4", "--iterations", "2", "--meta-batch", "2", "--val-tasks", "5",
        "--ways", "3", "--shots", "1", "--query", "2", "--quiet"]


def train_ok(capsys, *args) -> str:
    code, out, err = run_cli(capsys, "train", *args)
    assert code == 0, err
    return out


def test_divergence_after_pretraining_says_how_to_keep_the_body(tmp_path, capsys, one_thread):
    run = tmp_path / "div"
    code, out, err = run_cli(capsys, "train", *TINY, "--iterations", "5", "--pretrain-epochs", "1", "--meta-lr", "1e6",
                             "--inner-lr", "1e6", "--out", run)
    line = one_error(code, out, err, "diverged", f"--init-from {run / 'pretrain.npz'}")
    assert "reused" not in line  # the folder holds pretrain.npz: it is refused as --out
    # the advice works: the pre-trained body starts a new run
    train_ok(capsys, *TINY, "--init-from", run / "pretrain.npz", "--pretrain-epochs", "0", "--out", tmp_path / "new")


@pytest.mark.parametrize("flag,value", [("--meta-lr-schedule", "cosine"), ("--algorithm", "reptile")])
def test_resume_keeps_iterations_where_a_schedule_anneals_over_them(tmp_path, capsys, one_thread, flag, value):
    run = tmp_path / "run"
    train_ok(capsys, *TINY, flag, value, "--max-minutes", "1e-6", "--out", run)  # stops after iteration 1
    code, out, err = run_cli(capsys, "train", "--out", run, "--resume", "--iterations", "4", "--max-minutes", "0")
    one_error(code, out, err, "--iterations 4", "anneals", "--init-from")
    assert load_checkpoint(str(run / "last.npz")).progress["iteration"] == 1
    train_ok(capsys, "--out", run, "--resume", "--max-minutes", "0", "--quiet")  # the same total still resumes


def test_resume_may_change_iterations_of_a_constant_schedule(tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    train_ok(capsys, *TINY, "--out", run)
    train_ok(capsys, "--out", run, "--resume", "--iterations", "3", "--quiet")
    assert load_checkpoint(str(run / "last.npz")).progress["iteration"] == 3


def test_init_from_starts_learned_rates_at_inner_lr(tmp_path, capsys, one_thread):
    train_ok(capsys, *TINY, "--learn-inner-lr", "--inner-lr", "0.4", "--out", tmp_path / "base")
    train_ok(capsys, *TINY, "--learn-inner-lr", "--inner-lr", "0.05", "--iterations", "1", "--meta-lr", "1e-9",
             "--init-from", tmp_path / "base", "--out", tmp_path / "run")
    rates = load_checkpoint(str(tmp_path / "run" / "last.npz")).params[LEARNED_LRS]
    np.testing.assert_allclose(rates, 0.05, atol=1e-4)  # as the log's "lr 0.05" and the README say


def test_init_from_refuses_another_norm(tmp_path, capsys, one_thread):
    train_ok(capsys, *TINY, "--norm", "instance", "--out", tmp_path / "base")
    code, out, err = run_cli(capsys, "train", *TINY, "--norm", "layer", "--init-from", tmp_path / "base",
                             "--out", tmp_path / "run")
    one_error(code, out, err, "--init-from", "--norm instance")
    assert not (tmp_path / "run").exists()


def test_init_from_a_bundle_says_what_it_takes(tmp_path, capsys):
    bundle = tmp_path / "model.fadapt"
    with zipfile.ZipFile(bundle, "w") as z:
        z.writestr("manifest.json", "{}")
    code, out, err = run_cli(capsys, "train", *TINY, "--init-from", bundle, "--out", tmp_path / "run")
    one_error(code, out, err, "--init-from", "run folder or a checkpoint .npz", "not a bundle")
    assert not (tmp_path / "run").exists()


def test_max_minutes_stop_says_how_to_continue(tmp_path, capsys, one_thread):
    out = train_ok(capsys, *TINY, "--iterations", "10", "--max-minutes", "1e-6", "--out", tmp_path / "run")
    assert "--max-minutes 1e-06 reached" in out and "--resume --max-minutes 60" in out


def test_a_limit_reached_at_the_last_iteration_is_no_stop(tmp_path, capsys, one_thread):
    out = train_ok(capsys, *TINY, "--iterations", "1", "--max-minutes", "1e-6", "--out", tmp_path / "run")
    assert "stopped" not in out and "--resume" not in out
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stopped"] is None


def test_resumed_sinusoid_run_reports_mse(tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    train_ok(capsys, "--data", "sinusoid", "--iterations", "2", "--meta-batch", "2", "--val-tasks", "5", "--quiet",
             "--out", run)
    out = train_ok(capsys, "--out", run, "--resume", "--iterations", "3", "--quiet")
    assert "best validation MSE" in out and "accuracy" not in out


# the TINY run as a TrainConfig, for tests that call the trainer directly
TINY_CONFIG = dict(data="synthetic", algorithm="fomaml", width=4, meta_batch=2, val_tasks=5, ways=3, shots=1, query=2)


def rewrite_progress(run, **changes) -> None:
    """last.npz of ``run`` with its progress record changed (parameters and optimiser state kept)."""
    from fastadapt.meta_train.run import save_checkpoint

    ckpt = load_checkpoint(str(run / "last.npz"))
    save_checkpoint(str(run / "last.npz"), ckpt.params, ckpt.optimizer_state, {**ckpt.progress, **changes})


def test_resume_keeps_the_best_validation_so_far(tmp_path, one_thread):
    """Guards --resume forgetting the best score: the first validation after resuming would then overwrite
    best.npz even when it is worse than the best before the interruption."""
    from fastadapt.meta_train.run import TrainConfig
    from fastadapt.meta_train.trainer import train

    run = tmp_path / "run"
    train(TrainConfig(iterations=2, **TINY_CONFIG), str(run), quiet=True)  # validated at iteration 2 (the last)
    rewrite_progress(run, best=100.0)  # no validation can beat 100% accuracy
    summary = train(TrainConfig(iterations=3, **TINY_CONFIG), str(run), resume=True, quiet=True,
                    given={"iterations"})
    assert summary["best"] == 100.0
    assert load_checkpoint(str(run / "best.npz")).progress["iteration"] == 2  # kept: iteration 3 is no better
    assert load_checkpoint(str(run / "last.npz")).progress["iteration"] == 3


def test_max_minutes_counts_minutes(tmp_path, monkeypatch, one_thread):
    """Guards --max-minutes being compared with seconds (a 30-minute limit stopping after 30 s): with the
    meta-training clock at 59 s a 1-minute limit is not reached, at 61 s it is."""
    from fastadapt.meta_train.recorder import RunRecorder
    from fastadapt.meta_train.run import TrainConfig
    from fastadapt.meta_train.trainer import train

    for seconds, iterations in ((59.0, 3), (61.0, 1)):
        monkeypatch.setattr(RunRecorder, "elapsed", lambda self, s=seconds: s)
        summary = train(TrainConfig(iterations=3, max_minutes=1, **TINY_CONFIG), str(tmp_path / f"run{seconds:g}"),
                        quiet=True)
        assert summary["iterations"] == iterations, (seconds, summary)
        assert (summary["stopped"] is None) == (iterations == 3), (seconds, summary["stopped"])


def test_resume_continues_the_meta_training_clock(tmp_path, one_thread):
    """Guards --resume restarting the clock: --max-minutes counts every resumed part (as the trainer's
    stop message says), so a run that had 2 minutes stops at a 1-minute limit after one more iteration."""
    from fastadapt.meta_train.run import TrainConfig
    from fastadapt.meta_train.trainer import train

    run = tmp_path / "run"
    train(TrainConfig(iterations=2, **TINY_CONFIG), str(run), quiet=True)
    rewrite_progress(run, elapsed_seconds=120.0)  # 2 minutes of meta-training so far
    summary = train(TrainConfig(iterations=4, max_minutes=1, **TINY_CONFIG), str(run), resume=True, quiet=True,
                    given={"iterations", "max_minutes"})
    assert summary["meta_seconds"] >= 120.0
    assert summary["stopped"] and summary["iterations"] == 3  # the limit is checked after each iteration


def test_resumed_pretraining_continues_at_the_saved_epoch(tmp_path, one_thread):
    """Guards resumed pre-training restarting at epoch 0 (epochs trained twice): one epoch, then --resume to
    two, writes the rows of epochs 1 and 2 and ends with the body of an uninterrupted two-epoch run."""
    import torch

    from fastadapt.data.synthetic import synthetic_glyphs
    from fastadapt.meta_train.pretrain import pretrain_body
    from fastadapt.models.networks import ModelSpec, build_model

    classes = synthetic_glyphs(6, 4, seed=1)

    def pretrain(folder, epochs, resume):
        folder.mkdir(exist_ok=True)
        torch.manual_seed(0)
        model = build_model(ModelSpec(width=4))
        params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
        pretrain_body(model, params, classes, classes.spec, epochs, str(folder), 0, torch.device("cpu"), batch_size=8,
                      resume=resume, quiet=True)
        return params

    pretrain(tmp_path / "parts", 1, False)
    resumed = pretrain(tmp_path / "parts", 2, True)
    rows = [json.loads(line) for line in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
    assert [row["pretrain_epoch"] for row in rows] == [1, 2]
    whole = pretrain(tmp_path / "whole", 2, False)
    for k, v in whole.items():
        assert torch.equal(resumed[k], v), k
    torch.manual_seed(0)
    untrained = dict(build_model(ModelSpec(width=4)).named_parameters())
    assert any(not torch.equal(untrained[k], v) for k, v in whole.items())  # pre-training moved the body
