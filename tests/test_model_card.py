"""The model card travels in the bundle: validated on load, printed by `fastadapt info`, inherited on adapt."""

from __future__ import annotations

import pytest

import fastadapt
from conftest import glyph_images, rewrite_manifest
from fastadapt.bundle import read_bundle
from fastadapt.errors import FastadaptError
from fastadapt.manifest import CARD_SECTIONS
from test_cli_runtime import assert_user_error, run_cli


def test_the_shipped_model_carries_its_card_and_info_prints_it(capsys):
    card = fastadapt.load().manifest["model_card"]
    assert list(card) == list(CARD_SECTIONS)
    assert "Handwritten characters" in card["intended_use"] and "Photos" in card["not_for"]
    code, out, err = run_cli(capsys, "info")
    assert code == 0, err
    assert "model card" in out and "intended use: Handwritten characters" in out and "not for: Photos" in out
    assert all(len(line) <= 110 for line in out.split("model card", 1)[1].split("evaluation\n", 1)[0].splitlines())


def test_adapted_bundles_inherit_the_card(tmp_path, capsys):
    path = tmp_path / "mine.fadapt"
    fastadapt.load().adapt(glyph_images(2, 2, seed=3)).save(str(path))
    assert fastadapt.load(str(path)).manifest["model_card"] == fastadapt.load().manifest["model_card"]
    code, out, err = run_cli(capsys, "info", path)
    assert code == 0, err
    assert "intended use: Handwritten characters" in out


@pytest.mark.parametrize("card, match", [
    ("good for cats", "model_card must be an object"),
    ({"intended_use": ["cats"]}, "model_card.intended_use must be a text"),
    ({"intended_use": "x" * 9000}, "at most 8000 characters"),
    ({f"s{i}": "x" for i in range(40)}, "at most 32 sections"),
])
def test_a_malformed_card_is_refused(tmp_path, capsys, card, match):
    path = tmp_path / "bad.fadapt"
    rewrite_manifest(fastadapt.load().path, str(path), model_card=card)
    with pytest.raises(FastadaptError, match=match):
        read_bundle(str(path))
    assert_user_error(*run_cli(capsys, "info", path), "model_card")


def test_card_text_is_printed_escaped(tmp_path, capsys):
    path = tmp_path / "escape.fadapt"
    rewrite_manifest(fastadapt.load().path, str(path), model_card={"intended_use": "cats\x1b[2J", "extra": "more"})
    code, out, err = run_cli(capsys, "info", path)
    assert code == 0, err
    assert "\x1b" not in out and "intended use: cats\\x1b[2J" in out and "extra: more" in out


def test_recording_the_same_evaluation_twice_keeps_one_row(tmp_path):
    import shutil

    from fastadapt.runtime.evaluate import record_evaluation

    path = tmp_path / "m.fadapt"
    shutil.copy(fastadapt.runtime.DEFAULT_MODEL, path)
    before = len(read_bundle(str(path)).manifest.get("evaluation") or [])
    row = {"ways": 5, "shots": 1, "query": 15, "tasks": 2, "seed": 0, "accuracy_pct": 50.0, "data": "/x/omniglot",
           "adapt_ms_median": 1.0}
    record_evaluation(str(path), row)
    record_evaluation(str(path), {**row, "adapt_ms_median": 2.0})  # the same evaluation, timed again
    rows = read_bundle(str(path)).manifest["evaluation"]
    assert len(rows) == before + 1 and rows[-1]["adapt_ms_median"] == 2.0 and rows[-1]["data"] == "omniglot"
    record_evaluation(str(path), {**row, "tasks": 3})  # a different evaluation: listed beside it
    assert len(read_bundle(str(path)).manifest["evaluation"]) == before + 2
