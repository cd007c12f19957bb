"""fastadapt adapt / predict / info: happy paths, and every user mistake as one clear line (exit 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from PIL import Image

from conftest import ROOT, rewrite_manifest
from fastadapt.cli import main


def run_cli(capsys, *args) -> tuple:
    """Run ``fastadapt ARGS`` in-process through the real entry point -> (exit code, stdout, stderr)."""
    argv = sys.argv
    sys.argv = ["fastadapt", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, out, err, names, out_path=None):
    assert code != 0
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert str(names) in lines[0], (names, lines[0])
    if out_path is not None:
        assert not os.path.exists(out_path)


@pytest.fixture(scope="module")
def adapted_bundle(bundles, glyphs, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapted") / "adapted.fadapt"
    import fastadapt

    fastadapt.load(bundles["zero"]).adapt(glyphs["shots"], steps=20).save(out)
    return str(out)


# ----------------------------------------------------------------------------- happy paths

def test_adapt_writes_bundle_and_reports(bundles, glyphs, tmp_path, capsys):
    out = tmp_path / "mine.fadapt"
    code, stdout, err = run_cli(capsys, "adapt", "--shots", glyphs["shots"], "--model", bundles["zero"],
                                "--steps", 4, "--out", out)
    assert code == 0, err
    assert out.exists()
    assert "5 classes" in stdout and "4 steps" in stdout and " s" in stdout
    for name in ("class00", "class04"):
        assert name in stdout
    assert "3 shots" in stdout


def test_predict_text_json_top_and_sheet(adapted_bundle, glyphs, tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    code, stdout, err = run_cli(capsys, "predict", "--model", adapted_bundle, glyphs["queries"], "--json",
                                "--top", 3, "--sheet", sheet)
    assert code == 0, err
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert len(rows) == 10  # the folder is searched recursively: 5 classes x 2 images
    for row in rows:
        assert set(row) == {"path", "label", "probability", "top", "unknown", "score"}
        assert len(row["top"]) == 3 and row["top"][0]["label"] == row["label"]
        assert os.path.exists(row["path"])
    assert {row["label"] for row in rows} <= {f"class{c:02d}" for c in range(5)}  # (random-init body: no accuracy claim)
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.width > 100
    one = os.path.join(glyphs["queries"], "class01", "1.png")
    code, stdout, err = run_cli(capsys, "predict", "--model", adapted_bundle, one)
    assert code == 0 and stdout.startswith(one) and "%" in stdout


def test_info_human_and_json(bundles, adapted_bundle, capsys):
    code, stdout, _ = run_cli(capsys, "info", bundles["zero"])
    assert code == 0
    for word in ("meta bundle", "conv4", "head_init=zero", "steps=3", "20.00% ± 1.50", "verification"):
        assert word in stdout, word
    code, stdout, _ = run_cli(capsys, "info", adapted_bundle)
    assert code == 0 and "adapted bundle" in stdout and "class00" in stdout
    code, stdout, _ = run_cli(capsys, "info", adapted_bundle, "--json")
    manifest = json.loads(stdout)
    assert manifest["kind"] == "adapted" and len(manifest["classes"]) == 5


def test_help_reads_like_documentation(capsys):
    for command in ("adapt", "predict", "info"):
        code, stdout, _ = run_cli(capsys, command, "--help")
        assert code == 0, command
        assert f"fastadapt {command}" in stdout, stdout  # the usage line
        if command != "info":  # info takes one path: no example needed
            assert "Example" in stdout, (command, stdout)


def test_corrupt_and_non_image_files_are_skipped_with_a_warning(bundles, glyphs, tmp_path, capsys):
    shots = tmp_path / "shots"
    shutil.copytree(glyphs["shots"], shots)
    (shots / "class01" / "broken.png").write_bytes(b"\x89PNG not really")
    (shots / "class02" / "notes.txt").write_text("hello")
    out = tmp_path / "out.fadapt"
    code, stdout, err = run_cli(capsys, "adapt", "--shots", shots, "--model", bundles["zero"], "--out", out)
    assert code == 0, err
    assert out.exists()
    assert "broken.png" in err and "notes.txt" in err and "warning" in err


# ----------------------------------------------------------------------------- user mistakes

def _shots_case(tmp_path, glyphs, case):
    shots = tmp_path / "shots"
    if case == "missing":
        return shots, shots
    shots.mkdir()
    if case == "empty":
        return shots, shots
    if case == "loose-files":
        shutil.copy(os.path.join(glyphs["shots"], "class00", "0.png"), shots / "a.png")
        return shots, shots
    shutil.copytree(os.path.join(glyphs["shots"], "class00"), shots / "cat")
    if case == "single-class":
        return shots, shots
    (shots / "dog").mkdir()
    if case == "empty-class":
        return shots, shots / "dog"
    (shots / "dog" / "1.png").write_bytes(b"garbage, not an image")
    (shots / "dog" / "2.jpg").write_bytes(b"")
    assert case == "unreadable-class"
    return shots, shots / "dog"


@pytest.mark.parametrize("case", ["missing", "empty", "loose-files", "single-class", "empty-class",
                                  "unreadable-class"])
def test_adapt_bad_shots(bundles, glyphs, tmp_path, capsys, case):
    shots, named = _shots_case(tmp_path, glyphs, case)
    out = tmp_path / "out.fadapt"
    code, stdout, err = run_cli(capsys, "adapt", "--shots", shots, "--model", bundles["zero"], "--out", out)
    assert_user_error(code, stdout, err, named, out)


def _bad_bundle(bundles, tmp_path, case):
    path = tmp_path / f"{case}.fadapt"
    data = open(bundles["zero"], "rb").read()
    if case == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif case == "tampered":
        with zipfile.ZipFile(bundles["zero"]) as archive:
            members = {n: archive.read(n) for n in archive.namelist()}
        params = bytearray(members["params.npz"])
        params[-100] ^= 0xFF
        members["params.npz"] = bytes(params)
        with zipfile.ZipFile(path, "w") as archive:
            for name, value in members.items():
                archive.writestr(name, value)
    elif case == "newer-version":
        rewrite_manifest(bundles["zero"], path, format_version=99)
    elif case == "not-a-bundle":
        path.write_text("hello")
    elif case == "missing":
        pass
    return path


@pytest.mark.parametrize("case", ["truncated", "tampered", "newer-version", "not-a-bundle", "missing"])
def test_adapt_bad_bundle(bundles, glyphs, tmp_path, capsys, case):
    model = _bad_bundle(bundles, tmp_path, case)
    out = tmp_path / "out.fadapt"
    code, stdout, err = run_cli(capsys, "adapt", "--shots", glyphs["shots"], "--model", model, "--out", out)
    assert_user_error(code, stdout, err, model, out)
    if case == "newer-version":
        assert "upgrade" in err
    code, stdout, err = run_cli(capsys, "info", model)
    assert_user_error(code, stdout, err, model)


def test_adapt_on_adapted_bundle_explains(adapted_bundle, glyphs, tmp_path, capsys):
    out = tmp_path / "again.fadapt"
    code, stdout, err = run_cli(capsys, "adapt", "--shots", glyphs["shots"], "--model", adapted_bundle, "--out", out)
    assert_user_error(code, stdout, err, adapted_bundle, out)
    assert "already adapted" in err and "meta" in err


def test_predict_on_meta_bundle_says_adapt_first(bundles, glyphs, capsys):
    code, stdout, err = run_cli(capsys, "predict", "--model", bundles["zero"], glyphs["queries"])
    assert_user_error(code, stdout, err, bundles["zero"])
    assert "fastadapt adapt" in err


def test_predict_bad_images(adapted_bundle, glyphs, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code, stdout, err = run_cli(capsys, "predict", "--model", adapted_bundle, bad)
    assert_user_error(code, stdout, err, bad)
    missing = tmp_path / "nope.png"
    code, stdout, err = run_cli(capsys, "predict", "--model", adapted_bundle, missing)
    assert_user_error(code, stdout, err, missing)
    sheet = tmp_path / "no" / "such" / "sheet.png"
    good = os.path.join(glyphs["queries"], "class00", "0.png")
    code, stdout, err = run_cli(capsys, "predict", "--model", adapted_bundle, good, "--sheet", sheet)
    assert_user_error(code, stdout, err, f"--sheet {sheet}", sheet)
    code, stdout, err = run_cli(capsys, "predict", "--model", adapted_bundle, good, "--sheet", tmp_path)
    assert_user_error(code, stdout, err, f"--sheet {tmp_path}: is a folder")
    # one bad image among good ones: skipped with a warning naming it
    code, stdout, err = run_cli(capsys, "predict", "--model", adapted_bundle, good, bad)
    assert code == 0 and "bad.png" in err and good in stdout


def test_adapt_bad_flags_and_paths(bundles, glyphs, tmp_path, capsys):
    out = tmp_path / "missing-folder" / "out.fadapt"
    code, stdout, err = run_cli(capsys, "adapt", "--shots", glyphs["shots"], "--model", bundles["zero"], "--out", out)
    assert_user_error(code, stdout, err, out, out)
    out = tmp_path / "out.fadapt"
    code, stdout, err = run_cli(capsys, "adapt", "--shots", glyphs["shots"], "--model", bundles["zero"],
                                "--lr", "-1", "--out", out)
    assert_user_error(code, stdout, err, "--lr", out)


def test_no_default_model_yet(glyphs, tmp_path, capsys):
    from fastadapt.runtime.loading import DEFAULT_MODEL

    if os.path.exists(DEFAULT_MODEL):
        pytest.skip("a default model is shipped")
    out = tmp_path / "out.fadapt"
    code, stdout, err = run_cli(capsys, "adapt", "--shots", glyphs["shots"], "--out", out)
    assert_user_error(code, stdout, err, "default.fadapt", out)
    assert "pass a model path" in err


def test_real_process_prints_one_line_and_exits_2(bundles, tmp_path):
    """The same through ``python -m fastadapt``: exit code 2, one line on stderr, no traceback."""
    out = tmp_path / "out.fadapt"
    done = subprocess.run([sys.executable, "-m", "fastadapt", "adapt", "--shots", str(tmp_path / "nothing"),
                           "--model", bundles["zero"], "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "nothing" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_evaluate_bundle_rejects_bad_shots_and_tasks(bundles, capsys):
    code, stdout, err = run_cli(capsys, "evaluate", bundles["zero"], "--data", "synthetic", "--tasks", "2",
                                "--shots", "0")
    assert_user_error(code, stdout, err, "--shots")
    code, stdout, err = run_cli(capsys, "evaluate", bundles["zero"], "--data", "synthetic", "--tasks", "1")
    assert_user_error(code, stdout, err, "--tasks must be from 2 to")  # as for a run folder: a CI needs 2


def test_evaluate_bundle_is_safeguarded_by_default_and_run_folders_refuse_the_flag(bundles, capsys, tmp_path):
    code, stdout, err = run_cli(capsys, "evaluate", bundles["zero"], "--data", "synthetic", "--tasks", "2",
                                "--query", "2", "--json")
    assert code == 0, err
    assert json.loads(stdout)["safeguard"] is True
    code, stdout, err = run_cli(capsys, "evaluate", bundles["zero"], "--data", "synthetic", "--tasks", "2",
                                "--query", "2", "--json", "--no-safeguard")
    assert json.loads(stdout)["safeguard"] is False
    (tmp_path / "run").mkdir()
    code, stdout, err = run_cli(capsys, "evaluate", tmp_path / "run", "--safeguard")
    assert_user_error(code, stdout, err, "--safeguard")
