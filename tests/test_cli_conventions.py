"""CLI conventions: --version, shell completion, defaults in --help, results on stdout and everything else on
stderr, predict --csv, the same --top default as the Python API, progress lines not cut in logs, and
examples/ as real files."""

from __future__ import annotations

import csv
import filecmp
import inspect
import re
import io
import os
import shutil

import pytest

import fastadapt
from sample_data import REPO
from test_cli_runtime import run_cli

EXAMPLES = REPO / "examples"
DEFAULT = REPO / "fastadapt" / "assets" / "default.fadapt"

needs_default = pytest.mark.skipif(not DEFAULT.exists(), reason="no default model shipped")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The shipped default model adapted to the example shapes, one label with a comma and a quote."""
    root = tmp_path_factory.mktemp("shapes")
    shots = {'star, "big"' if name == "star" else name: sorted(str(p) for p in (EXAMPLES / "shots" / name).glob("*.png"))
             for name in ("star", "circle", "arrow")}
    path = root / "shapes.fadapt"
    fastadapt.load().adapt(shots).save(str(path))
    return str(path)


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps --help at COLUMNS


def test_version(capsys):
    code, out, err = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"fastadapt {fastadapt.__version__}" and err == ""


def test_shell_completion_can_be_shown_and_installed(capsys, wide):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "--install-completion" in out and "--show-completion" in out and "--version" in out
    # in a fresh process: Typer's completion options read the shell and program name from the process
    import subprocess
    import sys

    # the shell named, not detected from the parent processes (which differ between a terminal, CI and nohup)
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    done = subprocess.run([sys.executable, "-m", "fastadapt", "--show-completion", "bash"], capture_output=True,
                          text=True, timeout=60, cwd=REPO, stdin=subprocess.DEVNULL, env=env)
    assert done.returncode == 0 and "complete" in done.stdout and "fastadapt" in done.stdout.lower(), done.stderr


def test_help_shows_defaults(capsys, wide):
    _, out, _ = run_cli(capsys, "predict", "--help")
    assert "--csv" in out and "[default: 3]" in out
    _, out, _ = run_cli(capsys, "demo", "--help")
    flat = re.sub(r"[\s│]+", " ", out)  # rich wraps the help text inside a box
    assert "[default: as many as the model was meta-trained with" in flat and "1<=x<=5" in out


def test_defaults_written_in_help_texts_are_shown(capsys, wide):
    """Rich markup swallows an unescaped "[default: ...]" written in a help text (it reads as a style tag):
    every such default must appear in the rendered --help."""
    import typer

    from fastadapt.cli import app

    checked = 0
    for name, command in typer.main.get_command(app).commands.items():
        written = [p.help for p in command.params if "[default" in (getattr(p, "help", None) or "")]
        if not written:
            continue
        _, out, _ = run_cli(capsys, name, "--help")
        flat = re.sub(r"[\s│]+", " ", out)  # rich wraps the help text inside a box
        for text in written:
            default = re.sub(r"\s+", " ", "[default" + text.split("[default", 1)[1].split("]", 1)[0] + "]")
            assert default in flat, (name, default)
            checked += 1
    assert checked >= 10


def test_cli_and_api_share_the_top_default():
    from fastadapt.cli.runtime_commands import TOP, predict
    from fastadapt.runtime.model import AdaptedModel, Model

    assert inspect.signature(AdaptedModel.predict).parameters["top"].default == TOP
    assert inspect.signature(Model.predict).parameters["top"].default == TOP
    assert inspect.signature(predict).parameters["top"].default.default == TOP


@needs_default
def test_results_on_stdout_everything_else_on_stderr(shapes, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(EXAMPLES / "queries" / "star", images)
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    sheet = tmp_path / "s.png"
    code, out, err = run_cli(capsys, "predict", "--model", shapes, str(images), "--sheet", str(sheet))
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 5 and all(line.split("\t")[1] == 'star, "big"' for line in lines)
    assert "wrote" not in out and "warning" not in out
    assert f"wrote {sheet}" in err and sheet.exists()
    warning_lines = [line for line in err.splitlines() if "broken.png" in line]
    assert len(warning_lines) == 1 and warning_lines[0].startswith("warning: ") and "skipped" in warning_lines[0]


@needs_default
def test_predict_csv(shapes, capsys):
    queries = [str(EXAMPLES / "queries" / name / f"{name}_1.png") for name in ("star", "circle")]
    code, out, err = run_cli(capsys, "predict", "--model", shapes, *queries, "--csv", "--top", "2")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["path", "label", "probability", "unknown", "score", "top1_label", "top1_probability",
                             "top2_label", "top2_probability", "error"]
    assert [r["path"] for r in rows] == queries
    assert rows[0]["label"] == rows[0]["top1_label"] == 'star, "big"' and rows[1]["label"] == "circle"
    assert '"star, ""big"""' in out  # quoted by the csv module
    for row in rows:
        assert 0 <= float(row["top2_probability"]) <= float(row["probability"]) <= 1
        assert row["unknown"] == "false" and float(row["score"]) == float(row["score"])
    code, out, _ = run_cli(capsys, "predict", "--model", shapes, queries[0], "--csv", "--top", "5")
    header, row = list(csv.reader(io.StringIO(out)))
    assert len(header) == len(row) == 5 + 2 * 3 + 1 and "" not in row[:-1]  # capped at the 3 classes, as text
    assert header[-1] == "error" and row[-1] == ""  # and --json; an answered image has no error


@needs_default
def test_json_and_csv_together_is_a_one_line_error(shapes, capsys):
    code, out, err = run_cli(capsys, "predict", "--model", shapes, str(EXAMPLES / "queries"), "--csv", "--json")
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.strip() == "error: --json and --csv: choose one output format"


def test_progress_lines_are_not_cut_at_80_columns_in_logs(monkeypatch):
    from fastadapt.progress import LOG_WIDTH, stderr_console

    monkeypatch.delenv("COLUMNS", raising=False)
    assert stderr_console().width == LOG_WIDTH  # stderr is captured here, not a terminal
    monkeypatch.setenv("COLUMNS", "100")
    assert stderr_console().width == 100


def test_examples_are_real_files_and_the_package_ships_the_same():
    packaged = REPO / "fastadapt" / "assets" / "examples"
    assert EXAMPLES.is_dir() and not EXAMPLES.is_symlink()
    ours = sorted(p.relative_to(EXAMPLES) for p in EXAMPLES.rglob("*.png"))
    shipped = sorted(p.relative_to(packaged) for p in packaged.rglob("*.png"))
    assert len(ours) == 80 and ours == shipped
    match, mismatch, errors = filecmp.cmpfiles(EXAMPLES, packaged, [str(p) for p in ours], shallow=False)
    assert not mismatch and not errors, "run python scripts/make_examples.py"
    assert not any(p.is_symlink() for p in EXAMPLES.rglob("*"))
    assert os.path.basename(str(EXAMPLES)) == "examples"
