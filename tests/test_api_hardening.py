"""The Python API inside a long-running service (review 8a): the default model whatever the working folder
holds, array layouts that are never guessed, models that cannot be changed from outside, labels checked
when read, models that pickle, progress that ends full, and one-line errors instead of bare exceptions."""

from __future__ import annotations

import copy
import multiprocessing
import pickle
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

import fastadapt
from fastadapt import FastadaptError, FastadaptWarning
from fastadapt.images import to_uint8
from fastadapt.runtime.loading import DEFAULT_MODEL, model_path
from sample_data import REPO

SHOTS = REPO / "examples" / "shots"
STAR = REPO / "examples" / "queries" / "star" / "star_1.png"
SMALL = {label: [str(p) for p in sorted((SHOTS / label).iterdir())[:2]] for label in ("star", "circle", "arrow")}


@pytest.fixture(scope="module")
def model():
    return fastadapt.load()


@pytest.fixture(scope="module")
def adapted(model):
    return model.adapt(SMALL)


def grey(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def refused(call, words: str) -> str:
    with pytest.raises(FastadaptError) as exc:
        call()
    message = str(exc.value)
    assert words in message and "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- 4: the default model is the shipped one

def test_the_default_model_ignores_a_file_named_characters_here(tmp_path, monkeypatch, adapted):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "characters").write_text("my data, not a model")
    assert model_path(None) == DEFAULT_MODEL
    assert fastadapt.load().kind == "meta" and fastadapt.load().path == DEFAULT_MODEL
    assert fastadapt.adapt(SMALL).classes == ["star", "circle", "arrow"]
    assert model_path("characters") == "characters"  # an explicit name: the local file first (README, CLI)


def test_the_advice_for_an_adapted_model_does_not_name_a_shadowing_file(tmp_path, monkeypatch, adapted):
    monkeypatch.chdir(tmp_path)
    adapted.save(tmp_path / "characters")  # an adapted bundle named like the built-in
    message = refused(lambda: fastadapt.load("characters").adapt(SMALL), "is already adapted")
    assert "fastadapt.load()" in message and "--model characters" not in message
    assert "the file of that name in this folder would be read instead" in message
    shutil.copy(tmp_path / "characters", tmp_path / "photos")
    assert model_path("photos") == "photos"
    (tmp_path / "characters").unlink()
    message = refused(lambda: fastadapt.load("photos").adapt(SMALL), "is already adapted")
    assert 'fastadapt.load("characters")' in message and "would be read instead" not in message


# ----------------------------------------------------------------------------- 5: array layouts

def test_a_stack_of_grey_images_is_refused_not_read_as_one_colour_image(adapted, model):
    stack = np.stack([grey(STAR)] * 3)
    for call in (lambda: adapted.predict(stack), lambda: adapted.predict([stack]),
                 lambda: model.adapt({"star": stack, "circle": SMALL["circle"]}),
                 lambda: model.adapt({"star": [stack], "circle": SMALL["circle"]}),
                 lambda: adapted.add_classes({"dot": stack})):
        refused(call, "pass a list of HxW arrays, or an N x 1 x H x W array")
    refused(lambda: adapted.predict(np.stack([grey(STAR)] * 4)), "4 grey images stacked")
    # the unambiguous forms of the same images
    assert [p.label for p in adapted.predict(list(stack))] == ["star"] * 3
    assert [p.label for p in adapted.predict(stack[:, None])] == ["star"] * 3
    assert adapted.predict(stack[:1]).label == "star"  # 1 x H x W: one grey image
    assert adapted.predict(np.dstack([grey(STAR)] * 3)).label == "star"  # H x W x 3: one colour image


def test_the_last_axis_decides_so_a_short_rgba_image_is_not_transposed():
    from fastadapt.images import open_image

    rgba = np.zeros((3, 40, 4), np.uint8)
    rgba[..., 3] = 255
    assert open_image(rgba).size == (40, 3)  # 40 wide, 3 tall; CxHxW would give 4 x 40
    assert open_image(np.zeros((3, 20, 30), np.uint8)).size == (30, 20)  # CxHxW
    assert open_image(np.zeros((4, 20, 30), np.uint8)).mode == "RGBA"
    refused(lambda: open_image(np.zeros((5, 20, 30), np.uint8)), "for several images pass a list")


def test_a_colour_model_takes_channels_first_arrays():
    photos = fastadapt.load("photos")
    shots = REPO / "fastadapt" / "assets" / "photo_examples" / "shots"
    if not shots.is_dir():
        pytest.skip("no photo examples shipped")
    first = next(p for p in sorted(next(iter(sorted(shots.iterdir()))).iterdir()))
    hwc = np.asarray(Image.open(first).convert("RGB"))
    np.testing.assert_array_equal(to_uint8(np.transpose(hwc, (2, 0, 1)), photos.preprocess),
                                  to_uint8(hwc, photos.preprocess))


# ----------------------------------------------------------------------------- 6: nothing given out changes the model

def test_classes_params_and_manifest_are_copies_or_read_only(adapted, tmp_path):
    before = adapted.predict(str(STAR))
    mine = adapted.classes
    mine.sort()
    mine.append("extra")
    assert adapted.classes == ["star", "circle", "arrow"] and adapted.classes is not adapted.classes
    with pytest.raises(ValueError, match="read-only"):
        adapted.params["head.weight"][...] = 0
    with pytest.raises(TypeError):
        adapted.params["head.weight"] = np.zeros(1)
    manifest = adapted.manifest
    manifest["classes"][0] = "HACK"
    manifest["adaptation"]["steps"] = 99
    adapted.adaptation["shots_per_class"]["star"] = 0
    assert adapted.manifest["classes"][0] == "star" and adapted.adaptation["steps"] != 99
    assert adapted.adaptation["shots_per_class"]["star"] == 2
    assert adapted.predict(str(STAR)) == before
    adapted.save(tmp_path / "a.fadapt")
    again = fastadapt.load(tmp_path / "a.fadapt")
    assert again.classes == adapted.classes and again.predict(str(STAR)) == before
    assert again.add_classes({"dot": [str(STAR)]}).classes == ["star", "circle", "arrow", "dot"]  # read-only is fine


# ----------------------------------------------------------------------------- 7: labels a bundle can hold

@pytest.mark.parametrize("label, words", [("", "class label '' is empty"), ("s" * 257, "has 257 characters")])
def test_labels_save_would_refuse_are_refused_when_read(model, adapted, tmp_path, label, words):
    shots = {label: SMALL["star"], "circle": SMALL["circle"]}
    refused(lambda: model.adapt(shots), words)
    refused(lambda: adapted.add_classes({label: [str(STAR)]}), words)
    if label:  # a folder name cannot be empty
        folder = tmp_path / "shots"
        for name, files in (("circle", SMALL["circle"]), (label, SMALL["star"])):
            try:
                (folder / name).mkdir(parents=True)
            except OSError:
                pytest.skip("the file system refuses such a long name")
            for file in files:
                shutil.copy(file, folder / name)
        refused(lambda: model.adapt(str(folder)), words)
    assert model.adapt({"s" * 256: SMALL["star"], "circle": SMALL["circle"]}).classes[0] == "s" * 256


def test_the_class_count_limit_is_inclusive_when_shots_are_read():
    """A model holds up to MAX_CLASSES classes (manifest.py), so exactly that many are read
    and one more is refused; checked on the labels alone, before any image is decoded."""
    from fastadapt.manifest import MAX_CLASSES
    from fastadapt.runtime.shots import _check_labels

    _check_labels([str(i) for i in range(MAX_CLASSES)], "shots dict")
    with pytest.raises(FastadaptError, match=f"{MAX_CLASSES + 1:,} classes"):
        _check_labels([str(i) for i in range(MAX_CLASSES + 1)], "shots dict")


def test_a_shots_dict_of_labels_alike_as_text_or_of_image_batches():
    """Labels 1 and "1" are both the class '1', so one would silently replace the other:
    refused. An N x C x H x W array for a class is N images (its rows), not one image."""
    from fastadapt.runtime.shots import dict_classes

    image = np.zeros((28, 28), np.uint8)
    with pytest.raises(FastadaptError):
        dict_classes({1: [image], "1": [image], "x": [image]})
    classes = dict_classes({"a": np.zeros((3, 1, 28, 28), np.uint8), "b": image}, channels=1)
    assert len(classes["a"]) == 3 and classes["a"][0].shape == (1, 28, 28) and len(classes["b"]) == 1


# ----------------------------------------------------------------------------- 8: pickling and multiprocessing

def _child_predict(adapted, path):
    return adapted.predict(path).label


def test_models_pickle_and_deep_copy_through_their_bundle_bytes(model, adapted, tmp_path):
    for original in (model, adapted):
        for copied in (pickle.loads(pickle.dumps(original)), copy.deepcopy(original)):
            assert type(copied) is type(original) and copied.path == original.path
            written = ("members", "parameters", "format", "format_version")  # filled in by save
            assert {k: v for k, v in copied.manifest.items() if k not in written} == \
                {k: v for k, v in original.manifest.items() if k not in written}
            assert all(np.array_equal(copied.params[k], original.params[k]) for k in original.params)
    clone = pickle.loads(pickle.dumps(adapted))
    assert clone.predict(str(STAR)) == adapted.predict(str(STAR)) and clone.seconds == adapted.seconds
    assert clone.add_classes({"dot": [str(STAR)]}).classes[-1] == "dot"  # the kept shots travel too
    adapted.save(tmp_path / "a.fadapt")
    loaded = fastadapt.load(tmp_path / "a.fadapt")
    assert pickle.loads(pickle.dumps(loaded)).path == str(tmp_path / "a.fadapt")


def test_a_model_goes_to_a_spawned_worker():
    adapted = fastadapt.load().adapt(SMALL)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_child_predict, (adapted, str(STAR))) == "star"


# ----------------------------------------------------------------------------- 10: progress ends full

@pytest.mark.parametrize("options, last", [({}, (3, 3)), ({"lr": 1e5}, (3, 3)), ({"steps": 0}, None),
                                           ({"safeguard": False}, (3, 3))])
def test_progress_always_ends_at_its_total(model, options, last):
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FastadaptWarning)  # lr=1e5: the rejected step is warned about
        adapted = model.adapt(str(SHOTS), progress=lambda done, total: calls.append((done, total)), **options)
    if last is None:  # 0 steps: no call, never (0, 0), which a bar computing done / total would divide by
        assert calls == []
        return
    assert calls and calls[-1] == last and all(total == last[1] for _, total in calls)
    if "lr" in options:
        assert adapted.adaptation["steps"] == 0 and calls == [(3, 3)]


def test_progress_ends_full_with_steps_auto(model):
    calls = []
    adapted = model.adapt(SMALL, steps="auto", progress=lambda done, total: calls.append((done, total)))
    chosen = adapted.adaptation["steps"]
    assert calls[-1] == (chosen, chosen) if chosen else calls == []


# ----------------------------------------------------------------------------- 11: skip_unreadable answers None

def test_skip_unreadable_answers_none_even_when_nothing_can_be_read(adapted):
    with pytest.warns(FastadaptWarning, match="not a readable image.*; skipped"):
        assert adapted.predict(b"junk", skip_unreadable=True) is None
    with pytest.warns(FastadaptWarning):
        assert adapted.predict([b"junk", b"more junk"], skip_unreadable=True) == [None, None]
    refused(lambda: adapted.predict(b"junk"), "not a readable image")


# ----------------------------------------------------------------------------- 13: one-line errors, not bare exceptions

def test_a_non_contiguous_memoryview_is_read(adapted):
    data = STAR.read_bytes()
    doubled = bytes(b for byte in data for b in (byte, 0))
    assert adapted.predict(memoryview(doubled)[::2]).label == "star"
    view = memoryview(data)
    view.release()
    refused(lambda: adapted.predict(view), "released memoryview")


def test_a_progress_callback_of_the_wrong_shape_is_refused_before_any_work(model, adapted, monkeypatch):
    from fastadapt.runtime import model as model_module

    monkeypatch.setattr(model_module, "load_shots", lambda *a, **k: pytest.fail("decoded the shots first"))
    for call in (lambda: model.adapt(SMALL, progress=lambda done: None),
                 lambda: adapted.add_classes({"dot": [str(STAR)]}, progress=lambda: None),
                 lambda: fastadapt.adapt(SMALL, progress=lambda a, b, c: None)):
        refused(call, "progress is called as progress(done, total)")
    monkeypatch.undo()
    assert model.adapt(SMALL, progress=print).kind == "adapted"  # a builtin without a signature
    assert model.adapt(SMALL, progress=lambda *args, **kwargs: None).kind == "adapted"


def test_adapt_arrays_refuses_what_onnxruntime_would_fail_on(model, capfd):
    size = model.preprocess.size
    images = np.zeros((4, 1, size, size), np.float32)
    for call, words in [
            (lambda: model.adapt_arrays(np.zeros((0, 1, size, size), np.float32), np.array([], int), ["a", "b"]),
             "got no images"),
            (lambda: model.adapt_arrays(images, np.array([0, 1]), ["a", "b"]), "got 4 images but 2 labels"),
            (lambda: model.adapt_arrays(images, np.array([0, 1, 2, 0]), ["a", "b"]), "labels must be 0..1"),
            (lambda: model.adapt_arrays(images, np.array([0, 0, 0, 0]), ["a", "b"]), "class 1 has no images"),
            (lambda: model.adapt_arrays(images, np.array([0, 0, 1, 1]), "ab"), "classes must be a list")]:
        refused(call, words)
    assert capfd.readouterr().err == ""  # nothing printed by onnxruntime


def test_a_meta_model_says_adapt_it_first(model):
    for call in (lambda: model.classes, lambda: model.add_classes(SMALL), lambda: model.remove_classes(["star"]),
                 lambda: model.update_classes(remove=["star"]), lambda: model.export_onnx("m.onnx"),
                 lambda: model.scores(np.zeros((1, 1, 32, 32), np.float32)),
                 lambda: model.probabilities(np.zeros((1, 1, 32, 32), np.float32))):
        refused(call, "is a meta model with no classes yet; adapt it first")
    assert not hasattr(model, "classes") and getattr(model, "classes", None) is None  # still an AttributeError


def test_add_and_remove_classes_take_colour(adapted):
    assert adapted.add_classes({"dot": [str(STAR)]}, colour="off").classes[-1] == "dot"
    assert adapted.remove_classes("arrow", colour="off").classes == ["star", "circle"]
    refused(lambda: adapted.add_classes({"dot": [str(STAR)]}, colour="on"), "colour must be 'auto' or 'off'")


def test_predictions_are_hashable_and_serialise_as_before(adapted):
    answer = adapted.predict(str(STAR), top=2)
    assert len({answer, adapted.predict(str(STAR), top=2)}) == 1
    assert isinstance(answer.top, tuple) and answer.top[0] == ("star", answer.probability)
    assert answer.to_dict()["top"] == [{"label": label, "probability": p} for label, p in answer.top]


# ----------------------------------------------------------------------------- 14: strict arguments

def test_loose_arguments_are_refused(model, adapted):
    for value in ("no", 1, None):
        refused(lambda: adapted.predict(str(STAR), skip_unreadable=value), "skip_unreadable must be True or False")
    assert adapted.predict(str(STAR), skip_unreadable=np.bool_(True)).label == "star"
    refused(lambda: model.adapt(SMALL, colour=True), "colour must be 'auto' or 'off', got True (for True pass 'auto')")
    refused(lambda: model.adapt(SMALL, colour=False), "pass 'off'")
    refused(lambda: adapted.add_classes(None), "add_classes takes shots")
    refused(lambda: adapted.remove_classes(None), "remove_classes takes labels")


def test_steps_auto_that_cannot_choose_warns(model):
    one_shot = {label: files[:1] for label, files in SMALL.items()}
    with pytest.warns(FastadaptWarning, match="needs at least 2 shots per class.*leave steps out"):
        adapted = model.adapt(one_shot, steps="auto")
    assert "note" in adapted.adaptation["auto"]


# ----------------------------------------------------------------------------- 15: the README's signature

def test_the_readme_lists_fastadapt_adapt_as_it_is():
    import inspect
    import re

    text = (REPO / "README.md").read_text()
    listed = re.search(r"`fastadapt\.adapt\((.*?)\)`", text, re.S).group(1)
    names = [part.split("=")[0].strip() for part in listed.replace("\n", " ").split(",")]
    assert names == list(inspect.signature(fastadapt.adapt).parameters)



@pytest.mark.parametrize("evaluate", ["evaluate_bundle", "evaluate_unknown"])
def test_one_evaluation_task_is_refused_as_too_few_for_a_confidence_interval(evaluate):
    """The API refuses tasks=1 as the CLI does (a 95% CI of one task is undefined: the sample
    std of one value); refused before any data is read, so the missing folder is never reached."""
    with pytest.raises(FastadaptError, match="tasks"):
        getattr(fastadapt.runtime, evaluate)(DEFAULT_MODEL, "/nonexistent-data", tasks=1)


def test_evaluate_bundle_reports_the_mean_of_the_steps_kept(monkeypatch):
    """`steps_kept_mean` is the mean over tasks of the steps the (safeguarded) adaptation kept;
    the kept steps are set here to 0 and 2 for the two tasks, so the mean is 1.0 (not their max, 2)."""
    from fastadapt.runtime.model import Model

    real, kept = Model.adapt_arrays, iter([0, 2])

    def adapt_arrays(self, *args, **kwargs):
        adapted = real(self, *args, **kwargs)
        adapted._manifest["adaptation"]["steps"] = next(kept)  # (.adaptation is a copy)
        return adapted

    monkeypatch.setattr(Model, "adapt_arrays", adapt_arrays)
    result = fastadapt.runtime.evaluate_bundle(DEFAULT_MODEL, str(REPO / "examples" / "shots"), protocol="all",
                                               tasks=2, query=2, safeguard=True)
    assert result["tasks"] == 2 and result["steps_kept_mean"] == 1.0


def test_a_parameter_with_an_extra_axis_is_refused_on_load(tmp_path):
    """A parameter whose number of axes differs from what forward.onnx declares is refused
    when the bundle is loaded (the axes present may all agree: (64,) stored as (64, 1)), not left to fail inside
    onnxruntime at the first prediction. The members' checksums are rewritten, so only the shape is wrong."""
    import hashlib
    import io
    import json
    import zipfile

    with zipfile.ZipFile(DEFAULT_MODEL) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    params = dict(np.load(io.BytesIO(members["params.npz"])))
    params["layers.0.bias"] = params["layers.0.bias"][:, None]  # (64,) -> (64, 1)
    buffer = io.BytesIO()
    np.savez(buffer, **params)
    members["params.npz"] = buffer.getvalue()
    manifest = json.loads(members["manifest.json"])
    manifest["members"]["params.npz"] = hashlib.sha256(members["params.npz"]).hexdigest()
    members["manifest.json"] = json.dumps(manifest).encode()
    members["manifest.sha256"] = hashlib.sha256(members["manifest.json"]).hexdigest().encode()
    bundle = tmp_path / "extra_axis.fadapt"
    with zipfile.ZipFile(bundle, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(FastadaptError, match="layers.0.bias"):
        fastadapt.load(str(bundle))
