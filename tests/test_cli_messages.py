"""Messages and listings on the device side, from hostile review 6: warnings and errors escape what a file name
could do to a terminal, advice that names a built-in model can be followed, a mistyped flag is refused before
any image is decoded, `info` shows the colour decision, and predict follows linked subfolders."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

import fastadapt
from fastadapt.errors import FastadaptError
from fastadapt.runtime import model as model_module
from test_builtin_models import needs_photos
from test_cli_edges import EXAMPLES, STAR
from test_cli_runtime import assert_user_error, run_cli



def test_warnings_and_errors_escape_control_characters_in_file_names(shapes, tmp_path, capsys):
    folder = tmp_path / "q"
    folder.mkdir()
    (folder / "q\x1b[2J.png").write_bytes(b"not an image")
    code, out, err = run_cli(capsys, "predict", "--model", shapes, folder)
    assert code != 0 and "\x1b" not in err, err
    assert "warning: " in err and "error: " in err and "q\\x1b[2J.png" in err


def test_an_adapted_built_in_names_the_built_in_to_adapt_instead(tmp_path, capsys):
    adapted = tmp_path / "a.fadapt"
    assert run_cli(capsys, "adapt", "--shots", EXAMPLES / "shots", "--out", adapted)[0] == 0
    code, out, err = run_cli(capsys, "adapt", "--model", adapted, "--shots", EXAMPLES / "shots",
                             "--out", tmp_path / "b.fadapt")
    assert_user_error(code, out, err, "--model characters", tmp_path / "b.fadapt")
    assert 'fastadapt.load("characters")' in err
    assert fastadapt.load("characters").kind == "meta"  # the advice can be followed


def test_another_meta_bundle_is_named_by_its_file(tmp_path):
    copy = tmp_path / "mine.fadapt"
    copy.write_bytes(open(fastadapt.runtime.DEFAULT_MODEL, "rb").read())
    adapted = fastadapt.load(str(copy)).adapt(str(EXAMPLES / "shots"))
    with pytest.raises(FastadaptError, match=r"--model mine\.fadapt; Python: fastadapt\.load\('mine\.fadapt'\)"):
        adapted.adapt(str(EXAMPLES / "shots"))


@pytest.fixture
def no_decoding(monkeypatch):
    def decoded(*args, **kwargs):
        raise AssertionError("shots were decoded before the arguments were checked")

    monkeypatch.setattr(model_module, "load_shots", decoded)


@pytest.mark.parametrize("argument, needle", [({"colour": "bogus"}, "colour must be"), ({"steps": "x"}, "steps must be"),
                                              ({"lr": -1.0}, "lr must be"), ({"safeguard": "yes"}, "safeguard must be")])
def test_bad_arguments_are_refused_before_the_shots_are_decoded(no_decoding, argument, needle):
    with pytest.raises(FastadaptError, match=needle):
        fastadapt.load().adapt(str(EXAMPLES / "shots"), **argument)


def test_bad_arguments_to_add_classes_are_refused_before_decoding(monkeypatch):
    adapted = fastadapt.load().adapt(str(EXAMPLES / "shots"))
    monkeypatch.setattr(model_module, "load_shots", lambda *a, **k: pytest.fail("decoded before the check"))
    with pytest.raises(FastadaptError, match="steps must be"):
        adapted.add_classes({"dot": [STAR]}, steps="many")


def _colour_folder(root, colours: dict, shots: int = 3):
    rng = np.random.default_rng(0)
    for label, rgb in colours.items():
        (root / label).mkdir(parents=True)
        for i in range(shots):
            image = np.clip(np.array(rgb) + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / label / f"{i}.png")
    return root


@needs_photos
def test_info_shows_the_colour_decision_of_an_adapted_bundle(tmp_path, capsys):
    shots = _colour_folder(tmp_path / "shots", {"red": (200, 30, 30), "blue": (30, 30, 200)})
    for mode in ("auto", "off"):
        out_path = tmp_path / f"{mode}.fadapt"
        assert run_cli(capsys, "adapt", "--model", "photos", "--shots", shots, "--colour", mode, "--out", out_path)[0] == 0
        code, out, err = run_cli(capsys, "info", out_path)
        row = next(line for line in out.splitlines() if line.strip().startswith("adapted "))
        assert "1 step at lr" in row
        assert ("colour: off" in row) if mode == "off" else ("colour: used" in row or "colour: not used (" in row)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_predict_follows_linked_subfolders(shapes, tmp_path, capsys):
    real, folder = tmp_path / "real", tmp_path / "q"
    real.mkdir(), folder.mkdir()
    for name in ("a.png", "b.png"):
        (real / name).write_bytes(open(STAR, "rb").read())
    (folder / "c.png").write_bytes(open(STAR, "rb").read())
    try:
        os.symlink(real, folder / "linked")
    except OSError:
        pytest.skip("symbolic links are not allowed here")
    code, out, err = run_cli(capsys, "predict", "--model", shapes, folder)
    assert code == 0, err
    assert sorted(line.split("\t")[0] for line in out.splitlines()) == [
        str(folder / "c.png"), str(folder / "linked" / "a.png"), str(folder / "linked" / "b.png")]


# the needles are the flags: the parser's own wording around them may change between Click versions
@pytest.mark.parametrize("args, needle", [(["predict", "--bogus"], "--bogus"), (["demo", "--shots", "7"], "'--shots'"),
                                          (["adapt", "--shots", "x"], "'--out'"),
                                          (["train", "--ways", "abc", "--out", "r"], "'--ways'")])
def test_parser_errors_are_one_line_naming_the_flag_and_the_help(capsys, args, needle):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines() == [f"error: {err.splitlines()[0][len('error: '):]}"] and needle in err
    assert f" {args[0]} --help')" in err  # '(see 'fastadapt predict --help')', or as this process was started


def test_help_and_version_still_exit_0(capsys):
    for args in (["--version"], ["info", "--help"]):
        code, out, err = run_cli(capsys, *args)
        assert code == 0 and out and err == ""


def test_a_folder_given_as_a_model_is_told_apart_from_a_run(tmp_path, capsys):
    code, out, err = run_cli(capsys, "info", EXAMPLES / "shots")
    assert_user_error(code, out, err, "is a folder, not a .fadapt bundle")
    assert "export" not in err.split("bundle", 1)[1].split("made by")[0]  # a data folder: no 'fastadapt export' advice
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    code, out, err = run_cli(capsys, "info", run)
    assert_user_error(code, out, err, f"fastadapt export {run}")


def test_a_truncated_jpeg_is_called_damaged_not_an_unknown_format(tmp_path):
    buffer = io.BytesIO()
    Image.open(STAR).convert("L").save(buffer, "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])  # its header is whole, its pixels are not
    with pytest.raises(FastadaptError, match=r"cut\.jpg: not a readable image: the JPEG file is damaged .*save it again"):
        fastadapt.load().adapt({"a": [str(cut)], "b": [STAR]})


def test_under_torchrun_an_error_line_names_the_rank(tmp_path, capsys, monkeypatch):
    """With WORLD_SIZE > 1 every process prints its own error; 'rank N:' says whose it is.
    A single process (WORLD_SIZE unset or 1) prints no rank."""
    missing = tmp_path / "missing.fadapt"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, out, err = run_cli(capsys, "info", missing)
    assert code == 2 and err.startswith("error: rank 1: ") and "missing.fadapt" in err
    monkeypatch.setenv("WORLD_SIZE", "1")
    code, out, err = run_cli(capsys, "info", missing)
    assert code == 2 and err.startswith("error: ") and "rank" not in err


def test_predict_sheet_suffix_is_case_insensitive(shapes, tmp_path, capsys):
    """--sheet SHEET.PNG is a PNG name too (check_out compares the lower-cased name, as the
    sheet writer does); refusing it would fail a valid command."""
    sheet = tmp_path / "SHEET.PNG"
    code, out, err = run_cli(capsys, "predict", "--model", shapes, STAR, "--sheet", sheet)
    assert code == 0, err
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_interrupted_train_removes_only_a_run_folder_it_created(tmp_path, capsys):
    """Ctrl-C before a run began removes the run folder (holding only its lock file) when
    this train created it, never a folder the user made beforehand and passed as --out."""
    from fastadapt.cli.train_commands import _interrupted
    from fastadapt.meta_train.run import LOCK_NAME

    for created in (False, True):
        run = tmp_path / f"run-{created}"
        run.mkdir()
        (run / LOCK_NAME).write_text("")
        _interrupted(str(run), created)
        assert run.exists() != created
        assert "nothing was saved" in capsys.readouterr().err


def test_train_out_dash_is_refused_as_stdout_not_made_a_folder(tmp_path, monkeypatch):
    """'--out -' means standard output by Unix convention; for train, whose --out is a run
    folder, it is refused rather than a folder named '-' being made in the current folder."""
    from fastadapt.cli.train_commands import check_run_out

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FastadaptError, match="--out -"):
        check_run_out("-", [])
    assert not (tmp_path / "-").exists()
