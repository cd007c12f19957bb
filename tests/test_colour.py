"""The colour cue (runtime/colour.py): chosen by leave-one-shot-out, stored in adapted bundles, the same in
predict, save/load, add_classes, unknown scores and the standalone ONNX export; never for grey models."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

import fastadapt
from conftest import glyph_images, rewrite_manifest
from fastadapt.errors import FastadaptError
from fastadapt.images import Preprocess, preprocess, to_float
from fastadapt.runtime import loading
from fastadapt.runtime import colour as colour_cue
from fastadapt.runtime import unknown
from fastadapt.standalone import probabilities_agree
from test_builtin_models import needs_photos
from test_cli_runtime import assert_user_error, run_cli

EXAMPLES = os.path.join(loading.ASSETS, "photo_examples")  # crops of photos, shipped for the demo


def examples(part: str, per_class: int | None = None) -> dict:
    """{label: [paths]} of the shipped photo examples (shots or queries)."""
    root = os.path.join(EXAMPLES, part)
    return {label: [os.path.join(root, label, name) for name in sorted(os.listdir(os.path.join(root, label)))][:per_class]
            for label in sorted(os.listdir(root))}


@pytest.fixture(scope="module")
def photos():
    return fastadapt.load("photos")


@pytest.fixture(scope="module")
def coloured(photos, tmp_path_factory):
    """The photos model adapted to the demo's photos (colour chosen), saved and loaded back."""
    path = tmp_path_factory.mktemp("colour") / "photos.fadapt"
    photos.adapt(examples("shots")).save(str(path))
    return fastadapt.load(str(path))


def test_histograms_count_each_pixels_colour():
    spec = Preprocess(size=8, channels=3, invert=False, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    pixels[0, :, 0, :] = 255  # the top level, and the bottom one
    pixels[0, :, 1, :] = 0
    got = colour_cue.histograms(to_float(pixels, spec), spec)
    levels = pixels.astype(np.int64) // 32  # 8 levels of 32 values each
    for i in range(2):
        codes = (levels[i, 0] * 8 + levels[i, 1]) * 8 + levels[i, 2]
        expected = np.sqrt(np.bincount(codes.ravel(), minlength=512) / 64)
        np.testing.assert_array_equal(got[i], expected.astype(np.float32))
    assert np.allclose((got.astype(np.float64) ** 2).sum(1), 1)


def test_leave_one_out_holds_each_shot_out_of_its_class_mean():
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(7, 3)), np.array([0, 0, 0, 1, 1, 2, 2])
    d2 = colour_cue._held_out_distances(x, labels, 3)
    for i in range(7):
        for c in range(3):
            members = [j for j in range(7) if labels[j] == c and j != i]
            assert d2[i, c] == pytest.approx(((x[i] - x[members].mean(0)) ** 2).sum(), rel=1e-12)


@pytest.mark.parametrize("outliers", [1, 2, 3])
def test_colour_must_fix_margin_more_held_out_shots_than_no_colour(outliers):
    """Guards against ignoring MARGIN (colour used as soon as it fixes one held-out shot). 2 classes x 6 shots on a
    line: class 1 at 2, class 0 at 0 but for ``outliers`` shots at 1.8, each nearer class 1 when held out; the colours
    tell the classes apart exactly. Colour fixes exactly the outliers, so it is used only when they number MARGIN."""
    assert colour_cue.MARGIN == 3 and colour_cue.WEIGHTS == (4.0,)
    features = np.zeros((12, 1))
    features[6:] = 2.0
    features[6 - outliers:6] = 1.8
    labels = np.repeat([0, 1], 6)
    colours = np.eye(2)[labels]  # |h| = 1 and a spacing of 2 between the class means
    scale, report = colour_cue.choose_scale(features, colours, labels, 2)
    assert report["held_out_right"] == {"0": 12 - outliers, "4": 12}
    if outliers < colour_cue.MARGIN:
        assert scale == 0 and report["chosen"] == 0
    else:  # a = w sqrt(feature spacing / colour spacing), the class means 2 - 1.8 * outliers / 6 apart
        assert report["chosen"] == 4 and scale == pytest.approx(4 * np.sqrt((2 - 0.3 * outliers) ** 2 / 2), abs=1e-6)


@needs_photos
def test_colour_is_chosen_when_it_tells_the_photos_apart(photos):
    """The demo's crops: one photo per class, which the colour tells apart (measured: 27 of 30 queries right
    without colour, 30 with it)."""
    on, off = photos.adapt(examples("shots")), photos.adapt(examples("shots"), colour="off")
    report = on.adaptation["colour"]
    assert report["mode"] == "auto" and report["chosen"] > 0 and on.manifest["colour"]["scale"] > 0
    right = report["held_out_right"]
    assert right[f"{report['chosen']:g}"] >= right["0"] + colour_cue.MARGIN
    assert off.adaptation["colour"] == {"mode": "off"} and "colour" not in off.manifest
    queries = examples("queries")
    truth = [label for label, paths in queries.items() for _ in paths]

    def right_answers(model):
        return sum(a.label == t for a, t in zip(model.predict([p for paths in queries.values() for p in paths]), truth))

    assert right_answers(on) >= right_answers(off)


@needs_photos
def test_one_shot_or_a_grey_model_never_uses_colour(photos):
    adapted = photos.adapt(examples("shots", 1))
    assert adapted.adaptation["colour"]["chosen"] == 0 and "single shot" in adapted.adaptation["colour"]["reason"]
    assert "colour" not in adapted.manifest and "colour.weight" not in adapted.params
    grey = fastadapt.load().adapt(glyph_images(3, 2, seed=5))
    assert "colour" not in grey.adaptation and "colour" not in grey.manifest


@needs_photos
def test_a_saved_colour_model_predicts_as_before_and_needs_format_3(photos, coloured):
    fresh = photos.adapt(examples("shots"))
    x = preprocess([p for paths in examples("queries").values() for p in paths], coloured.preprocess)
    np.testing.assert_array_equal(fresh.probabilities(x), coloured.probabilities(x))
    assert coloured.manifest["format_version"] == 3 and coloured.manifest["colour"]["bins"] == colour_cue.BINS
    assert list(coloured.params)[-2:] == ["colour.weight", "colour.bias"]
    assert fastadapt.load().adapt(glyph_images(3, 2, seed=5)).manifest.get("format_version", 1) < 3


@needs_photos
def test_unknown_score_is_the_joint_distance_to_the_nearest_prototype(photos):
    shots = examples("shots")
    adapted = photos.adapt(shots, steps=0)
    spec, scale = adapted.preprocess, adapted.manifest["colour"]["scale"]
    x = preprocess([p for paths in examples("queries").values() for p in paths], spec)
    _, scores = adapted.scores(x)
    # the joint prototypes [P_c, a Q_c] of the shots, in float64
    images = preprocess([p for paths in shots.values() for p in paths], spec)
    labels = np.repeat(np.arange(len(shots)), [len(paths) for paths in shots.values()])
    dummy = {**adapted.params, "head.weight": np.zeros((1, adapted.params["head.weight"].shape[1]), np.float32),
             "head.bias": np.zeros((1,), np.float32)}

    def joint(images):
        features = adapted.graphs.forward(images, dummy)[1].astype(np.float64)
        return np.concatenate([features, scale * colour_cue.histograms(images, spec).astype(np.float64)], 1)

    prototypes = np.stack([joint(images)[labels == c].mean(0) for c in range(len(shots))])
    d2 = ((joint(x)[:, None] - prototypes[None]) ** 2).sum(-1)
    pairs = ((prototypes[:, None] - prototypes[None]) ** 2).sum(-1)[~np.eye(len(shots), dtype=bool)]
    expected = -d2.min(1) / np.median(pairs)
    # float32 rounding: the logits are differences of terms of the size of |joint features|^2
    size = float((joint(x) ** 2).sum(1).max()) / np.median(pairs)
    assert np.abs(scores - expected).max() <= 1e-4 * size
    # the head holds float32 copies of the prototypes: relative rounding eps32 on terms of size max |prototype|^2
    rounding = 16 * np.finfo(np.float32).eps * float((prototypes ** 2).sum(1).max()) / np.median(pairs)
    assert unknown.prototype_scale(adapted.params, adapted.manifest["inner_loop"]["head_scale"]) == \
        pytest.approx(np.median(pairs), rel=rounding)


@needs_photos
def test_add_classes_keeps_the_colour_mode(photos):
    shots = examples("shots")
    first = {label: shots[label] for label in list(shots)[:-1]}
    last = list(shots)[-1]
    off = photos.adapt(first, colour="off")
    grown = off.add_classes({last: shots[last]})
    assert grown.adaptation["colour"] == {"mode": "off"} and "colour" not in grown.manifest
    on = off.update_classes(add={last: shots[last]}, colour="auto")
    assert on.adaptation["colour"]["chosen"] > 0
    assert on.remove_classes([last]).adaptation["colour"]["mode"] == "auto"


@needs_photos
def test_standalone_onnx_of_a_colour_model_agrees(coloured, tmp_path):
    pytest.importorskip("onnx")
    import onnxruntime

    recipe = coloured.export_onnx(str(tmp_path / "photos.onnx"))
    assert "colour histogram" in recipe["outputs"]["features"]
    session = onnxruntime.InferenceSession(str(tmp_path / "photos.onnx"))
    x = preprocess([p for paths in examples("queries").values() for p in paths], coloured.preprocess)
    probabilities, features = session.run(["probabilities", "features"], {"images": x})
    expected = coloured.probabilities(x)
    assert probabilities_agree(probabilities, expected, coloured._outputs(x)[0])
    assert (probabilities.argmax(1) == expected.argmax(1)).all()
    assert features.shape[1] == coloured.params["head.weight"].shape[1] + colour_cue.BINS ** 3


@needs_photos
def test_tampered_colour_entries_are_refused(coloured, tmp_path):
    path = str(tmp_path / "t.fadapt")
    for changes, message in (({"colour": {"bins": 8, "scale": -1}}, "colour.scale"),
                             ({"colour": {"bins": 4, "scale": 1.0}}, "colour head has shapes"),
                             ({"colour": {"bins": 3, "scale": 1.0}}, "colour.bins"),
                             ({"colour": None}, "no colour head .* without a 'colour' entry")):
        rewrite_manifest(coloured.path, path, **changes)
        with pytest.raises(FastadaptError, match=message):
            fastadapt.load(path)


@needs_photos
def test_cli_colour_flag(tmp_path, capsys):
    shots = os.path.join(EXAMPLES, "shots")
    code, out, err = run_cli(capsys, "adapt", "--model", "photos", "--shots", shots, "--out", tmp_path / "a.fadapt")
    assert code == 0 and "colour: used" in out
    code, out, err = run_cli(capsys, "adapt", "--model", "photos", "--shots", shots, "--out", tmp_path / "b.fadapt",
                             "--colour", "off")
    assert code == 0 and "colour: off" in out
    code, out, err = run_cli(capsys, "adapt", "--model", "photos", "--shots", shots, "--out", tmp_path / "c.fadapt",
                             "--colour", "blue")
    assert_user_error(code, out, err, "--colour must be 'auto' or 'off'", tmp_path / "c.fadapt")
    with zipfile.ZipFile(tmp_path / "a.fadapt") as bundle:
        assert json.loads(bundle.read("manifest.json"))["colour"]["bins"] == colour_cue.BINS


@needs_photos
def test_the_photos_model_carries_its_own_unknown_threshold(photos, tmp_path):
    """Calibrated on its validation classes (scripts/calibrate_unknown.py); adapted models store it, and keep it
    through add_classes; a bad value is refused in one line."""
    threshold = photos.manifest["unknown_calibration"]["threshold"]
    assert threshold < unknown.THRESHOLD
    adapted = photos.adapt(examples("shots"))
    assert adapted.manifest["unknown"]["threshold"] == adapted.unknown_threshold == threshold
    first = list(examples("shots"))[0]
    assert adapted.remove_classes([first]).unknown_threshold == threshold
    assert fastadapt.load().adapt(glyph_images(3, 2, seed=5)).unknown_threshold == unknown.THRESHOLD
    adapted.save(str(tmp_path / "kept.fadapt"))
    assert fastadapt.load(str(tmp_path / "kept.fadapt")).unknown_threshold == threshold
    path = str(tmp_path / "bad.fadapt")
    rewrite_manifest(photos.path, path, unknown_calibration={"threshold": "low"})
    with pytest.raises(FastadaptError, match="unknown_calibration.threshold"):
        fastadapt.load(path)


@needs_photos
def test_a_meta_bundle_with_a_colour_head_is_refused(photos, tmp_path):
    from fastadapt.bundle import Bundle, save_bundle

    params = {**photos.params, "colour.weight": np.zeros((2, 512), np.float32), "colour.bias": np.zeros(2, np.float32)}
    manifest = {**photos.manifest, "parameters": list(params)}
    with pytest.raises(FastadaptError, match="no colour head"):
        save_bundle(str(tmp_path / "m.fadapt"), Bundle(manifest, photos.bundle.forward_onnx, photos.bundle.step_onnx,
                                                       params, None))
    assert not (tmp_path / "m.fadapt").exists()


@needs_photos
def test_a_crafted_colour_record_re_adapts_with_the_default(coloured, tmp_path):
    path = str(tmp_path / "crafted.fadapt")
    for record in ("off", [1], {"mode": 5}):
        rewrite_manifest(coloured.path, path, adaptation={"colour": record})
        adapted = fastadapt.load(path).remove_classes([coloured.classes[0]])
        assert adapted.adaptation["colour"]["mode"] == "auto"


def test_identical_colours_are_no_colour_cue():
    """Classes of the very same colours: the colour spacing is exactly 0, never rounding noise scaled up."""
    rng = np.random.default_rng(0)
    colours = np.tile(np.sqrt(rng.dirichlet(np.ones(512)))[None], (12, 1)).astype(np.float32)
    features, labels = rng.normal(size=(12, 8)), np.repeat(np.arange(4), 3)
    scale, report = colour_cue.choose_scale(features, colours, labels, 4)
    assert scale == 0 and "same" in report["reason"]
