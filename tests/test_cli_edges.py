"""CLI edge cases found in review: predict --csv with a huge --top, evaluate --record on signed or built-in
bundles, keygen next to an old OUT.pub, the too-few-classes advice of evaluate, help texts, and output of
file names that are not valid UTF-8. Each runs the shipped characters model (no torch, a few seconds)."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys

import pytest

import fastadapt
from conftest import ROOT
from sample_data import REPO
from test_cli_runtime import run_cli  # the one in-process CLI runner
from test_outputs import one_error

EXAMPLES = REPO / "examples"
DEFAULT = REPO / "fastadapt" / "assets" / "default.fadapt"  # the shipped characters model (a meta bundle)
STAR = str(EXAMPLES / "queries" / "star" / "star_1.png")

pytestmark = pytest.mark.skipif(not DEFAULT.exists(), reason="no default model shipped")



@pytest.fixture
def no_evaluation(monkeypatch):
    """evaluate --record must refuse before evaluating or rewriting anything: both fail the test if reached."""
    def reached(*args, **kwargs):
        raise AssertionError("evaluated or recorded although --record should have been refused up front")

    monkeypatch.setattr("fastadapt.runtime.evaluate_bundle", reached)
    monkeypatch.setattr("fastadapt.runtime.evaluate.record_evaluation", reached)


def test_predict_csv_top_is_capped_at_the_classes(shapes, capsys):
    code, out, err = run_cli(capsys, "predict", "--model", shapes, STAR, "--csv", "--top", 10**5)  # unfixed: 100,000 column pairs
    assert code == 0, err
    header, row = list(csv.reader(io.StringIO(out)))
    assert len(header) == len(row) == 5 + 2 * 8 + 1  # 8 classes, as the text and --json outputs show, and "error"
    assert header[-3:-1] == ["top8_label", "top8_probability"] and row[-3] != ""


def test_evaluate_record_refuses_a_signed_bundle(tmp_path, capsys, no_evaluation):
    key, signed = tmp_path / "k", tmp_path / "signed.fadapt"
    assert run_cli(capsys, "keygen", "--out", key)[0] == 0
    assert run_cli(capsys, "sign", DEFAULT, "--key", key, "--out", signed)[0] == 0
    before = signed.read_bytes()
    code, out, err = run_cli(capsys, "evaluate", signed, "--data", EXAMPLES / "shots", "--protocol", "all",
                             "--tasks", 2, "--query", 2, "--record")
    one_error(code, out, err, "--record", str(signed), "signed", "fastadapt sign")
    assert signed.read_bytes() == before


@pytest.mark.parametrize("name", ["photos", "characters"])
def test_evaluate_record_refuses_a_built_in_model(name, capsys, no_evaluation):
    code, out, err = run_cli(capsys, "evaluate", name, "--data", EXAMPLES / "shots", "--record")
    one_error(code, out, err, "--record", name, "built-in", "copy it to a file", f"fastadapt info {name}")


def test_evaluate_record_refuses_a_path_into_the_installed_assets(capsys, no_evaluation):
    code, out, err = run_cli(capsys, "evaluate", DEFAULT, "--data", EXAMPLES / "shots", "--record")
    one_error(code, out, err, "--record", "built-in")


def test_evaluate_record_still_records_into_an_unsigned_copy(tmp_path, capsys):
    copy = tmp_path / "copy.fadapt"
    shutil.copyfile(DEFAULT, copy)
    code, out, err = run_cli(capsys, "evaluate", copy, "--data", EXAMPLES / "shots", "--protocol", "all",
                             "--tasks", 2, "--query", 2, "--record")
    assert code == 0, err
    assert fastadapt.load(str(copy)).manifest["evaluation"][-1]["tasks"] == 2


def test_keygen_refuses_an_existing_pub_before_writing_anything(tmp_path, capsys):
    key = tmp_path / "k2"
    (tmp_path / "k2.pub").write_text("old\n")
    code, out, err = run_cli(capsys, "keygen", "--out", key)
    one_error(code, out, err, "--out", "k2.pub", "already exists", "another --out")
    assert not key.exists() and (tmp_path / "k2.pub").read_text() == "old\n"


def test_evaluate_too_few_classes_advice_does_not_loop(capsys):
    """The split comes from the model's training --ways (20 for characters): lowering --ways cannot help."""
    for ways in ([], ["--ways", 2]):
        code, out, err = run_cli(capsys, "evaluate", "characters", "--data", EXAMPLES / "shots", "--tasks", 2, *ways)
        line = one_error(code, out, err, "8 classes are too few", "--protocol all")
        assert "use --ways" not in line
    code, out, err = run_cli(capsys, "evaluate", "characters", "--data", EXAMPLES / "shots", "--protocol", "all",
                             "--tasks", 2, "--query", 2)
    assert code == 0, err  # what the advice names works


def test_help_texts_name_the_right_threshold_and_export_argument(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps --help at COLUMNS
    code, out, _ = run_cli(capsys, "predict", "--help")
    assert code == 0
    assert "-0.5" not in out and "calibrated one" in out and "fastadapt info MODEL" in out
    code, out, _ = run_cli(capsys, "export", "--help")
    assert code == 0 and "with --format onnx, an adapted .fadapt" in out


def _strict(*args) -> subprocess.CompletedProcess:
    """``fastadapt ARGS`` in a real process whose stdout refuses what UTF-8 cannot encode."""
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONIOENCODING": "utf-8:strict"}
    return subprocess.run([sys.executable, "-m", "fastadapt", *map(os.fsencode, args)], capture_output=True,
                          env=env, timeout=120)


BYTE_NAMES = pytest.mark.skipif(sys.platform != "linux", reason="file names of arbitrary bytes")


@BYTE_NAMES
def test_undecodable_image_names_are_escaped_in_csv(shapes, tmp_path):
    image = os.path.join(os.fsencode(tmp_path), b"st\xffar.png")
    shutil.copyfile(STAR, image)
    done = _strict("predict", "--model", shapes, image, "--csv")
    assert done.returncode == 0, done.stderr.decode()
    row = list(csv.reader(io.StringIO(done.stdout.decode())))[1]
    assert row[0].endswith("st\\udcffar.png") and row[1] == "star"  # as the text output writes it


@BYTE_NAMES
def test_undecodable_out_name_is_escaped_in_the_wrote_line(tmp_path):
    out = os.path.join(os.fsencode(tmp_path), b"o\xffut.fadapt")
    done = _strict("adapt", "--shots", EXAMPLES / "shots", "--out", out, "--steps", "0")
    assert done.returncode == 0, done.stderr.decode()
    assert os.path.exists(out) and done.stdout.decode().splitlines()[-1].endswith("o\\udcffut.fadapt")


def test_a_whole_number_flag_states_its_limit_in_full(capsys):
    code, out, err = run_cli(capsys, "evaluate", "characters", "--data", str(EXAMPLES / "shots"), "--seed", "99999999999")
    assert code != 0 and "--seed must be from 0 to 4294967295, got 99999999999" in err, err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a folder nobody can create files in: Linux /proc")
def test_an_out_folder_that_refuses_files_fails_before_adapting(capsys, monkeypatch):
    """Permission bits cannot tell (root may write anywhere they allow): a probe file can."""
    from fastadapt.runtime.model import Model

    monkeypatch.setattr(Model, "adapt", lambda *a, **k: pytest.fail("adapted before checking --out"))
    code, out, err = run_cli(capsys, "adapt", "--shots", str(EXAMPLES / "shots"), "--out", "/proc/x.fadapt")
    one_error(code, out, err, "--out /proc/x.fadapt: cannot write in folder /proc")


def test_evaluate_checkpoint_on_a_bundle_is_refused_not_ignored(capsys):
    code, out, err = run_cli(capsys, "evaluate", "characters", "--data", str(EXAMPLES / "shots"), "--checkpoint", "last")
    one_error(code, out, err, "--checkpoint last: applies to run folders")


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links")
def test_a_dangling_image_link_in_a_predicted_folder_is_named_not_skipped_silently(shapes, tmp_path, capsys):
    shutil.copyfile(STAR, tmp_path / "star.png")
    os.symlink(tmp_path / "gone" / "missing.png", tmp_path / "link.png")
    code, out, err = run_cli(capsys, "predict", "--model", shapes, str(tmp_path))
    assert code == 0 and "star.png" in out and "link.png" not in out
    assert "link.png: a symbolic link to a file that does not exist; skipped" in err


def test_predict_sheet_not_named_png_fails_before_any_answer(shapes, tmp_path, capsys):
    """--sheet's .png rule is checked before predicting; checked only when the sheet is
    drawn, the answers were printed and then the command failed, exit 2 with results on stdout."""
    code, out, err = run_cli(capsys, "predict", "--model", shapes, STAR, "--sheet", tmp_path / "sheet.jpg")
    one_error(code, out, err, "--sheet", ".png")
    assert out == "" and not (tmp_path / "sheet.jpg").exists()


def test_adapt_out_over_its_own_model_is_refused_and_the_model_kept(tmp_path, capsys):
    """--out may not be the --model it reads; else the meta model is replaced by the adapted
    one (a meta model is lost, and the next 'adapt --model' of it is refused as already adapted)."""
    model = tmp_path / "meta.fadapt"
    shutil.copyfile(DEFAULT, model)
    before = model.read_bytes()
    code, out, err = run_cli(capsys, "adapt", "--shots", EXAMPLES / "shots", "--model", model, "--out", model)
    one_error(code, out, err, "--out")
    assert model.read_bytes() == before and out == ""


def test_evaluate_record_refuses_a_bundle_replaced_during_the_evaluation(shapes, tmp_path, capsys, monkeypatch):
    """The result belongs to the model that was evaluated; when another model was written
    to the path meanwhile, --record records nothing (not the first model's accuracy on the second's card)."""
    copy = tmp_path / "copy.fadapt"
    shutil.copyfile(DEFAULT, copy)
    real = fastadapt.runtime.evaluate_bundle

    def evaluate_then_replace(*args, **kwargs):
        result = real(*args, **kwargs)
        shutil.copyfile(shapes, copy)  # another model (adapted: other parameters) written there meanwhile
        return result

    monkeypatch.setattr("fastadapt.runtime.evaluate_bundle", evaluate_then_replace)
    code, out, err = run_cli(capsys, "evaluate", copy, "--data", EXAMPLES / "shots", "--protocol", "all",
                             "--tasks", 2, "--query", 2, "--record")
    one_error(code, out, err, "--record")
    assert copy.read_bytes() == open(shapes, "rb").read()


def test_evaluate_json_prints_the_summary_without_the_per_task_list(capsys):
    """--json prints the summary object (as --record stores it), not the accuracy of every
    task (600 numbers by default)."""
    import json

    code, out, err = run_cli(capsys, "evaluate", "characters", "--data", EXAMPLES / "shots", "--protocol", "all",
                             "--tasks", 2, "--query", 2, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["tasks"] == 2 and 0 <= result["accuracy_pct"] <= 100 and "per_task_accuracy" not in result


def test_predict_top_1_text_has_no_list_of_other_classes(shapes, capsys):
    """The text line's '(other classes ...)' part lists top[1:], so with --top 1 there is none:
    'path<TAB>label<TAB>p%' only (the best class is not repeated)."""
    code, out, err = run_cli(capsys, "predict", "--model", shapes, STAR, "--top", 1)
    assert code == 0, err
    path, label, percent = out.rstrip("\n").split("\t")
    assert path == STAR and label == "star" and percent.endswith("%")
