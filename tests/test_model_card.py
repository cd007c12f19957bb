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


def test_a_recorded_evaluation_keeps_its_numbers_but_not_the_per_task_list(tmp_path):
    """The model card gets the summary row, not the per-task accuracies (600 numbers per
    evaluation would bloat every shipped bundle's manifest)."""
    import shutil

    from fastadapt.runtime.evaluate import record_evaluation

    path = tmp_path / "m.fadapt"
    shutil.copy(fastadapt.runtime.DEFAULT_MODEL, path)
    record_evaluation(str(path), {"ways": 5, "shots": 1, "tasks": 3, "accuracy_pct": 60.0, "ci95_pct": 1.5,
                                  "data": "omniglot", "per_task_accuracy": [0.5, 0.6, 0.7]})
    row = read_bundle(str(path)).manifest["evaluation"][-1]
    assert "per_task_accuracy" not in row and row["accuracy_pct"] == 60.0 and row["ci95_pct"] == 1.5


def test_info_json_of_a_manifest_holding_nan_is_strict_json(tmp_path, capsys):
    """A manifest's free-form fields may hold NaN or infinity (JSON written by Python);
    info --json prints them as null, so strict JSON readers (jq, JavaScript) can read its output."""
    import json

    from fastadapt.runtime.loading import DEFAULT_MODEL

    bundle = tmp_path / "nan.fadapt"
    rewrite_manifest(DEFAULT_MODEL, str(bundle),
                     evaluation=[{"accuracy_pct": 50.0, "extra": [float("nan")]}], provenance={"note": float("inf")})
    code, out, err = run_cli(capsys, "info", bundle, "--json")
    assert code == 0, err

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    row = json.loads(out, parse_constant=refuse)["evaluation"][-1]
    assert row["extra"] == [None] and row["accuracy_pct"] == 50.0
    assert json.loads(out)["provenance"]["note"] is None


def test_info_marks_only_safeguarded_evaluations_and_says_when_shots_are_kept(shapes, tmp_path, capsys):
    """An evaluation row says 'safeguarded' only when it was (safeguard true; a plain
    recipe's row, safeguard false, is what the torch evaluation compares with); an adapted model that keeps its
    shots (shots.npz) is not described as one that cannot add or remove classes."""
    rows = [{"accuracy_pct": 61.0, "ci95_pct": 1.0, "tasks": 11, "safeguard": False},
            {"accuracy_pct": 62.0, "ci95_pct": 1.0, "tasks": 12, "safeguard": True}]
    bundle = tmp_path / "rows.fadapt"
    rewrite_manifest(shapes, str(bundle), evaluation=rows)
    code, out, err = run_cli(capsys, "info", bundle)
    assert code == 0, err
    plain, guarded = (next(line for line in out.splitlines() if f"tasks {n}" in line) for n in (11, 12))
    assert "safeguarded" not in plain and "safeguarded" in guarded
    assert "shots.npz" in read_bundle(str(bundle)).manifest["members"] and "keeps no shots" not in out
