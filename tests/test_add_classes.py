"""Adding and removing classes of an adapted model: re-adaptation from the meta-initialisation on the shots
the bundle keeps, equal bit for bit to adapting on all the images at once; reproducible bundles."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np
import pytest

import fastadapt
from conftest import glyph_images, save_folder
from fastadapt.bundle import arrays_to_bytes, read_bundle
from fastadapt.errors import FastadaptError
from test_cli_runtime import assert_user_error, run_cli

IMAGES = glyph_images(5, 3, seed=11)
FIRST = {k: IMAGES[k] for k in list(IMAGES)[:3]}
LATER = {k: IMAGES[k] for k in list(IMAGES)[3:]}


@pytest.fixture(scope="module")
def meta():
    return fastadapt.load()


@pytest.fixture(scope="module")
def saved(meta, tmp_path_factory):
    """The default model adapted to the first 3 classes, saved and loaded back."""
    path = tmp_path_factory.mktemp("add") / "three.fadapt"
    meta.adapt(FIRST).save(str(path))
    return fastadapt.load(str(path))


def same_params(a, b) -> bool:
    return list(a.params) == list(b.params) and all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


def test_adding_classes_equals_adapting_on_all_at_once(meta, saved, tmp_path):
    grown = saved.add_classes(LATER)
    at_once = meta.adapt(IMAGES)
    assert grown.classes == at_once.classes == list(IMAGES)
    assert same_params(grown, at_once)
    grown.save(str(tmp_path / "grown.fadapt"))
    at_once.save(str(tmp_path / "at_once.fadapt"))
    assert (tmp_path / "grown.fadapt").read_bytes() == (tmp_path / "at_once.fadapt").read_bytes()


def test_classes_in_unsorted_order_keep_their_own_shots(meta):
    """Guards against re-binding the kept shots by sorted position: a dict's classes keep their insertion order,
    so adding to (or removing from) a model whose classes are not sorted equals adapting on the result at once."""
    unsorted = {k: IMAGES[k] for k in ("class02", "class00", "class01")}
    adapted = meta.adapt(unsorted)
    assert adapted.classes == list(unsorted)
    grown = adapted.add_classes(LATER)
    at_once = meta.adapt({**unsorted, **LATER})
    assert grown.classes == at_once.classes == list(unsorted) + list(LATER)
    assert same_params(grown, at_once)
    smaller = at_once.remove_classes(["class00"])
    assert same_params(smaller, meta.adapt({k: v for k, v in {**unsorted, **LATER}.items() if k != "class00"}))


def test_adding_classes_keeps_the_models_safeguard_setting(meta):
    """Guards against add_classes turning the safeguard back on: unset arguments are as the model was adapted.
    Unbalanced shots make it visible in the parameters (the safeguard adapts them on the class-balanced loss)."""
    first = {**FIRST, "class00": FIRST["class00"][:1]}
    grown = meta.adapt(first, safeguard=False).add_classes(LATER)
    assert grown.adaptation["safeguard"] is False and grown.adaptation["class_balanced"] is False
    assert same_params(grown, meta.adapt({**first, **LATER}, safeguard=False))
    assert not same_params(grown, meta.adapt({**first, **LATER}))  # the safeguard's steps differ here


def test_removing_a_class_and_adding_to_one(meta, saved):
    smaller = saved.add_classes(LATER).remove_classes(["class03", "class04"])
    assert same_params(smaller, saved) and smaller.classes == saved.classes
    more = {"class01": IMAGES["class04"][:1]}  # an existing label: its shots grow
    grown = saved.add_classes(more)
    expected = meta.adapt({**FIRST, "class01": FIRST["class01"] + more["class01"]})
    assert grown.classes == saved.classes and same_params(grown, expected)
    assert grown.adaptation["shots_per_class"]["class01"] == 4


def test_recipe_overrides_and_bundles_without_shots(meta, saved, tmp_path):
    assert saved.add_classes(LATER, steps=0).adaptation["steps_requested"] == 0
    with pytest.raises(FastadaptError, match="cannot remove class 'nope'"):
        saved.remove_classes(["nope"])
    with pytest.raises(FastadaptError, match="would leave 1 class"):
        saved.remove_classes(["class00", "class01"])
    data = fastadapt.runtime.shots.load_shots(FIRST, meta.preprocess)
    old = meta.adapt_arrays(fastadapt.images.to_float(data.images, meta.preprocess), data.labels, data.classes)
    old.save(str(tmp_path / "old.fadapt"))
    assert set(zipfile.ZipFile(tmp_path / "old.fadapt").namelist()) == \
        {"manifest.json", "manifest.sha256", "forward.onnx", "step.onnx", "params.npz"}
    with pytest.raises(FastadaptError, match="keeps no shots") as error:
        fastadapt.load(str(tmp_path / "old.fadapt")).add_classes(LATER)
    assert "fastadapt adapt --model characters --shots" in str(error.value)  # the built-in, by a name --model takes


def test_cli_add_and_remove(saved, tmp_path, capsys):
    folder = save_folder(LATER, tmp_path / "later")
    code, out, err = run_cli(capsys, "adapt", "--model", saved.path, "--add", folder, "--remove", "class00",
                             "--out", tmp_path / "changed.fadapt")
    assert code == 0, err
    changed = fastadapt.load(str(tmp_path / "changed.fadapt"))
    assert changed.classes == ["class01", "class02", "class03", "class04"]
    assert "to 4 classes" in out
    assert_user_error(*run_cli(capsys, "adapt", "--model", fastadapt.load().path, "--add", folder, "--out",
                               tmp_path / "x.fadapt"), "is a meta model")
    assert_user_error(*run_cli(capsys, "adapt", "--model", saved.path, "--out", tmp_path / "x.fadapt"), "--shots")
    assert_user_error(*run_cli(capsys, "adapt", "--model", saved.path, "--remove", "zebra", "--out",
                               tmp_path / "x.fadapt"), "zebra")
    assert not (tmp_path / "x.fadapt").exists()


def test_two_identical_adapt_runs_write_identical_bytes(tmp_path, capsys):
    folder = save_folder(FIRST, tmp_path / "shots")
    for name in ("a.fadapt", "b.fadapt"):
        code, out, err = run_cli(capsys, "adapt", "--shots", folder, "--out", tmp_path / name)
        assert code == 0, err
    assert (tmp_path / "a.fadapt").read_bytes() == (tmp_path / "b.fadapt").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.fadapt") as archive:
        for info in archive.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0) and (info.external_attr >> 16) & 0o777 == 0o644
        manifest = json.loads(archive.read("manifest.json"))
    assert "seconds" not in manifest["adaptation"] and "created" not in manifest["adaptation"]


def _rewrite(src, dst, **members) -> None:
    """Copy a bundle with members replaced and the manifest's checksums updated to match."""
    with zipfile.ZipFile(src) as archive:
        data = {name: archive.read(name) for name in archive.namelist()}
    data.update(members)
    manifest = json.loads(data["manifest.json"])
    for name in members:
        manifest["members"][name] = hashlib.sha256(data[name]).hexdigest()
    data["manifest.json"] = json.dumps(manifest).encode()
    data["manifest.sha256"] = hashlib.sha256(data["manifest.json"]).hexdigest().encode()
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, value in data.items():
            archive.writestr(name, value)


@pytest.mark.parametrize("shots, match", [  # shots(s): the damaged member for a model of input size s
    (lambda s: {"images": np.zeros((9, 1, s, s), np.float32), "labels": np.zeros(9, np.int64)}, "not uint8"),
    (lambda s: {"images": np.zeros((9, 1, s, s), np.uint8), "labels": np.full(9, 7, np.int64)}, "class by class"),
    # every class present, but the last first: the format stores the shots class by class
    (lambda s: {"images": np.zeros((9, 1, s, s), np.uint8), "labels": np.repeat([2, 1, 0], 3)}, "class by class"),
    (lambda s: {"images": np.zeros((9, 1, s // 2, s // 2), np.uint8), "labels": np.repeat(np.arange(3), 3)}, "shape"),
    (lambda s: {"images": np.zeros((9, 1, s, s), np.uint8)}, "lacks labels"),
    # one label short: images and labels would no longer pair up
    (lambda s: {"images": np.zeros((9, 1, s, s), np.uint8), "labels": np.repeat(np.arange(3), 3)[:8]},
     "8 labels for 9 images"),
    # in order and in range, but class 1 has no shot: re-adapting could not build its head row
    (lambda s: {"images": np.zeros((9, 1, s, s), np.uint8), "labels": np.repeat([0, 2, 2], 3)}, "class by class"),
])
def test_damaged_stored_shots_are_refused_on_load(saved, tmp_path, shots, match):
    path = tmp_path / "bad.fadapt"
    _rewrite(saved.path, path, **{"shots.npz": arrays_to_bytes(shots(saved.preprocess.size))})
    with pytest.raises(FastadaptError, match=match) as error:
        read_bundle(str(path))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("change", ["drop the first", "reshape the first"])
def test_a_meta_params_member_unlike_the_parameters_is_refused_on_load(saved, tmp_path, change):
    """meta_params.npz must hold the body parameters params.npz has, in their shapes: else adding classes
    would fail half-way (or re-adapt from other weights) long after the bundle was accepted."""
    from fastadapt.bundle import params_to_bytes

    meta_params = dict(read_bundle(saved.path).meta_params)
    first = next(iter(meta_params))
    if change == "drop the first":
        del meta_params[first]
    else:
        meta_params[first] = meta_params[first].reshape(-1)
    path = tmp_path / "bad.fadapt"
    _rewrite(saved.path, path, **{"meta_params.npz": params_to_bytes(meta_params)})
    with pytest.raises(FastadaptError, match="meta_params.npz") as error:
        read_bundle(str(path))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("change, match", [("bias", "inconsistent head"), ("columns", "feature_dim")])
def test_a_head_unlike_its_bias_or_the_feature_width_is_refused_on_load(saved, tmp_path, change, match):
    """params.npz's head must be one row per class in both tensors, as wide as architecture.feature_dim: else
    the bundle loads and fails (or answers from misaligned rows) only when it predicts."""
    from fastadapt.bundle import params_to_bytes

    params = dict(read_bundle(saved.path).params)
    assert saved.manifest["architecture"]["feature_dim"] == params["head.weight"].shape[1]
    if change == "bias":
        params["head.bias"] = params["head.bias"][:-1]
    else:
        params["head.weight"] = np.pad(params["head.weight"], ((0, 0), (0, 1)))
    path = tmp_path / "bad.fadapt"
    _rewrite(saved.path, path, **{"params.npz": params_to_bytes(params)})
    with pytest.raises(FastadaptError, match=match) as error:
        read_bundle(str(path))
    assert "\n" not in str(error.value)


def test_adding_classes_keeps_the_models_steps_and_lr(meta):
    """Guards against add_classes falling back to the recipe's steps and lr: a model adapted with its own
    steps and lr grows into the one adapting on all the images at once with them gives."""
    grown = meta.adapt(FIRST, steps=1, lr=0.05).add_classes(LATER)
    assert same_params(grown, meta.adapt(IMAGES, steps=1, lr=0.05))


def test_stored_shots_member_is_size_limited(saved, tmp_path, monkeypatch):
    from fastadapt import bundle

    monkeypatch.setitem(bundle.MEMBER_LIMITS, "shots.npz", 1000)
    with pytest.raises(FastadaptError, match="shots.npz declares"):
        read_bundle(saved.path)


def test_one_optional_member_without_the_other_is_refused(saved, tmp_path):
    with zipfile.ZipFile(saved.path) as archive:
        data = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(data["manifest.json"])
    del manifest["members"]["meta_params.npz"]
    data["manifest.json"] = json.dumps(manifest).encode()
    data["manifest.sha256"] = hashlib.sha256(data["manifest.json"]).hexdigest().encode()
    with zipfile.ZipFile(tmp_path / "half.fadapt", "w") as archive:
        for name, value in data.items():
            archive.writestr(name, value)
    with pytest.raises(FastadaptError, match="together"):
        read_bundle(str(tmp_path / "half.fadapt"))
    assert os.path.getsize(saved.path) < 1_000_000


def test_added_classes_follow_adapts_rules_for_a_dict(saved):
    """add_classes reads a dict as adapt does: a generator of images is a list, 1 and "1" are one name."""
    (label, images), = list(LATER.items())[:1]
    from_generator = saved.add_classes({label: (image for image in images)}, steps=0)
    from_list = saved.add_classes({label: list(images)}, steps=0)
    assert same_params(from_generator, from_list)
    with pytest.raises(FastadaptError, match="labels 1 and '1' are both named '1'"):
        saved.add_classes({1: images[:1], "1": images[1:]}, steps=0)


def test_a_class_copied_under_another_name_is_named_in_one_warning(meta):
    (label, images), = list(FIRST.items())[:1]
    with pytest.warns(fastadapt.FastadaptWarning, match=f"classes '{label}' and 'copy' have the same images"):
        meta.adapt({label: images, "copy": list(images), "other": list(LATER.values())[0]}, steps=0)
