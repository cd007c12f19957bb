"""The trainer and its CLI on synthetic data: runs, resumes exactly, stops on divergence, rejects bad input."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastadapt.meta_train.run import TrainConfig, load_checkpoint
from fastadapt.meta_train.trainer import train

from sample_data import REPO, write_glyph_folders
from test_outputs import one_error, run_cli

TINY = dict(data="synthetic", width=8, meta_batch=2, query=2, val_tasks=4, val_every=3, inner_steps=2)


def params_of(path):
    return load_checkpoint(path).params


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile", "anil"])
def test_each_algorithm_trains_and_writes_a_run(tmp_path, algorithm, one_thread):
    out = tmp_path / "run"
    summary = train(TrainConfig(algorithm=algorithm, iterations=3, **TINY), str(out), quiet=True)
    assert summary["best"] is not None
    for name in ("config.json", "last.npz", "best.npz", "metrics.jsonl", "curves.png", "summary.json"):
        assert (out / name).exists(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "loss" in r] == [1, 2, 3]
    assert any("val_accuracy" in r for r in rows)
    start = params_of(str(out / "last.npz"))
    assert all(np.isfinite(v).all() for v in start.values())


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    """Default torch threads: the trainer's per-task worker threads (one per torch thread) are resumed exactly."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(TrainConfig(algorithm="fomaml", iterations=4, checkpoint_every=1, **TINY), str(straight), quiet=True)
    train(TrainConfig(algorithm="fomaml", iterations=2, checkpoint_every=1, **TINY), str(split), quiet=True)
    train(TrainConfig(algorithm="fomaml", iterations=4, checkpoint_every=1, **TINY), str(split), resume=True,
          quiet=True, given={"iterations"})
    a, b = params_of(str(straight / "last.npz")), params_of(str(split / "last.npz"))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6)
    its = [json.loads(line)["iteration"] for line in (split / "metrics.jsonl").read_text().splitlines()
           if "loss" in line]
    assert its == [1, 2, 3, 4]


@pytest.mark.slow
def test_stop_at_and_max_minutes_end_the_run_validated_and_resumable(tmp_path, one_thread):
    reached = tmp_path / "reached"
    summary = train(TrainConfig(algorithm="fomaml", iterations=30, stop_at=1.0, **TINY), str(reached), quiet=True)
    assert summary["iterations"] == 3 and "--stop-at 1.0 at iteration 3" in summary["stopped"]
    vals = [json.loads(line) for line in (reached / "metrics.jsonl").read_text().splitlines() if "val_accuracy" in line]
    assert [v["iteration"] for v in vals] == [3] and vals[0]["elapsed_s"] >= 0
    assert load_checkpoint(str(reached / "last.npz")).progress["iteration"] == 3

    timed = tmp_path / "timed"
    summary = train(TrainConfig(algorithm="fomaml", iterations=30, max_minutes=1e-6, **TINY), str(timed), quiet=True)
    assert summary["iterations"] == 1 and "--max-minutes" in summary["stopped"]
    rows = [json.loads(line) for line in (timed / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iteration"] == 1 and "val_accuracy" in rows[-1]  # validated where it stopped
    summary = train(TrainConfig(algorithm="fomaml", iterations=5, **TINY), str(timed), resume=True, quiet=True,
                    given={"iterations", "max_minutes"})
    assert summary["iterations"] == 5 and summary["stopped"] is None


@pytest.mark.slow
def test_killed_run_resumes_from_last_checkpoint(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    args = ["train", "--data", "synthetic", "--algorithm", "fomaml", "--width", "8", "--meta-batch", "2",
            "--query", "2", "--val-every", "1000", "--checkpoint-every", "1", "--iterations", "400", "--quiet",
            "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "fastadapt", *args], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "last.npz").exists() and load_checkpoint(str(out / "last.npz")).progress["iteration"] >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(str(out / "last.npz")).progress["iteration"]
    assert 3 <= killed_at < 400
    code, _, err = run_cli(capsys, *args[:-5], "--iterations", killed_at + 2, "--quiet", "--out", out, "--resume")
    assert code == 0, err
    assert load_checkpoint(str(out / "last.npz")).progress["iteration"] == killed_at + 2
    its = [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert its == list(range(1, killed_at + 3))


@pytest.mark.slow
def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, one_thread):
    """Two good iterations are checkpointed; then an inner lr of 1e6 diverges and the last good checkpoint stays."""
    out = tmp_path / "run"
    train(TrainConfig(algorithm="maml", iterations=2, checkpoint_every=1, **TINY), str(out), quiet=True)
    assert load_checkpoint(str(out / "last.npz")).progress["iteration"] == 2
    config = json.loads((out / "config.json").read_text())
    config["inner_lr"] = 1e6  # the same run, continued with a learning rate that diverges
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="diverged|non-finite") as caught:
        train(TrainConfig(algorithm="maml", iterations=50, checkpoint_every=1, **TINY), str(out), resume=True,
              quiet=True, given={"iterations"})
    message = str(caught.value)
    assert f"the last good checkpoint is {out / 'last.npz'}" in message, message
    failed_at = int(re.search(r"at iteration (\d+)", message).group(1))
    assert 3 <= failed_at <= 50
    last = load_checkpoint(str(out / "last.npz"))
    assert last.progress["iteration"] == failed_at - 1  # checkpoint_every=1: every good iteration was saved
    assert all(np.isfinite(v).all() for v in last.params.values())


def test_cli_train_evaluate_json(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--out", out, "--iterations", "2", "--width", "8", "--meta-batch", "2",
                           "--query", "2", "--val-tasks", "4", "--quiet")
    assert code == 0, err
    code, stdout, err = run_cli(capsys, "evaluate", out, "--tasks", "5", "--query", "3", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    for key in ("accuracy_pct", "ci95_pct", "tasks", "ways", "shots", "transductive"):
        assert key in result
    assert result["tasks"] == 5 and result["transductive"] is False
    assert (out / "evaluations.jsonl").exists()


def test_sinusoid_trains_and_evaluates(tmp_path, capsys, one_thread):
    out = tmp_path / "sin"
    train(TrainConfig(data="sinusoid", ways=1, shots=10, query=10, inner_lr=0.01, meta_batch=4, iterations=3,
                      val_tasks=4, val_every=3), str(out), quiet=True)
    code, stdout, err = run_cli(capsys, "evaluate", out, "--data", "sinusoid", "--tasks", "5", "--steps", "1", "--json")
    assert code == 0, err
    assert json.loads(stdout)["mse"] > 0


def test_cli_bad_input(tmp_path, capsys, one_thread):
    """Every mistake is one line naming it, exit code 2, no traceback, nothing written (in-process: main())."""

    def bad(args, *needles):
        code, out, err = run_cli(capsys, *args)
        one_error(code, out, err, *needles)
        assert code == 2

    base = ["train", "--iterations", "1", "--width", "8", "--meta-batch", "1", "--quiet"]
    bad([*base, "--data", tmp_path / "missing", "--out", tmp_path / "a"], "missing", "no such")
    assert not (tmp_path / "a").exists()
    (tmp_path / "empty").mkdir()
    bad([*base, "--data", tmp_path / "empty", "--out", tmp_path / "b"], "empty", "no class folders")
    few = write_glyph_folders(tmp_path / "few", 60, [3] * 50 + [2] * 10)
    bad([*base, "--data", few, "--protocol", "all", "--out", tmp_path / "c"], "--protocol")
    bad([*base, "--data", few, "--query", "2", "--out", tmp_path / "c"], "class", "fewer than")
    assert not (tmp_path / "c").exists()
    bad([*base, "--ways", "400", "--out", tmp_path / "d"], "--ways 400")
    bad([*base, "--algorithm", "anil", "--data", "sinusoid", "--out", tmp_path / "e"], "anil")
    bad([*base, "--head-init", "learned", "--out", tmp_path / "f"], "--head-init")
    bad([*base, "--algorithm", "bogus", "--out", tmp_path / "g"], "--algorithm")
    bad([*base, "--data", "synthetic", "--protocol", "lake", "--out", tmp_path / "h"], "Omniglot")
    bad([*base, "--resume", "--out", tmp_path / "nothing"], "--resume")
    for flag, value in (("--width", "0"), ("--image-size", "12"), ("--norm", "bogus"), ("--head-init", "bogus"),
                        ("--pretrain-lr", "-1"), ("--val-tasks", "0"), ("--val-classes", "-1"), ("--channels", "2"),
                        ("--stop-at", "120"), ("--max-minutes", "-1")):
        bad([*base, flag, value, "--pretrain-epochs", "1", "--out", tmp_path / "i"], flag)
        assert not (tmp_path / "i").exists()
    code, _, err = run_cli(capsys, *base, "--query", "2", "--out", tmp_path / "run")
    assert code == 0, err
    run = tmp_path / "run"
    bad([*base, "--query", "2", "--out", run], "already holds a run")
    bad([*base, "--query", "2", "--ways", "3", "--resume", "--out", run], "--ways")
    bad(["export", run, "--out", tmp_path], f"--out {tmp_path}: is a folder")
    bad(["export", run, "--out", tmp_path / "no" / "m.fadapt"], "--out", "does not exist")
    bad(["evaluate", tmp_path / "nothing"], "no such run folder")
    bad(["evaluate", run, "--tasks", "3", "--ways", "200"], "--ways 200")
    bad(["evaluate", run, "--tasks", "3", "--shots", "0"], "--shots")
    bad(["evaluate", run, "--tasks", "3", "--lr", "-1"], "--lr")


def test_init_from_another_run(tmp_path, one_thread):
    base, follow = tmp_path / "base", tmp_path / "follow"
    train(TrainConfig(algorithm="fomaml", iterations=2, **TINY), str(base), quiet=True)
    bad_width = dict(TINY, width=16)
    with pytest.raises(Exception, match="--init-from"):
        train(TrainConfig(algorithm="fomaml", iterations=1, init_from=str(base), **bad_width), str(follow), quiet=True)
    assert not follow.exists()
    train(TrainConfig(algorithm="fomaml", iterations=1, init_from=str(base), meta_lr=1e-12, **TINY), str(follow),
          quiet=True)
    a, b = params_of(str(base / "best.npz")), params_of(str(follow / "last.npz"))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6)
