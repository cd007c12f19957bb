"""Built-in models by name: load("photos"), --model photos, info photos, evaluate photos, demo --model photos."""

import os

import pytest

import fastadapt
from fastadapt.errors import FastadaptError
from fastadapt.runtime import loading
from fastadapt.runtime.loading import BUILT_IN, DEFAULT_MODEL, model_path
from test_cli_runtime import run_cli

PHOTOS = os.path.join(loading.ASSETS, BUILT_IN["photos"])
needs_photos = pytest.mark.skipif(not os.path.exists(PHOTOS), reason="no photos model shipped in this checkout")


def test_default_and_characters_are_the_same_shipped_bundle():
    assert model_path(None) == model_path("characters") == DEFAULT_MODEL
    assert model_path("some/other.fadapt") == "some/other.fadapt"


def test_a_file_of_that_name_wins_over_the_built_in_but_a_folder_does_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "characters").mkdir()  # e.g. a folder of the user's pictures
    assert model_path("characters") == DEFAULT_MODEL
    (tmp_path / "photos").write_bytes(b"not a bundle")
    assert model_path("photos") == "photos"
    with pytest.raises(FastadaptError, match="photos"):
        fastadapt.load("photos")  # the local file, which is no bundle: refused, naming it


def test_a_missing_built_in_is_one_line_naming_it(monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "ASSETS", str(tmp_path))
    with pytest.raises(FastadaptError, match="built-in model 'photos' is not in this installation"):
        model_path("photos")


@needs_photos
def test_photos_model_loads_by_name_and_is_a_colour_model():
    assert model_path("photos") == PHOTOS
    model = fastadapt.load("photos")
    assert model.kind == "meta" and model.preprocess.channels == 3 and not model.preprocess.invert
    card = model.model_card()
    assert "non-commercial" in card["data"] and card["evaluation"]


@needs_photos
def test_info_prints_the_photos_model_card(capsys):
    code, out, err = run_cli(capsys, "info", "photos")
    assert code == 0, err
    assert "photos.fadapt" in out and "Tiny ImageNet" in out and "non-commercial" in out


def test_a_bare_unknown_name_says_which_built_in_names_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("default", "photo"):
        with pytest.raises(FastadaptError, match=f"^{name}: no such model file, and no built-in model .*characters, photos"):
            model_path(name)
    assert model_path("mine.fadapt") == "mine.fadapt"  # a path: read_bundle says it is missing


@needs_photos
def test_info_takes_the_model_as_an_option_too(capsys):
    code, out, err = run_cli(capsys, "info", "--model", "photos")
    assert code == 0, err
    assert "photos.fadapt" in out
    code, out, err = run_cli(capsys, "info", "photos", "--model", "characters")
    assert code != 0 and "two models" in err


@needs_photos
def test_demo_with_the_photos_model_learns_the_photos(capsys):
    code, out, err = run_cli(capsys, "demo", "--model", "photos")  # 5 shots: as the photos model was trained
    assert code == 0, err
    correct, total = map(int, out.split("accuracy ")[1].split(" ")[0].split("/"))
    assert total == 30 and correct >= 24  # 6 photos, 5 crops each; chance is 5 of 30
    assert "learned from 5 picture(s) each" in out


def test_the_shipped_characters_model_crops_non_square_pictures():
    """The default's preprocess.fit is crop (benchmarks/RESULTS.md section 6: symbols in 16:9 frames lose 17.5
    points padded, 5.2 stretched). A re-exported run says pad, its training --fit, so the bundle is set after export
    (scripts/set_preprocess_fit.py); the default of 2026-11-27 02:51 shipped without it, unnoticed."""
    assert fastadapt.load().preprocess.fit == "crop"


@needs_photos
def test_adapt_on_the_command_line_uses_the_colour_cue_by_default(tmp_path, capsys):
    """'fastadapt adapt' without --colour adapts with colour 'auto' (its documented default,
    as Model.adapt's), not 'off'; the mode is stored in the adapted model's report."""
    shots = os.path.join(loading.ASSETS, "photo_examples", "shots")
    out = tmp_path / "p.fadapt"
    code, stdout, err = run_cli(capsys, "adapt", "--model", "photos", "--shots", shots, "--out", out, "--steps", "0")
    assert code == 0, err
    assert fastadapt.load(str(out)).manifest["adaptation"]["colour"]["mode"] == "auto"


def test_evaluate_takes_a_run_folder_named_like_a_built_in_before_the_built_in(tmp_path, monkeypatch, capsys):
    """'fastadapt evaluate characters' with a folder 'characters' here evaluates that run
    folder (as its help says: a run folder of that name comes first), never the shipped bundle. The folder is no
    real run, so the run-folder path fails (or lacks torch); the bundle evaluation must not be reached."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "characters").mkdir()
    monkeypatch.setattr("fastadapt.runtime.evaluate_bundle",
                        lambda *a, **k: pytest.fail("evaluated the built-in bundle, not the run folder 'characters'"))
    code, out, err = run_cli(capsys, "evaluate", "characters", "--data",
                             os.path.join(loading.ASSETS, "examples", "shots"), "--tasks", 2)
    assert code == 2 and out == "" and "Traceback" not in err
