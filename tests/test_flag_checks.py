"""Review fixes: an --init-from run's damaged config.json at export, and train flags that were recorded but
did nothing (refused, or a warning for the harmless --tf32)."""

from __future__ import annotations

import warnings

import pytest

from fastadapt.errors import FastadaptError, FastadaptWarning
from fastadapt.meta_train.run import TrainConfig, read_config
from fastadapt.meta_train.run_setup import check_config

from test_outputs import one_error, run_cli

B = ["--data", "synthetic", "--width", "4", "--iterations", "2", "--meta-batch", "2", "--val-tasks", "5",
     "--ways", "3", "--shots", "1", "--query", "2", "--device", "cpu", "--quiet"]
SIN = ["--data", "sinusoid", "--iterations", "2", "--meta-batch", "2", "--val-tasks", "5", "--quiet"]


# ----------------------------------------------------------------------------- export

def test_export_leaves_out_an_init_from_run_whose_config_is_damaged(tmp_path, capsys):
    first, second, bundle = tmp_path / "a", tmp_path / "b", tmp_path / "b.fadapt"
    assert run_cli(capsys, "train", *B, "--out", first)[0] == 0
    assert run_cli(capsys, "train", *B, "--init-from", first, "--out", second)[0] == 0
    (first / "config.json").write_text('{"broken": \n')
    code, out, err = run_cli(capsys, "export", second, "--out", bundle)
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and str(first / "config.json") in warned[0], err
    assert bundle.exists()


def test_the_stages_keep_the_exported_run_and_note_the_damaged_one(tmp_path, capsys):
    from fastadapt.meta_train.export_run import training_stages

    first, second = tmp_path / "a", tmp_path / "b"
    assert run_cli(capsys, "train", *B, "--out", first)[0] == 0
    assert run_cli(capsys, "train", *B, "--init-from", first, "--out", second)[0] == 0
    (first / "config.json").write_text("[1]")
    skipped = []
    with pytest.warns(FastadaptWarning, match="a/config.json: damaged run config .*left out"):
        stages = training_stages(str(second), skipped)
    assert len(stages) == 1 and "--init-from" in stages[0]["command"]
    assert len(skipped) == 1 and "config.json" in skipped[0]
    (second / "config.json").write_text("[1]")  # the exported run's own config is not optional
    with pytest.raises(FastadaptError, match="b/config.json: damaged run config"):
        training_stages(str(second), [])


# ----------------------------------------------------------------------------- flags without effect

@pytest.mark.parametrize("flags,needle", [
    (B + ["--inner-steps", "1", "--multi-step-loss", "10"], "--multi-step-loss"),
    (B + ["--pretrain-lr", "5"], "--pretrain-lr"),
    (B + ["--pretrain-schedule", "cosine"], "--pretrain-schedule"),
    (B + ["--pretrain-smoothing", "0.1"], "--pretrain-smoothing"),
    (SIN + ["--width", "8"], "--width"),
    (SIN + ["--norm", "batch"], "--norm"),
    (SIN + ["--image-size", "32"], "--image-size"),
    (SIN + ["--channels", "3"], "--channels"),
    (SIN + ["--no-rotations"], "--no-rotations"),
    (SIN + ["--no-invert"], "--no-invert"),
    (SIN + ["--fit", "crop"], "--fit"),
    (SIN + ["--val-classes", "5"], "--val-classes"),
])
def test_a_flag_that_would_do_nothing_is_one_line_naming_it(tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", *flags, "--out", out)
    one_error(code, stdout, err, needle, "drop")
    assert not out.exists()


def test_tf32_on_a_cpu_trains_with_one_warning(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", *B, "--tf32", "--out", tmp_path / "run")
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "--tf32" in warned[0] and "CPU" in warned[0], err


@pytest.mark.parametrize("config", [
    TrainConfig.with_defaults(data="sinusoid", inner_steps=1),  # the README's sinusoid recipes
    TrainConfig.with_defaults(data="sinusoid", norm="layer", fit="stretch"),  # older run folders' defaults
    TrainConfig(pretrain_epochs=3, pretrain_lr=3e-3, pretrain_schedule="cosine", pretrain_smoothing=0.1),
    TrainConfig(inner_steps=2, multi_step_loss=10),
    TrainConfig(tf32=True, device="cuda"),  # checked where the run trains (here=False: a saved config)
])
def test_settings_that_take_effect_are_accepted(config):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_config(config, here=config.device != "cuda")


def test_a_saved_run_with_a_setting_now_refused_still_reads_and_resumes(tmp_path, capsys, monkeypatch):
    # a run folder from before the checks: it reads (evaluate, export) and resumes (its flags are fixed); only a
    # new run with the setting is refused
    import fastadapt.meta_train.trainer as trainer
    from fastadapt.meta_train.run_setup import check_effect

    out = tmp_path / "run"
    with monkeypatch.context() as patched:
        patched.setattr(trainer, "check_effect", lambda c: None)  # as before the checks existed
        assert run_cli(capsys, "train", *B, "--inner-steps", "1", "--multi-step-loss", "10", "--out", out)[0] == 0
    config = read_config(str(out))
    check_config(config)
    with pytest.raises(FastadaptError, match="--multi-step-loss"):
        check_effect(config)
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--iterations", "3", "--quiet")
    assert code == 0, err


def test_resuming_a_sinusoid_run_with_default_settings_works(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", *SIN, "--out", out)[0] == 0
    code, stdout, err = run_cli(capsys, "train", "--out", out, "--resume", "--iterations", "3", "--quiet")
    assert code == 0 and "warning" not in err, err
