"""Server-side edge cases found in review: a zip bomb or a broken zip as --data, damaged provenance
records at export, an evaluations.jsonl that cannot be appended to, and Ctrl-C before anything was saved."""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile

import numpy as np
import pytest
from PIL import Image

import fastadapt.data.classes as classes
from fastadapt.data import load_class_folders
from fastadapt.errors import FastadaptError, FastadaptWarning
from fastadapt.images import Preprocess

from conftest import copy_of_run, finished_run
from sample_data import write_glyph_folders
from test_outputs import one_error, run_cli

SPEC = Preprocess(size=28, channels=1, invert=True)
TINY = dict(data="synthetic", algorithm="fomaml", width=4, meta_batch=2, query=2, val_tasks=2, val_every=3,
            inner_steps=1, device="cpu")
TRAIN_FLAGS = ["--data", "synthetic", "--width", "4", "--meta-batch", "2", "--query", "2", "--val-tasks", "2",
               "--val-every", "3", "--inner-steps", "1", "--device", "cpu", "--quiet"]


# ----------------------------------------------------------------------------- --data zips

def glyph_zip(tmp_path, extra: dict | None = None, compression=zipfile.ZIP_DEFLATED):
    """3 classes x 4 glyph PNGs in a zip, plus ``extra`` members {name: bytes}."""
    root = write_glyph_folders(tmp_path / "d", 3, 4)
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(root.rglob("*.png")):
            z.write(p, p.relative_to(root).as_posix())
        for name, data in (extra or {}).items():
            z.writestr(name, data, compress_type=compression)
    return archive, max(p.stat().st_size for p in root.rglob("*.png"))


def noise_png(side: int = 96) -> bytes:
    """A valid PNG that does not compress: larger than any glyph."""
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_zip_member_over_the_image_limit_is_skipped_unread(tmp_path, monkeypatch, capsys):
    big = noise_png()
    archive, glyph = glyph_zip(tmp_path, {"class00/big.png": big})
    limit = 4 * glyph
    assert glyph < limit < len(big)
    monkeypatch.setattr(classes, "MAX_STREAM_BYTES", limit)  # a 3 GB member of zeros, in miniature
    opened, real_open = [], zipfile.ZipFile.open

    def spy(self, member, *args, **kwargs):
        opened.append(getattr(member, "filename", member))
        return real_open(self, member, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    data = load_class_folders(str(archive), SPEC)
    assert data.num_images == 12  # the 12 glyphs; the oversized (valid) image is left out
    assert "class00/big.png" not in opened  # refused on its declared size, before decompressing anything
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image" in err and "big.png" in err and "declares" in err


def test_a_zip_member_whose_header_understates_its_size_is_not_read_past_it(tmp_path, monkeypatch, capsys):
    big = noise_png()
    archive, glyph = glyph_zip(tmp_path, {"class00/big.png": big})
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo("class00/big.png")
    # the uncompressed size in the central directory (offset 24 of its entry, whose name starts at 46;
    # the directory follows all the data) and in the local header (offset 22)
    entry = raw.rfind(b"class00/big.png") - 46
    struct.pack_into("<I", raw, entry + 24, 100)
    struct.pack_into("<I", raw, info.header_offset + 22, 100)
    archive.write_bytes(bytes(raw))
    monkeypatch.setattr(classes, "MAX_STREAM_BYTES", 4 * glyph)
    data = load_class_folders(str(archive), SPEC)
    assert data.num_images == 12
    assert "skipped 1 unreadable image" in capsys.readouterr().err


def test_a_zip_member_compressed_without_an_output_bound_is_skipped(tmp_path, capsys):
    """bzip2 and LZMA members inflate a whole compressed piece at once: a few bytes can become gigabytes."""
    archive, _ = glyph_zip(tmp_path, {"class00/extra.png": noise_png()}, compression=zipfile.ZIP_BZIP2)
    data = load_class_folders(str(archive), SPEC)
    assert data.num_images == 12
    err = capsys.readouterr().err
    assert "extra.png" in err and "compression method 12" in err


def test_a_zip_with_a_broken_directory_is_one_line_naming_data(tmp_path, capsys):
    archive, _ = glyph_zip(tmp_path)
    raw = bytearray(archive.read_bytes())
    directory = raw.find(b"PK\x01\x02")
    raw[directory:directory + 4] = b"XXXX"  # "Bad magic number for central directory"
    archive.write_bytes(bytes(raw))
    with pytest.raises(FastadaptError, match="not a readable zip .*--data"):
        load_class_folders(str(archive), SPEC)
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", *TRAIN_FLAGS[2:], "--data", archive, "--out", out,
                                "--iterations", "1")
    one_error(code, stdout, err, "data.zip: not a readable zip", "--data")
    assert not out.exists()


# ----------------------------------------------------------------------------- run folders

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return finished_run(tmp_path_factory, checkpoint_every=2, **TINY)


@pytest.fixture
def run(trained, tmp_path):
    return copy_of_run(trained, tmp_path)


@pytest.fixture
def exported(monkeypatch):
    """export_run up to the bundle: what it would put in it, without tracing ONNX."""
    import fastadapt.meta_train.export_run as export_run

    captured = {}

    def capture(out, model, spec, recipe, params, preprocess, provenance, evaluation, **kwargs):
        captured.update(provenance=provenance, evaluation=evaluation)
        return {}

    monkeypatch.setattr(export_run, "export_bundle", capture)
    monkeypatch.setattr(export_run, "verification_task", lambda config: None)
    return lambda rundir: (export_run.export_run(str(rundir), "unused.fadapt"), captured)[1]


@pytest.mark.parametrize("summary", ["{oops", "[1]", "{\"best\": NaN}", "\xff"])
def test_a_damaged_summary_is_left_out_of_the_provenance_with_a_warning(run, exported, capsys, summary):
    (run / "summary.json").write_bytes(summary.encode("latin-1"))
    with pytest.warns(FastadaptWarning, match="summary.json: .*left out of the bundle's provenance"):
        bundle = exported(run)
    (stage,) = bundle["provenance"]["stages"]
    assert stage["iterations"] == 2 and "best" not in stage
    assert [s for s in bundle["provenance"]["skipped"] if "summary.json" in s]


def test_damaged_evaluation_lines_are_left_out_and_the_rest_kept(run, exported):
    good = {"accuracy_pct": 50.0, "ci95_pct": 1.0}
    (run / "evaluations.jsonl").write_text("{oops\n" + json.dumps(good) + "\n[1]\n{\"accuracy_pct\": NaN}\n\n")
    with pytest.warns(FastadaptWarning, match="evaluations.jsonl: 3 damaged line\\(s\\), first: line 1"):
        bundle = exported(run)
    assert bundle["evaluation"] == [good]
    assert any("evaluations.jsonl" in s for s in bundle["provenance"]["skipped"])
    assert bundle["provenance"]["stages"][0]["iterations"] == 2  # the intact summary is still there


@pytest.mark.parametrize("field", ["accuracy_pct", "ci95_pct", "adapt_ms_median"])
def test_an_evaluation_line_whose_number_is_text_is_left_out(run, exported, field):
    """The manifest refuses such a row; export used to fail on it at its very end."""
    good = {"accuracy_pct": 50.0, "ci95_pct": 1.0}
    (run / "evaluations.jsonl").write_text(json.dumps({**good, field: "high"}) + "\n" + json.dumps(good) + "\n")
    with pytest.warns(FastadaptWarning, match="evaluations.jsonl: 1 damaged line\\(s\\), first: line 1"):
        bundle = exported(run)
    assert bundle["evaluation"] == [good]


def test_an_evaluations_folder_is_left_out_at_export(run, exported):
    (run / "evaluations.jsonl").mkdir()
    with pytest.warns(FastadaptWarning, match="evaluations.jsonl: not a regular file"):
        bundle = exported(run)
    assert bundle["evaluation"] == []


def test_intact_records_export_without_skipped(run, exported):
    (run / "evaluations.jsonl").write_text(json.dumps({"accuracy_pct": 50.0}) + "\n")
    bundle = exported(run)
    assert "skipped" not in bundle["provenance"] and bundle["evaluation"] == [{"accuracy_pct": 50.0}]


@pytest.fixture
def no_evaluation(monkeypatch):
    import fastadapt.meta_train.evaluate as evaluate

    def reached(*args, **kwargs):
        raise AssertionError("evaluated before refusing")

    monkeypatch.setattr(evaluate, "evaluate_classification", reached)


def test_evaluate_refuses_an_evaluations_folder_before_evaluating(run, capsys, no_evaluation):
    (run / "evaluations.jsonl").mkdir()
    code, out, err = run_cli(capsys, "evaluate", run, "--tasks", "2")
    one_error(code, out, err, "evaluations.jsonl: is a folder", "move it")


def test_evaluate_never_appends_through_a_link(run, tmp_path, capsys, no_evaluation):
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("keep\n")
    os.symlink(elsewhere, run / "evaluations.jsonl")
    code, out, err = run_cli(capsys, "evaluate", run, "--tasks", "2")
    one_error(code, out, err, "evaluations.jsonl: is a symbolic link")
    assert elsewhere.read_text() == "keep\n"


def test_evaluate_appends_and_a_late_failure_keeps_the_result(run, tmp_path, monkeypatch):
    import fastadapt.meta_train.evaluate as evaluate

    result = evaluate.evaluate_run(str(run), tasks=2, query=2, device="cpu")
    rows = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["accuracy_pct"] == result["accuracy_pct"]
    # swapped for a link while evaluating: still not written through, and the result is returned
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("keep\n")
    real = evaluate.evaluate_classification

    def swap(*args, **kwargs):
        os.replace(run / "evaluations.jsonl", tmp_path / "moved.jsonl")
        os.symlink(elsewhere, run / "evaluations.jsonl")
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_classification", swap)
    with pytest.warns(FastadaptWarning, match="evaluations.jsonl: the result was not recorded"):
        again = evaluate.evaluate_run(str(run), tasks=2, query=2, device="cpu")
    assert again["accuracy_pct"] == result["accuracy_pct"] and elsewhere.read_text() == "keep\n"


# ----------------------------------------------------------------------------- Ctrl-C

def interrupt(monkeypatch, name: str):
    import fastadapt.meta_train.trainer as trainer

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, name, stop)


def test_ctrl_c_while_loading_leaves_no_folder_and_no_resume_advice(tmp_path, monkeypatch, capsys):
    interrupt(monkeypatch, "make_samplers")
    out = tmp_path / "sigrun"
    code, stdout, err = run_cli(capsys, "train", *TRAIN_FLAGS, "--out", out, "--iterations", "4")
    assert code == 130 and "Traceback" not in err
    assert "nothing was saved" in err and "--resume" not in err
    assert not out.exists()


def test_ctrl_c_in_a_folder_given_by_the_user_keeps_the_folder(tmp_path, monkeypatch, capsys):
    interrupt(monkeypatch, "make_samplers")
    out = tmp_path / "mine"
    out.mkdir()
    code, stdout, err = run_cli(capsys, "train", *TRAIN_FLAGS, "--out", out, "--iterations", "4")
    assert code == 130 and "nothing was saved" in err and out.is_dir()


def test_ctrl_c_after_a_checkpoint_advises_resume(run, monkeypatch, capsys):
    interrupt(monkeypatch, "meta_gradient")
    code, stdout, err = run_cli(capsys, "train", "--out", run, "--resume", "--iterations", "4", "--quiet")
    assert code == 130 and f"fastadapt train --out {run} --resume" in err
