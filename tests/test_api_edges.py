"""Python API mistakes found by a hostile-input review (session 14): each is a one-line FastadaptError,
never an OverflowError, TypeError, AttributeError, an onnxruntime message, NaN answers or a silent
truncation. Torch-free: the shipped default model and examples only."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import fastadapt
from conftest import rewrite_manifest
from fastadapt.errors import FastadaptError

EXAMPLES = Path(fastadapt.__file__).parent / "assets" / "examples"
SHOTS = EXAMPLES / "shots"
STAR = EXAMPLES / "queries" / "star" / "star_1.png"


@pytest.fixture(scope="module")
def model():
    return fastadapt.load()


@pytest.fixture(scope="module")
def adapted(model):
    return model.adapt(SHOTS)


def refused(call, match: str) -> str:
    with pytest.raises(FastadaptError, match=match) as info:
        call()
    assert "\n" not in str(info.value) and len(str(info.value)) < 400, str(info.value)
    return str(info.value)


@pytest.mark.parametrize("steps", ["²", "٣", "1²"])
def test_steps_in_other_scripts_digits_are_refused(model, steps):
    refused(lambda: model.adapt(SHOTS, steps=steps), "steps must be a whole number >= 0 or 'auto'")


@pytest.mark.parametrize("lr", [10**400, 1e39, 2e6])
def test_rates_beyond_the_recipe_bounds_are_refused(model, lr):
    refused(lambda: model.adapt(SHOTS, lr=lr), r"lr must be a positive number up to 1e\+06")


def test_a_threshold_too_large_for_a_float_is_refused(adapted):
    refused(lambda: adapted.predict(str(STAR), unknown=10**400), "unknown must be a finite number")


def test_wrong_argument_types_are_refused(model, adapted):
    refused(lambda: model.adapt(SHOTS, progress=5), "progress must be a function")
    refused(lambda: adapted.remove_classes(5), "remove_classes takes a class label or a list")


@pytest.mark.parametrize("images", [np.zeros((28, 28), np.float32), [[1.0]], np.zeros((1, 1, 500, 500), np.float32),
                                    np.zeros((1, 3, 28, 28), np.float32), np.zeros((1, 1, 28, 28), object)],
                         ids=["2d", "list", "too-large", "colour", "object"])
def test_scores_of_arrays_of_the_wrong_shape_are_refused(adapted, images):
    size = adapted.preprocess.size
    refused(lambda: adapted.scores(images), rf"scores takes preprocessed images, a float32 array \(B, 1, {size}, {size}\)")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_preprocessed_images_are_refused(model, adapted, value):
    size = model.preprocess.size
    bad = np.full((1, 1, size, size), value, np.float32)
    refused(lambda: adapted.probabilities(bad), "scores: the images hold NaN or inf")
    refused(lambda: model.adapt_arrays(np.concatenate([bad, bad]), np.array([0, 1]), ["a", "b"]),
            "adapt_arrays: the images hold NaN or inf")


def test_adapt_arrays_refuses_what_it_used_to_truncate_or_merge(model):
    size = model.preprocess.size
    images = np.zeros((4, 1, size, size), np.float32)
    wrong = size + 4
    refused(lambda: model.adapt_arrays(np.zeros((2, 1, wrong, wrong), np.float32), np.array([0, 1]), ["a", "b"]),
            rf"got shape \(2, 1, {wrong}, {wrong}\)")
    refused(lambda: model.adapt_arrays(images, np.array([0.0, 0.9, 1.5, 1.9]), ["a", "b"]),
            "labels must be whole numbers 0..1, got float64")
    refused(lambda: model.adapt_arrays(images, np.array([0, 0, 1, 1]), ["a", "a"]), "class names must be distinct")


def test_one_file_object_per_class_is_one_image(model):
    with open(SHOTS / "star" / "star_1.png", "rb") as star, open(SHOTS / "circle" / "circle_1.png", "rb") as circle:
        adapted = model.adapt({"star": star, "circle": circle})
    assert adapted.adaptation["shots_per_class"] == {"star": 1, "circle": 1}
    with open(SHOTS / "star" / "star_1.png") as star, open(SHOTS / "circle" / "circle_1.png") as circle:
        message = refused(lambda: model.adapt({"star": star, "circle": circle}), "opened in text mode")
    assert message.startswith("shots dict: class 'star' has no readable images (1 unreadable")


def test_an_adapted_bundle_from_nowhere_still_says_what_to_do(adapted, tmp_path):
    """adaptation.from may be null (a valid manifest): the refusal to re-adapt names the meta model generically."""
    adapted.save(tmp_path / "a.fadapt")
    rewrite_manifest(str(tmp_path / "a.fadapt"), str(tmp_path / "b.fadapt"), adaptation={"from": None})
    refused(lambda: fastadapt.load(tmp_path / "b.fadapt").adapt(SHOTS), "is already adapted")


@pytest.mark.parametrize("change, field", [({"preprocess": {"mean": [1e308]}}, "preprocess.mean"),
                                           ({"preprocess": {"std": [1e-320]}}, "preprocess.std"),
                                           ({"preprocess": {"std": [1e4]}}, "preprocess.std"),
                                           ({"inner_loop": {"head_scale": 1e-300}}, "inner_loop.head_scale")])
def test_normalisation_that_overflows_float32_is_refused_on_load(tmp_path, change, field):
    path = str(tmp_path / "b.fadapt")
    rewrite_manifest(str(Path(fastadapt.__file__).parent / "assets" / "default.fadapt"), path, **change)
    refused(lambda: fastadapt.load(path), f"manifest field {field} must be")


def test_weights_that_overflow_give_one_error_not_nan_answers(adapted, tmp_path):
    """Finite weights whose products overflow float32 (3e38 in the head): predict says so in one line,
    with no numpy warnings on the way, instead of 'nan%' or invalid JSON."""
    from test_bundle_hardening import craft, params_npz

    adapted.save(tmp_path / "a.fadapt")
    params = dict(fastadapt.load(tmp_path / "a.fadapt").params)
    params["head.weight"] = np.full_like(params["head.weight"], 3e38)
    path = craft(tmp_path / "a.fadapt", tmp_path / "big.fadapt", params_npz=params_npz(params))
    big = fastadapt.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would fail the test
        refused(lambda: big.predict(str(STAR)), "the model's outputs are not finite numbers")


def test_logits_beyond_exps_range_give_finite_probabilities(adapted, tmp_path):
    """Guards against a softmax without the max subtraction: logits above ~709 overflow exp (inf / inf = NaN
    probabilities). A head 20 times larger gives logits of ~1000; the probabilities are the float64 softmax
    p_j = 1 / sum_k exp(z_k - z_j), a form whose exponents overflow only where p_j underflows to 0 anyway."""
    from fastadapt.images import preprocess
    from test_bundle_hardening import craft, params_npz

    adapted.save(tmp_path / "a.fadapt")
    params = dict(fastadapt.load(tmp_path / "a.fadapt").params)
    params["head.weight"], params["head.bias"] = 20 * params["head.weight"], 20 * params["head.bias"]
    large = fastadapt.load(craft(tmp_path / "a.fadapt", tmp_path / "large.fadapt", params_npz=params_npz(params)))
    x = preprocess(sorted(str(p) for p in (EXAMPLES / "queries").glob("*/*.png")), large.preprocess)
    z = np.concatenate([large._outputs(image[None])[0] for image in x]).astype(np.float64)  # as scores() runs them
    assert (z.max(1) > 750).all()  # every row beyond exp's float64 range
    with np.errstate(over="ignore"):
        expected = 1.0 / np.exp(z[:, None, :] - z[:, :, None]).sum(2)
    probabilities = large.scores(x)[0]
    assert np.isfinite(probabilities).all()
    # the same exponents, exact differences of float32 logits in float64: a few float64 roundings apart
    np.testing.assert_allclose(probabilities, expected, rtol=1e-12, atol=1e-300)
    assert 0 < large.predict(str(STAR)).probability <= 1


CAFE_NFC, CAFE_NFD = "caf\u00e9", "cafe\u0301"  # the same word: one code point for é, or e + combining accent


def test_class_names_that_differ_only_in_unicode_form_are_refused(model, adapted, tmp_path):
    """macOS writes file names decomposed (NFD), most other systems composed (NFC): two folders that look the
    same would silently become two classes."""
    star, circle = str(SHOTS / "star" / "star_1.png"), str(SHOTS / "circle" / "circle_1.png")
    message = refused(lambda: model.adapt({CAFE_NFC: [star], CAFE_NFD: [circle]}), "look the same")
    assert ascii(CAFE_NFC) in message and ascii(CAFE_NFD) in message
    refused(lambda: adapted.add_classes({CAFE_NFD: [star]}).add_classes({CAFE_NFC: [circle]}), "look the same")
    try:
        for name, image in ((CAFE_NFC, star), (CAFE_NFD, circle)):
            (tmp_path / name).mkdir()
            (tmp_path / name / "a.png").write_bytes(Path(image).read_bytes())
    except OSError:  # a file system that normalises names itself (APFS, HFS+) cannot hold both
        pytest.skip("this file system cannot hold both spellings")
    if len(list(tmp_path.iterdir())) == 2:
        message = refused(lambda: model.adapt(tmp_path), "look the same")
        assert message.startswith(str(tmp_path))


def test_the_one_call_adapt_takes_the_same_options_as_model_adapt():
    """README: fastadapt.adapt(shots, model=None) takes the same options; colour= was missing (TypeError)."""
    import inspect

    from fastadapt.runtime.model import Model

    assert set(inspect.signature(Model.adapt).parameters) - {"self"} <= set(inspect.signature(fastadapt.adapt).parameters)
    photos = Path(fastadapt.__file__).parent / "assets" / "photo_examples" / "shots"
    assert fastadapt.adapt(photos, model="photos", colour="off").adaptation["colour"] == {"mode": "off"}
