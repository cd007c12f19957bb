"""fastadapt demo: runs on the shipped example drawings, with a given model or the shipped default."""

import os
import subprocess
import sys

import pytest

from sample_data import REPO

DEFAULT = REPO / "fastadapt" / "assets" / "default.fadapt"


def run_demo(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "fastadapt", "demo", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


def test_demo_with_a_given_model(bundles, tmp_path):
    result = run_demo("--model", bundles["zero"], "--sheet", str(tmp_path / "sheet.png"))
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "/40" in result.stdout
    assert (tmp_path / "sheet.png").stat().st_size > 1000


@pytest.mark.skipif(not DEFAULT.exists(), reason="no default model shipped yet")
def test_demo_with_the_default_model_learns_the_shapes():
    result = run_demo("--shots", "5")
    assert result.returncode == 0, result.stderr
    correct = int(result.stdout.split("accuracy ")[1].split("/")[0])
    assert correct >= 32  # 8 shapes, 5 drawings each: well above chance (5 of 40)


def test_demo_sheet_in_a_missing_folder_fails_before_the_demo(bundles, tmp_path):
    result = run_demo("--model", bundles["zero"], "--sheet", str(tmp_path / "no" / "sheet.png"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--sheet" in result.stderr and "accuracy" not in result.stdout
