"""fastadapt export ADAPTED.fadapt --format onnx: one self-contained ONNX model and its preprocessing recipe,
equal to fastadapt's own predictions, run with plain onnxruntime by the README's example."""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pytest
from PIL import Image

import fastadapt
from conftest import glyph_images
from fastadapt.errors import FastadaptError
from fastadapt.images import DRAFT_ABOVE_PIXELS, DRAFT_MARGIN, preprocess
from fastadapt.standalone import probabilities_agree
from sample_data import REPO
from test_builtin_models import needs_photos
from test_cli_runtime import assert_user_error, run_cli

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """The shipped default model adapted to 4 glyph classes, saved."""
    images = glyph_images(4, 3, seed=7)
    path = tmp_path_factory.mktemp("standalone") / "glyphs.fadapt"
    fastadapt.load().adapt(images).save(str(path))
    return fastadapt.load(str(path))


def readme_example(block: int = 0) -> str:
    """The README Deploy section's Python code: block 0 the whole example, block 1 the unknown score."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Deploy without fastadapt", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[block]


def run_readme_example(adapted, tmp_path, monkeypatch, paths) -> dict:
    """Export ``adapted`` as mine.onnx and run the README's example on ``paths`` as written -> its variables."""
    code = readme_example()
    assert "fastadapt" not in code
    adapted.export_onnx(str(tmp_path / "mine.onnx"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["example.py", *map(str, paths)])
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_export_writes_a_self_contained_model_and_its_recipe(adapted, tmp_path):
    import onnx

    recipe = adapted.export_onnx(str(tmp_path / "m.onnx"))
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.name for i in model.graph.input] == ["images"]  # every weight is inside
    assert [o.name for o in model.graph.output] == ["probabilities", "features", "logits"]
    written = json.loads((tmp_path / "m.preprocess.json").read_text())
    assert written == json.loads(json.dumps(recipe))
    assert written["classes"] == adapted.classes and written["size"] == adapted.preprocess.size and written["invert"] is True
    assert written["verification"]["images"] > 8  # the stored shots and the fixed random images
    metadata = {p.key: p.value for p in model.metadata_props}
    assert json.loads(metadata["classes"]) == adapted.classes
    assert json.loads(metadata["unknown"]) == written["unknown"] == json.loads(metadata["preprocess"])["unknown"]
    assert (written["reduce_above_pixels"], written["reduce_margin"]) == (DRAFT_ABOVE_PIXELS, DRAFT_MARGIN)


def test_readme_example_gives_fastadapts_probabilities(adapted, tmp_path, monkeypatch):
    """The README's plain-onnxruntime code, run as written, on square, non-square and transparent pictures."""
    paths = []
    for i, (image,) in enumerate(glyph_images(4, 1, seed=8).values()):
        paths.append(str(tmp_path / f"square{i}.png"))
        image.save(paths[-1])
    wide = Image.new("L", (60, 25), 255)
    wide.paste(glyph_images(1, 1, seed=9)["class00"][0].convert("L").resize((25, 25)), (17, 0))
    wide.save(tmp_path / "wide.png")
    tall = Image.new("RGBA", (21, 50), (0, 0, 0, 0))
    tall.paste(Image.new("RGBA", (5, 30), (0, 0, 0, 255)), (8, 10))
    tall.save(tmp_path / "tall.png")
    paths += [str(tmp_path / "wide.png"), str(tmp_path / "tall.png")]
    namespace = run_readme_example(adapted, tmp_path, monkeypatch, paths)
    expected = np.array([[p for _, p in sorted(r.top, key=lambda t: adapted.classes.index(t[0]))]
                         for r in adapted.predict(paths, top=len(adapted.classes))])
    got = namespace["probabilities"]
    assert got.shape == expected.shape
    logits = adapted._outputs(preprocess(paths, adapted.preprocess))[0]
    assert probabilities_agree(got, expected, logits)
    assert [adapted.classes[i] for i in got.argmax(1)] == [r.label for r in adapted.predict(paths)]


def test_readme_prepare_equals_fastadapt_on_a_rotated_phone_jpeg(adapted, tmp_path, monkeypatch):
    """A 12 MP phone photo (EXIF orientation 6): fastadapt decodes it reduced (JPEG draft mode), and so does the
    README's prepare(); the inputs are identical, not merely close."""
    y, x = np.mgrid[0:3000, 0:4000].astype(np.float32)
    pixels = np.stack([128 + 90 * np.sin(x / 97 + c) * np.cos(y / 53 - c) for c in range(3)], -1)
    pixels += np.random.default_rng(0).normal(0, 20, pixels.shape)  # fine detail, which the reduction averages
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display, as phones write
    path = tmp_path / "phone.jpg"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90, exif=exif)
    assert 4000 * 3000 > DRAFT_ABOVE_PIXELS
    namespace = run_readme_example(adapted, tmp_path, monkeypatch, [path])
    expected = preprocess([str(path)], adapted.preprocess)[0]
    assert np.array_equal(namespace["prepare"](str(path)), expected)
    assert namespace["probabilities"].argmax() == adapted.probabilities(expected[None]).argmax()


def test_readme_unknown_score_gives_predicts_verdicts(adapted, tmp_path, monkeypatch):
    """The export's logits and features with recipe["unknown"], as the README computes them, reject exactly the
    images that predict(..., unknown=True) rejects, with the same scores."""
    shots = [images[0] for images in glyph_images(4, 3, seed=7).values()]  # the adapted classes: known
    others = [images[0] for images in glyph_images(3, 1, seed=8).values()]  # other glyphs: unknown
    paths = []
    for i, image in enumerate(shots + others + [Image.new("L", (30, 30), 255)]):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    namespace = run_readme_example(adapted, tmp_path, monkeypatch, paths)
    logits, features = namespace["session"].run(["logits", "features"], {"images": namespace["images"]})
    scope = {**namespace, "logits": logits, "features": features}
    exec(compile(readme_example(1), "README.md", "exec"), scope)
    expected = adapted.predict([str(p) for p in paths], unknown=True)
    assert list(scope["unknown"]) == [p.unknown for p in expected]
    assert 0 < sum(scope["unknown"]) < len(paths)  # both verdicts occur
    assert np.allclose(scope["score"], [p.score for p in expected], rtol=1e-4, atol=1e-5)


@needs_photos
def test_readme_example_follows_the_recipe_of_the_photos_model(tmp_path, monkeypatch):
    """Guards against recipe fields that do not follow the model (the tests above use the characters model, which
    inverts and has head scale 1): for the photos model (no inversion, head scale 0.1, a colour cue) the README's
    prepare() gives fastadapt's input exactly, and its unknown rule gives predict's scores."""
    from fastadapt.runtime import loading

    examples = os.path.join(loading.ASSETS, "photo_examples")

    def files(part: str, per_class: int) -> dict:
        root = os.path.join(examples, part)
        return {label: [os.path.join(root, label, name) for name in sorted(os.listdir(os.path.join(root, label)))]
                [:per_class] for label in sorted(os.listdir(root))}

    photos = fastadapt.load("photos").adapt(files("shots", 5))
    assert photos.preprocess.invert is False and photos._head_scale != 1 and "colour" in photos.manifest
    paths = [path for items in files("queries", 2).values() for path in items]
    namespace = run_readme_example(photos, tmp_path, monkeypatch, paths)
    assert np.array_equal(namespace["images"], preprocess(paths, photos.preprocess))
    logits, features = namespace["session"].run(["logits", "features"], {"images": namespace["images"]})
    scope = {**namespace, "logits": logits, "features": features}
    exec(compile(readme_example(1), "README.md", "exec"), scope)
    expected = photos.predict(paths, unknown=True)
    # two float32 computations of max(z) / head_scale and |f|^2, whose difference the score is: a few dozen
    # roundings of the larger term, relative to the prototype scale
    z, f = logits.astype(np.float64), features.astype(np.float64)
    magnitude = (np.abs(z).max() / photos._head_scale + (f * f).sum(1).max()) / photos._scale
    tolerance = 64 * np.finfo(np.float32).eps * magnitude
    np.testing.assert_allclose(scope["score"], [p.score for p in expected], rtol=0, atol=tolerance)
    for unknown, prediction in zip(scope["unknown"], expected):
        if abs(prediction.score - photos.unknown_threshold) > tolerance:
            assert unknown == prediction.unknown, prediction


def test_cli_export_onnx(adapted, tmp_path, capsys):
    code, out, err = run_cli(capsys, "export", adapted.path, "--format", "onnx", "--out", tmp_path / "cli.onnx")
    assert code == 0, err
    assert "wrote" in out and "cli.preprocess.json" in out
    assert (tmp_path / "cli.onnx").exists() and (tmp_path / "cli.preprocess.json").exists()


def test_cli_export_onnx_mistakes_are_one_line(adapted, tmp_path, capsys):
    meta = fastadapt.load().path
    assert_user_error(*run_cli(capsys, "export", meta, "--format", "onnx", "--out", tmp_path / "m.onnx"), "adapt it first")
    assert_user_error(*run_cli(capsys, "export", adapted.path, "--format", "tflite", "--out", tmp_path / "m.onnx"),
                      "--format")
    assert_user_error(*run_cli(capsys, "export", adapted.path, "--out", tmp_path / "m.fadapt"), "--format onnx")
    assert_user_error(*run_cli(capsys, "export", adapted.path, "--format", "onnx", "--out", tmp_path / "m.bin"),
                      "--out")
    assert not list(tmp_path.iterdir())


def test_missing_onnx_package_says_how_to_install(adapted, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(FastadaptError, match=r'pip install "fastadapt\[train\]"') as error:
        adapted.export_onnx(str(tmp_path / "m.onnx"))
    assert "\n" not in str(error.value) and not list(tmp_path.iterdir())


def test_a_disagreeing_model_is_not_written(adapted, tmp_path, monkeypatch):
    from fastadapt import standalone

    monkeypatch.setattr(standalone, "probabilities_agree", lambda *args, **kwargs: False)
    with pytest.raises(FastadaptError, match="disagrees"):
        adapted.export_onnx(str(tmp_path / "m.onnx"))
    assert not list(tmp_path.iterdir())


def test_probabilities_agree_allows_rounding_of_large_logits_and_catches_real_errors():
    """The rule is agrees() on the logits: rounding of large logits passes, a real error does not."""
    from fastadapt.runtime.adaptation import softmax

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (6, 5)) + 430.0  # off-distribution images: logits ~430, close top-2
    expected = softmax(logits)
    # two correct kernels: a 64-term float32 dot product of size 430 errs by up to ~sqrt(64) * eps * 430 = 4e-4
    ulps = 16 * np.spacing(np.float32(430.0))
    rounded = softmax(logits + rng.uniform(-ulps, ulps, logits.shape))
    assert np.abs(rounded - expected).max() > 1e-4  # beyond a plain probability tolerance...
    assert probabilities_agree(rounded, expected, logits)  # ...but rounding
    assert not probabilities_agree(softmax(logits + [[0.5, 0, 0, 0, 0]]), expected, logits)  # one class moved
    assert not probabilities_agree(expected[:, ::-1], expected, logits)  # classes out of order
    small = rng.normal(0, 3, (6, 5))
    assert not probabilities_agree(softmax(small * 1.01), softmax(small), small)  # a 1% wrong scale
