"""Every numeric flag of train and evaluate: type, finiteness and range, one line naming the flag."""

from __future__ import annotations

import pytest

from fastadapt.errors import FastadaptError
from fastadapt.meta_train.run import LIMITS, POSITIVE, TrainConfig

from test_outputs import one_error, run_cli

BASE = ["train", "--iterations", "1", "--width", "8", "--meta-batch", "1", "--quiet"]


@pytest.mark.parametrize("flag,value", [
    ("--seed", "-1"), ("--seed", str(2**32)), ("--width", "100000000"), ("--inner-lr", "inf"),
    ("--inner-lr", "0"), ("--meta-lr", "nan"), ("--pretrain-lr", "-inf"), ("--max-minutes", "nan"),
    ("--stop-at", "nan"), ("--image-size", "100000"), ("--meta-batch", "1000000000"),
    ("--iterations", "100000000000000000000"), ("--inner-steps", "1000000"), ("--val-tasks", "10000000"),
    ("--checkpoint-every", "0"), ("--pretrain-epochs", "-1"), ("--dist-timeout", "nan"), ("--query", "100000"),
    ("--head-scale", "0"), ("--head-scale", "nan"),
])
def test_bad_train_flags_are_one_line_naming_the_flag(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, *BASE, flag, value, "--out", out)
    line = one_error(code, stdout, err, flag)
    assert value in line or "finite" in line or "positive" in line or "above" in line
    assert not out.exists()


def test_head_scale_needs_the_prototype_head(tmp_path, capsys):
    code, stdout, err = run_cli(capsys, *BASE, "--head-scale", "0.1", "--out", tmp_path / "run")
    one_error(code, stdout, err, "--head-scale", "--head-init prototype")
    assert not (tmp_path / "run").exists()


def test_images_per_task_are_bounded(tmp_path, capsys):
    code, stdout, err = run_cli(capsys, *BASE, "--ways", "100", "--shots", "100", "--query", "150",
                                "--out", tmp_path / "run")
    one_error(code, stdout, err, "--ways x (--shots + --query)", "25000")


@pytest.mark.parametrize("flag,value", [
    ("--steps", "100000000000000000000"), ("--steps", "-1"), ("--lr", "inf"), ("--lr", "nan"), ("--lr", "0"),
    ("--seed", "-1"), ("--tasks", "0"), ("--tasks", "1000000000"), ("--query", "0"), ("--ways", "5000"),
])
def test_bad_evaluate_flags_fail_before_any_work(tmp_path, capsys, flag, value):
    # the model need not exist: flags are checked first
    code, stdout, err = run_cli(capsys, "evaluate", tmp_path / "nothing", flag, value)
    one_error(code, stdout, err, flag)


@pytest.mark.parametrize("change,needle", [
    ({"ways": "5"}, "--ways must be an integer"), ({"ways": 5.0}, "--ways must be an integer"),
    ({"seed": True}, "--seed must be an integer"), ({"inner_lr": "0.4"}, "--inner-lr must be a number"),
    ({"rotations": "yes"}, "--rotations must be a boolean"), ({"data": 3}, "--data must be a string"),
    ({"command": "fastadapt train"}, "command must be a list"),
])
def test_config_values_are_type_checked(change, needle):
    with pytest.raises(FastadaptError, match=needle.replace("(", "\\(")):
        TrainConfig.from_dict({**TrainConfig().to_dict(), **change})
    with pytest.raises(FastadaptError, match="JSON object"):
        TrainConfig.from_dict([1, 2])


def test_the_ends_of_every_range_are_accepted():
    for name, (low, high) in LIMITS.items():
        for value in (low, high):
            if name in POSITIVE and value == low:
                continue  # learning rates (and the head's scale) must be above 0
            data = "sinusoid" if name == "ways" and value == 1 else "synthetic"  # classification needs 2 ways
            TrainConfig.from_dict({**TrainConfig().to_dict(), "data": data, name: value})
    TrainConfig.from_dict({**TrainConfig().to_dict(), "ways": 1000, "shots": 5, "query": 15})  # 20,000 images
    TrainConfig.from_dict({**TrainConfig().to_dict(), "inner_lr": 7})  # an int where a float is expected


def test_train_out_may_not_be_or_lie_inside_what_the_run_reads(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "cls").mkdir(parents=True)
    code, stdout, err = run_cli(capsys, *BASE, "--data", data, "--out", data / "run")
    one_error(code, stdout, err, f"--out {data / 'run'}", "inside the input folder")
    assert not (data / "run").exists()
    other = tmp_path / "other"
    other.mkdir()
    code, stdout, err = run_cli(capsys, *BASE, "--init-from", other, "--out", other)
    one_error(code, stdout, err, "also an input")
    link = tmp_path / "link"
    link.symlink_to(other)
    code, stdout, err = run_cli(capsys, *BASE, "--out", link)
    one_error(code, stdout, err, "symbolic link")


def test_fit_is_recorded_new_runs_pad_and_old_run_folders_stretch(tmp_path, capsys):
    """New runs keep the aspect ratio ("pad"); a config.json from before the field resized by stretching."""
    import json

    from fastadapt.meta_train.run_setup import preprocess_of
    from fastadapt.meta_train.run import read_config

    assert preprocess_of(TrainConfig()).fit == "pad"
    old = TrainConfig().to_dict()
    del old["fit"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    assert preprocess_of(read_config(str(tmp_path / "old"))).fit == "stretch"
    code, stdout, err = run_cli(capsys, *BASE, "--fit", "squash", "--out", tmp_path / "run")
    one_error(code, stdout, err, "--fit", "squash")


def test_ctrl_c_before_any_checkpoint_says_nothing_was_saved(tmp_path, capsys, monkeypatch):
    """(After a checkpoint it advises --resume: tests/test_server_edges.py.)"""
    import fastadapt.meta_train.trainer as trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    code, stdout, err = run_cli(capsys, *BASE, "--out", tmp_path / "run")
    assert code == 130 and "Traceback" not in err
    assert err.strip() == "interrupted; nothing was saved; run the same command again to start over"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["0", "1"])
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_too_few_ways_get_one_message_with_the_whole_range(tmp_path, capsys, command, value):
    """0 and 1 ways used to get differently worded messages (a range with 1 in it, then 'at least 2')."""
    args = [*BASE, "--data", "synthetic", "--out", tmp_path / "run"] if command == "train" else \
        ["evaluate", tmp_path / "nothing", "--data", "synthetic"]
    code, stdout, err = run_cli(capsys, *args, "--ways", value)
    one_error(code, stdout, err, f"--ways must be from 2 to 1000, got {value}")


def test_one_way_is_still_accepted_for_sinusoid_regression():
    assert TrainConfig.from_dict({**TrainConfig().to_dict(), "data": "sinusoid", "ways": 1}).ways == 1
