"""Hostile bundles (issue 11, items 4, 8, 9 and 10): zip bombs, crafted manifests and parameters,
odd paths, terminal escapes, and signatures. Each is refused fast, with one line naming the bundle."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest

import fastadapt
from conftest import rewrite_manifest
from fastadapt import bundle as bundle_module
from fastadapt import signing
from fastadapt.bundle import read_bundle
from fastadapt.errors import FastadaptError
from fastadapt.manifest import FORMAT_VERSION, MAX_STEPS, printable, validate_manifest
from test_cli_runtime import run_cli  # the one in-process CLI runner


def members_of(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_zip(path, members: dict) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def craft(src, dst, manifest_bytes: bytes | None = None, checksums: bool = True, **replace) -> str:
    """Copy a bundle with members replaced (``params_npz=`` for params.npz ...) and, unless told
    otherwise, every checksum recomputed: what someone editing a bundle on purpose would do."""
    members = members_of(src)
    for key, data in replace.items():
        members[key.replace("_onnx", ".onnx").replace("_npz", ".npz")] = data
    manifest = json.loads(members["manifest.json"])
    if checksums:
        for name in ("forward.onnx", "step.onnx", "params.npz"):
            manifest["members"][name] = hashlib.sha256(members[name]).hexdigest()
    members["manifest.json"] = manifest_bytes if manifest_bytes is not None else json.dumps(manifest).encode()
    members["manifest.sha256"] = hashlib.sha256(members["manifest.json"]).hexdigest().encode()
    write_zip(dst, members)
    return str(dst)


def declare_size(data: bytes, name: str, size: int) -> bytes:
    """The zip ``data`` with the uncompressed size that its central directory declares for ``name`` changed."""
    data = bytearray(data)
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) >= 0:
        name_length = struct.unpack_from("<H", data, start + 28)[0]
        if data[start + 46:start + 46 + name_length] == name.encode():
            struct.pack_into("<I", data, start + 24, size)
            return bytes(data)
        start += 4
    raise AssertionError(f"{name} not in the zip")


def refused(call, match=None, seconds=5.0, megabytes=64) -> str:
    """Run ``call``: it must raise a one-line FastadaptError, quickly and with little memory."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(FastadaptError, match=match) as info:
            call()
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "\n" not in message and elapsed < seconds and peak < megabytes * 2**20, (message, elapsed, peak)
    return message


# ----------------------------------------------------------------------------- resource limits

@pytest.mark.parametrize("checksum", ["matching", "stale"])
def test_zip_bomb_declaring_4_gb_is_refused_before_reading(bundles, tmp_path, checksum):
    zeros = bytes(1 << 20)
    path = tmp_path / "bomb.fadapt"
    craft(bundles["zero"], path, forward_onnx=zeros, checksums=checksum == "matching")
    path.write_bytes(declare_size(path.read_bytes(), "forward.onnx", 4_000_000_000))
    message = refused(lambda: read_bundle(str(path)), "forward.onnx declares 4,000,000,000 bytes")
    assert str(path) in message and "re-export" in message
    refused(lambda: fastadapt.load(path), "zip bomb")


def test_zip_entry_lying_about_its_size_is_read_only_that_far(bundles, tmp_path):
    path = tmp_path / "liar.fadapt"
    craft(bundles["zero"], path, forward_onnx=bytes(32 << 20))  # 32 MiB of zeros, 32 KB compressed
    path.write_bytes(declare_size(path.read_bytes(), "forward.onnx", 1000))
    refused(lambda: read_bundle(str(path)), "not a readable bundle", megabytes=8)


def test_member_over_its_limit_is_refused(bundles, tmp_path, monkeypatch):
    monkeypatch.setitem(bundle_module.MEMBER_LIMITS, "forward.onnx", 1 << 20)
    path = craft(bundles["zero"], tmp_path / "big.fadapt", forward_onnx=bytes(8 << 20))
    refused(lambda: read_bundle(path), "forward.onnx declares 8,388,608 bytes")


def npz_with(name: str, header: dict, payload: bytes, version=(1, 0)) -> bytes:
    """A params.npz holding one .npy member with a hand-written header."""
    buffer = io.BytesIO()
    write = np.lib.format.write_array_header_1_0 if version == (1, 0) else np.lib.format.write_array_header_2_0
    write(buffer, header)
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr(f"{name}.npy", buffer.getvalue() + payload)
    return data.getvalue()


def params_npz(params: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **params)
    return buffer.getvalue()


def test_npy_header_declaring_373_gib_does_not_allocate(bundles, tmp_path):
    header = {"descr": "<f4", "fortran_order": False, "shape": (100_000, 1_000_000)}
    path = craft(bundles["zero"], tmp_path / "huge.fadapt", params_npz=npz_with("layers.0.weight", header, bytes(64)))
    message = refused(lambda: read_bundle(path), "params.npz is corrupt", megabytes=16)
    assert "(100000, 1000000)" in message


@pytest.mark.parametrize("case", ["float64", "object", "nan", "too-many-dims", "short", "renamed", "extra"])
def test_bad_parameters_are_refused(bundles, tmp_path, case):
    params = dict(read_bundle(bundles["zero"]).params)
    first = next(iter(params))
    if case == "float64":
        params[first] = params[first].astype(np.float64)
    elif case == "object":
        data = npz_with(first, {"descr": "|O", "fortran_order": False, "shape": (1,)}, b"\x80\x04N.")
    elif case == "nan":
        params[first] = params[first].copy()
        params[first].flat[0] = np.nan
    elif case == "too-many-dims":
        params[first] = params[first].reshape((1,) * 3 + params[first].shape)
    elif case == "renamed":
        params = {("x" + k if k == first else k): v for k, v in params.items()}
    elif case == "extra":
        params["surprise"] = np.zeros(3, np.float32)
    if case != "object":
        data = params_npz(params)
    if case == "short":
        data = npz_with(first, {"descr": "<f4", "fortran_order": False, "shape": params[first].shape}, bytes(8))
    path = craft(bundles["zero"], tmp_path / f"{case}.fadapt", params_npz=data)
    refused(lambda: read_bundle(path), "params.npz")


def test_a_graph_onnxruntime_cannot_load_is_one_line_in_a_fresh_process(bundles, tmp_path):
    """The process's first session is made on the runtime's own thread (sessions._starter): a graph that
    fails there still reaches the user as one line, not a traceback."""
    path = craft(bundles["zero"], tmp_path / "garbage.fadapt", forward_onnx=b"\x08\x08")  # ir_version 8, no graph
    code = "import sys, fastadapt\ntry:\n    fastadapt.load(sys.argv[1])\nexcept fastadapt.FastadaptError as e:\n    print(e)\n"
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "onnxruntime cannot load the graph" in out.stdout and "forward.onnx" in out.stdout, out.stdout


def test_parameter_shape_not_matching_the_graph_is_refused_on_load(bundles, tmp_path):
    params = dict(read_bundle(bundles["zero"]).params)
    name = next(k for k, v in params.items() if v.ndim == 4)
    params[name] = np.ascontiguousarray(params[name][:, :, :2, :])  # 3x3 kernels cut to 2x3
    path = craft(bundles["zero"], tmp_path / "shape.fadapt", params_npz=params_npz(params))
    message = refused(lambda: fastadapt.load(path), f"parameter '{name}' has shape")
    assert "forward.onnx expects" in message


def test_an_array_stored_twice_in_params_npz_is_refused(bundles, tmp_path):
    """Guards against reading one of two same-named arrays (the last would win silently, while np.load or
    another reader may take the other): here zeros first, then the real parameters."""
    params = read_bundle(bundles["zero"]).params
    first = next(iter(params))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name: that is the point here
        npy = io.BytesIO()
        np.lib.format.write_array(npy, np.zeros_like(params[first]))
        archive.writestr(f"{first}.npy", npy.getvalue())
        with zipfile.ZipFile(io.BytesIO(params_npz(params))) as real:
            for name in real.namelist():
                archive.writestr(name, real.read(name))
    path = craft(bundles["zero"], tmp_path / "twice.fadapt", params_npz=buffer.getvalue())
    refused(lambda: read_bundle(path), "params.npz")


# ----------------------------------------------------------------------------- crafted manifests

def valid_manifest(bundles) -> dict:
    return read_bundle(bundles["zero"]).manifest


CRAFTED = {  # name: (what replaces the manifest, or changes to it), the field named in the message
    "list": (b"[1, 2, 3]", "must hold an object"),
    "null": (b"null", "must hold an object"),
    "not-utf8": (b'{"format": "\xff\xfe"}', "not UTF-8"),
    "deeply-nested": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "nested-33": ({"provenance": {"x": json.loads("[" * 40 + "]" * 40)}}, "nested deeper"),
    "not-json": (b"{'kind': 'meta'}", "not valid JSON"),
    "huge-int": (b"1" * 5000, "not valid JSON"),
    "steps-string": ({"inner_loop": {"steps": "3"}}, "inner_loop.steps"),
    "steps-huge": ({"inner_loop": {"steps": 10**12}}, "inner_loop.steps"),
    "steps-bool": ({"inner_loop": {"steps": True}}, "inner_loop.steps"),
    "lr-string": ({"inner_loop": {"lr": "0.1"}}, "inner_loop.lr"),
    "lr-nan": ({"inner_loop": {"lr": float("nan")}}, "inner_loop.lr"),
    "lr-negative": ({"inner_loop": {"lr": -1}}, "inner_loop.lr"),
    "head-init": ({"inner_loop": {"head_init": "magic"}}, "inner_loop.head_init"),
    "head-scale-zero": ({"inner_loop": {"head_init": "prototype", "head_scale": 0}}, "inner_loop.head_scale"),
    "head-scale-string": ({"inner_loop": {"head_init": "prototype", "head_scale": "0.1"}}, "inner_loop.head_scale"),
    "head-scale-nan": ({"inner_loop": {"head_init": "prototype", "head_scale": float("nan")}}, "inner_loop.head_scale"),
    "head-scale-zero-head": ({"inner_loop": {"head_scale": 0.5}}, "inner_loop.head_scale"),
    "adapted-unknown": ({"inner_loop": {"adapted": ["nope"]}}, "inner_loop.adapted"),
    "inner-loop-list": ({"inner_loop": [3, 0.1]}, "inner_loop"),
    "size-huge": ({"preprocess": {"size": 100_000}}, "preprocess.size"),
    "size-float": ({"preprocess": {"size": 28.0}}, "preprocess.size"),
    "channels": ({"preprocess": {"channels": 2}}, "preprocess.channels"),
    "invert-string": ({"preprocess": {"invert": "yes"}}, "preprocess.invert"),
    "mean-strings": ({"preprocess": {"mean": ["a"]}}, "preprocess.mean"),
    "std-zero": ({"preprocess": {"std": [0.0]}}, "preprocess.std"),
    "std-inf": ({"preprocess": {"std": [float("inf")]}}, "preprocess.std"),
    "fit-unknown": ({"preprocess": {"fit": "zoom"}}, "preprocess.fit"),
    "preprocess-null": ({"preprocess": None}, "preprocess"),
    "parameters-dict": ({"parameters": {"a": 1}}, "parameters"),
    "members-list": ({"members": []}, "members"),
    "kind-list": ({"kind": ["meta"]}, "kind"),
    "kind-unknown": ({"kind": "ensemble"}, "unknown bundle kind"),
    "version-string": ({"format_version": "1"}, "format_version"),
    "version-zero": ({"format_version": 0}, "format_version"),
    "format": ({"format": "something-else"}, "format"),
    "provenance-list": ({"provenance": ["a"]}, "provenance"),
    "seed-string": ({"provenance": {"config": {"seed": "zero"}}}, "provenance.config.seed"),
    "evaluation-strings": ({"evaluation": ["a", "b"]}, "evaluation"),
    "accuracy-string": ({"evaluation": [{"accuracy_pct": "high"}]}, "evaluation.accuracy_pct"),
    "verification-string": ({"verification": {"max_abs_diff": "small"}}, "verification.max_abs_diff"),
    "feature-dim": ({"architecture": {"feature_dim": -1}}, "architecture.feature_dim"),
    "threshold": ({"unknown": {"threshold": "high"}}, "unknown.threshold"),
    "adaptation-from": ({"adaptation": {"from": "x"}}, "adaptation.from"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_manifest_is_refused_by_load_and_info(bundles, tmp_path, capsys, case):
    change, field = CRAFTED[case]
    path = tmp_path / f"{case}.fadapt"
    if isinstance(change, bytes):
        craft(bundles["zero"], path, manifest_bytes=change)
    else:
        rewrite_manifest(bundles["zero"], path, **change)
    message = refused(lambda: fastadapt.load(path), None)
    assert str(path) in message and field in message, message
    assert "--lr" not in message and "--steps" not in message
    if case not in ("kind-unknown",):
        assert "re-export" in message or "corrupt" in message, message
    code, out, err = run_cli(capsys, "info", path)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1 and field in err, err


def test_version_string_is_not_called_newer(bundles, tmp_path):
    path = tmp_path / "v.fadapt"
    rewrite_manifest(bundles["zero"], path, format_version="1")
    assert "newer" not in refused(lambda: read_bundle(str(path)))
    rewrite_manifest(bundles["zero"], path, format_version=FORMAT_VERSION + 1)
    assert f"newer than this fastadapt reads ({FORMAT_VERSION}); upgrade" in refused(lambda: read_bundle(str(path)))


def test_exporter_bundles_and_forward_compatible_keys_pass(bundles, tmp_path):
    for path in (bundles["zero"], bundles["prototype"], fastadapt.runtime.DEFAULT_MODEL):
        validate_manifest(read_bundle(path).manifest, path)
    path = tmp_path / "newer.fadapt"
    rewrite_manifest(bundles["zero"], path, future_key={"anything": [1, "x"]}, unknown={"threshold": 0.25, "x": 1},
                     preprocess={"fit": "pad"})
    assert fastadapt.load(path).manifest["unknown"]["threshold"] == 0.25
    rewrite_manifest(bundles["zero"], path, inner_loop={"steps": MAX_STEPS})
    fastadapt.load(path)


@pytest.mark.parametrize("change, field", [
    ({"preprocess": {"gamma": 2.2}}, "preprocess holds 'gamma'"),
    ({"preprocess": {"resize": "bilinear"}}, "got 'bilinear'"),
    ({"preprocess": {"resize": 1}}, "preprocess.resize must be lanczos"),
    ({"inner_loop": {"weight_decay": 0.5}}, "inner_loop holds 'weight_decay'")])
def test_unknown_keys_that_would_change_the_answers_are_refused(bundles, tmp_path, change, field):
    """preprocess and inner_loop define the device's arithmetic: a key this version would ignore (a newer writer's,
    which would have bumped format_version) is refused, not silently skipped (finding 8 of review 8b; before it,
    unknown preprocess keys were accepted as forward compatible)."""
    path = tmp_path / "newer.fadapt"
    rewrite_manifest(bundles["zero"], path, **change)
    message = refused(lambda: fastadapt.load(path), None)
    assert str(path) in message and field in message and "pip install -U fastadapt" in message, message


def test_every_key_todays_writers_and_older_formats_use_is_accepted(bundles):
    """The shipped bundles (format 1 and 2), a prototype head and learned inner rates pass the key checks."""
    from fastadapt.manifest import INNER_LOOP_KEYS, PREPROCESS_KEYS

    for path in (fastadapt.runtime.DEFAULT_MODEL, fastadapt.load("photos").path, bundles["zero"], bundles["prototype"]):
        manifest = read_bundle(path).manifest
        assert set(manifest["preprocess"]) <= set(PREPROCESS_KEYS) and set(manifest["inner_loop"]) <= set(INNER_LOOP_KEYS)
        assert manifest["preprocess"].get("resize", "lanczos") == "lanczos"
    assert {"adapted", "learned_lrs", "head_scale"} <= set(INNER_LOOP_KEYS)


def test_validate_manifest_names_the_bundle_and_field():
    with pytest.raises(FastadaptError, match=r"^x\.fadapt: manifest field inner_loop\.lr must be"):
        manifest = {"format": "fastadapt-bundle", "format_version": 1, "kind": "meta",
                    "preprocess": {"size": 28, "channels": 1, "invert": True, "mean": [0], "std": [1]},
                    "parameters": ["w"], "members": {n: "0" * 64 for n in ("forward.onnx", "step.onnx", "params.npz")},
                    "inner_loop": {"steps": 1, "lr": "fast", "adapted": ["w"]}}
        validate_manifest(manifest, "x.fadapt")
    manifest["inner_loop"]["lr"] = 0.5
    assert validate_manifest(manifest, "x.fadapt") is manifest


def small_manifest(adapted: bool = False, colour: dict | None = None, **changes) -> dict:
    """The smallest valid manifest (meta, or adapted with two classes and optionally a colour head), with
    ``changes``: a dict merges into that section, anything else replaces it."""
    names = ["w"] + (["head.weight", "head.bias"] if adapted else []) + (["colour.weight", "colour.bias"] if colour else [])
    manifest = {"format": "fastadapt-bundle", "format_version": 1, "kind": "adapted" if adapted else "meta",
                "preprocess": {"size": 28, "channels": 3 if colour else 1, "invert": True, "mean": [0], "std": [1]},
                "parameters": names, "members": {n: "0" * 64 for n in ("forward.onnx", "step.onnx", "params.npz")},
                "inner_loop": {"steps": 1, "lr": 0.5, "adapted": ["w"]}}
    if adapted:
        manifest["classes"] = ["a", "b"]
    if colour:
        manifest["colour"], manifest["format_version"] = colour, 3
    for key, value in changes.items():
        manifest[key] = {**manifest[key], **value} if isinstance(value, dict) and key in manifest else value
    return manifest


LIMITS = [  # (manifest, accepted): each limit at its edge (accepted) and one past it (refused)
    (small_manifest(preprocess={"size": 8}), True), (small_manifest(preprocess={"size": 7}), False),
    (small_manifest(preprocess={"size": 1024}), True), (small_manifest(preprocess={"size": 1025}), False),
    (small_manifest(colour={"bins": 4, "scale": 1}, adapted=True, preprocess={"mean": [0, 0]}), False),
    (small_manifest(colour={"bins": 4, "scale": 1}, adapted=True, preprocess={"mean": [0, 0, 0]}), True),
    (small_manifest(preprocess={"mean": [-1000]}), True), (small_manifest(preprocess={"mean": [-1001]}), False),
    (small_manifest(preprocess={"std": [1000]}), True), (small_manifest(preprocess={"std": [1001]}), False),
    (small_manifest(architecture={"image_size": 32}), False), (small_manifest(architecture={"image_size": 28}), True),
    (small_manifest(inner_loop={"lr": 1e6}), True), (small_manifest(inner_loop={"lr": 1.5e6}), False),
    (small_manifest(inner_loop={"head_init": "prototype", "head_scale": 1e-6}), True),
    (small_manifest(inner_loop={"head_init": "prototype", "head_scale": 1e-7}), False),
    (small_manifest(adapted=True, classes=["a"]), False),
    (small_manifest(adapted=True, classes=["a", "b" * 256]), True),
    (small_manifest(adapted=True, classes=["a", "b" * 257]), False),
    (small_manifest(provenance={"seed": 2**32 - 1}), True), (small_manifest(provenance={"seed": 2**32}), False),
    (small_manifest(model_card={f"s{i}": "x" for i in range(32)}), True),
    (small_manifest(model_card={f"s{i}": "x" for i in range(33)}), False),
    (small_manifest(model_card={"data": "x" * 8000}), True),
    (small_manifest(unknown_calibration={"threshold": -0.25}), True),
    (small_manifest(unknown_calibration={"threshold": "low"}), False),
    (small_manifest(adaptation={"shots_per_class": {"a": -1}}), False),
    (small_manifest(architecture={"feature_dim": 2**20}), True),
    (small_manifest(architecture={"feature_dim": 2**20 + 1}), False),
    (small_manifest(adapted=True, colour={"bins": 16, "scale": 1e6}), True),
    (small_manifest(adapted=True, colour={"bins": 4, "scale": 2e6}), False),
    (small_manifest(adapted=True, colour={"bins": 4, "scale": 1}, preprocess={"channels": 1}), False),
    (small_manifest(adapted=True, members={"shots.npz": "0" * 64, "meta_params.npz": "0" * 64}), True),
    (small_manifest(adapted=True, members={"shots.npz": "0" * 64}), False),
]


@pytest.mark.parametrize("index", range(len(LIMITS)))
def test_each_manifest_limit_holds_at_its_edge(index):
    """Every bound validate_manifest puts on a field, at the edge and one past it: a limit off by one, or a
    check dropped (a mean of 2 values for 3 channels, an image size the graph was not exported for, one
    optional member without the other, a 3-bin colour head, a colour head on a 1-channel model) would let
    a crafted bundle through or refuse one fastadapt writes."""
    manifest, accepted = LIMITS[index]
    if accepted:
        assert validate_manifest(manifest, "x.fadapt") is manifest
    else:
        with pytest.raises(FastadaptError, match=r"^x\.fadapt: "):
            validate_manifest(manifest, "x.fadapt")


@pytest.fixture(scope="module")
def adapted_path(bundles, tmp_path_factory):
    model = fastadapt.load(bundles["zero"])
    rng = np.random.default_rng(0)
    images = rng.random((4, 1, 28, 28), dtype=np.float32)
    path = tmp_path_factory.mktemp("adapted") / "adapted.fadapt"
    model.adapt_arrays(images, np.array([0, 0, 1, 1]), ["a", "b"], steps=1).save(str(path))
    return str(path)


@pytest.mark.parametrize("change, match", [
    ({"classes": ["a", "a"]}, "unique"), ({"classes": ["a", 2]}, "classes"), ({"classes": ["a", "b", "c"]}, "3 class names"),
    ({"classes": None}, "classes"), ({"adaptation": {"shots_per_class": {"a": "x"}}}, "shots_per_class")])
def test_crafted_adapted_manifest_is_refused(adapted_path, tmp_path, change, match):
    path = tmp_path / "bad.fadapt"
    rewrite_manifest(adapted_path, path, **change)
    refused(lambda: fastadapt.load(path), match)


# ----------------------------------------------------------------------------- terminal escapes

def test_printable_escapes_control_characters():
    assert printable("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert printable("a\nb\rc\td\x7f\x9b") == "a\\nb\\rc\\td\\x7f\\x9b"
    assert printable("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert printable("chat 猫 émoji 👍 👨\u200d👩") == "chat 猫 émoji 👍 👨\u200d👩"
    assert printable(42) == "42"


def test_info_escapes_terminal_sequences(adapted_path, tmp_path, capsys):
    path = tmp_path / "ansi.fadapt"
    rewrite_manifest(adapted_path, path, classes=["\x1b[2J\x1b[31mred", "blue\rgreen"],
                     provenance={"note": "\x1b]0;title\x07", "\x1b[1mkey": 1},
                     evaluation=[{"accuracy_pct": 50.0, "ci95_pct": None, "data": "\x1b[5m"}, {"free": "\x9b2J"}])
    code, out, err = run_cli(capsys, "info", path)
    assert code == 0, err
    assert "\x1b" not in out and "\r" not in out and "\x9b" not in out and "\x07" not in out
    assert "\\x1b[2J\\x1b[31mred" in out and "blue\\rgreen" in out and "50.00% ± ?" in out


def test_info_survives_free_form_fields(bundles, tmp_path, capsys):
    path = tmp_path / "free.fadapt"
    rewrite_manifest(bundles["zero"], path, provenance={"deep": {"a": {"b": {"c": {"d": {"e": [1, {"f": 2}]}}}}},
                                                        "long": "x" * 100_000, "list": list(range(1000))},
                     evaluation={"accuracy_pct": 1, "tasks": [1, 2]}, verification={"max_abs_diff": 1, "steps": None},
                     extra=[None, True, 1.5])
    code, out, err = run_cli(capsys, "info", path)
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) < 2100


# ----------------------------------------------------------------------------- paths

@pytest.mark.parametrize("value", [b"x", 42, "", None.__class__, 3.5, ["a.fadapt"]])
def test_load_of_a_non_path_is_a_user_error(value):
    with pytest.raises(FastadaptError, match="path of a .fadapt file"):
        fastadapt.load(value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_fifo_is_refused_without_hanging(tmp_path, capsys):
    fifo = tmp_path / "model.fadapt"
    os.mkfifo(fifo)
    result = {}

    def attempt():
        try:
            fastadapt.load(fifo)
        except FastadaptError as exc:
            result["error"] = str(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(20)
    assert "not a regular file" in result.get("error", "hung"), result
    code, out, err = run_cli(capsys, "info", fifo)
    assert code == 2 and "not a regular file" in err


# ----------------------------------------------------------------------------- signatures

RFC8032 = [  # RFC 8032 section 7.1, TEST 1, 2 and 3: secret key, public key, message, signature
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
]


@pytest.mark.parametrize("secret, public, message, signature", RFC8032)
def test_ed25519_rfc8032_vectors(secret, public, message, signature):
    secret, public, message, signature = map(bytes.fromhex, (secret, public, message, signature))
    assert signing.public_key(secret) == public
    assert signing.sign(secret, message) == signature
    assert signing.verify(public, message, signature)
    assert not signing.verify(public, message + b"x", signature)
    assert not signing.verify(public, message, signature[:63] + bytes([signature[63] ^ 1]))
    assert not signing.verify(public, message, signature[:32] + (signing.L + 1).to_bytes(32, "little"))
    # s + L satisfies the verification equation too (the group has order L): RFC 8032 5.1.7 refuses any s >= L,
    # else each signature has a second valid form (malleability)
    s = int.from_bytes(signature[32:], "little")
    assert not signing.verify(public, message, signature[:32] + (s + signing.L).to_bytes(32, "little"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    made = {}
    for name in ("ours", "theirs"):
        path = folder / name
        made[name] = (str(path), signing.write_private_key(str(path)).hex())
    return made


def test_keygen_and_sign_commands(bundles, tmp_path, capsys, monkeypatch):
    key = tmp_path / "signing.key"
    code, out, err = run_cli(capsys, "keygen", "--out", key)
    assert code == 0, err
    public = (tmp_path / "signing.key.pub").read_text().strip()
    assert public in out and len(public) == 64 and os.stat(key).st_mode & 0o777 == 0o600
    code, out, err = run_cli(capsys, "keygen", "--out", key)
    assert code == 2 and "already exists" in err
    signed = tmp_path / "signed.fadapt"
    code, out, err = run_cli(capsys, "sign", bundles["zero"], "--key", key, "--out", signed)
    assert code == 0, err
    assert fastadapt.load(signed, trusted_keys=[public]).bundle.signed_by == public
    monkeypatch.setenv("FASTADAPT_TRUSTED_KEYS", f" {public.upper()} ,")
    fastadapt.load(signed)
    code, out, err = run_cli(capsys, "info", signed)
    assert code == 0 and f"trusted key {public}" in out
    code, out, err = run_cli(capsys, "info", bundles["zero"])
    assert code == 2 and "not signed" in err
    code, out, err = run_cli(capsys, "sign", bundles["zero"], "--key", bundles["zero"])
    assert code == 2 and "not a fastadapt private key" in err


def test_trusted_keys_require_a_valid_signature(bundles, tmp_path, keys, monkeypatch):
    ours_path, ours = keys["ours"]
    theirs_path, theirs = keys["theirs"]
    monkeypatch.delenv("FASTADAPT_TRUSTED_KEYS", raising=False)
    signed = str(tmp_path / "signed.fadapt")
    signing.sign_bundle(bundles["zero"], signing.read_private_key(ours_path), signed)
    fastadapt.load(signed)  # no keys required: a signature changes nothing
    assert read_bundle(signed, trusted_keys=[ours]).signed_by == ours
    refused(lambda: fastadapt.load(bundles["zero"], trusted_keys=[ours]), "not signed")
    refused(lambda: fastadapt.load(signed, trusted_keys=[theirs]), "none of them a trusted key")
    refused(lambda: fastadapt.load(signed, trusted_keys=["abc"]), "not an Ed25519 public key")
    refused(lambda: fastadapt.load(signed, trusted_keys=42), "list of hex")
    # the issue's attack: forward.onnx replaced, checksums recomputed, signature kept
    members = members_of(signed)
    forged = tmp_path / "forged.fadapt"
    craft(signed, forged, step_onnx=members["step.onnx"] + b"\x32\x00")  # an empty doc_string field appended
    fastadapt.load(forged)  # checksums alone cannot tell
    refused(lambda: fastadapt.load(forged, trusted_keys=[ours]), "modified after signing")
    monkeypatch.setenv("FASTADAPT_TRUSTED_KEYS", ours)
    refused(lambda: fastadapt.load(forged), "modified after signing")
    # a second signer adds a signature; either key is then enough
    signing.sign_bundle(signed, signing.read_private_key(theirs_path))
    assert read_bundle(signed, trusted_keys=[theirs], check_trust=False).signed_by is None
    monkeypatch.delenv("FASTADAPT_TRUSTED_KEYS")
    assert read_bundle(signed, trusted_keys=[theirs]).signed_by == theirs
    assert read_bundle(signed, trusted_keys=[ours]).signed_by == ours


def test_malformed_signature_member_is_refused_when_required(bundles, tmp_path, keys):
    path = tmp_path / "bad-sig.fadapt"
    members = members_of(bundles["zero"])
    members[signing.SIGNATURES] = b"\x1b[31m garbage"
    write_zip(path, members)
    fastadapt.load(path)
    refused(lambda: fastadapt.load(path, trusted_keys=[keys["ours"][1]]), "malformed")


def test_members_compressed_without_an_output_bound_are_refused(bundles, tmp_path):
    members = members_of(bundles["zero"])
    path = tmp_path / "bz2.fadapt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():  # bzip2 would inflate a few KB to gigabytes in one read
            archive.writestr(name, data, zipfile.ZIP_BZIP2 if name == "forward.onnx" else zipfile.ZIP_DEFLATED)
    refused(lambda: read_bundle(str(path)), "compression method 12")


def test_info_json_is_valid_json_with_non_finite_free_form_values(bundles, tmp_path, capsys):
    path = tmp_path / "nan.fadapt"
    rewrite_manifest(bundles["zero"], path, provenance={"score": float("nan"), "inf": [float("inf")]})
    code, out, err = run_cli(capsys, "info", path, "--json")
    assert code == 0, err
    assert json.loads(out, parse_constant=lambda c: pytest.fail(c))["provenance"]["score"] is None


@pytest.mark.parametrize("labels", [[0, 0, 2, 2], [0, 1, 1, 5], [[0], [1], [0], [1]]])
def test_support_labels_must_cover_the_classes(bundles, labels):
    model = fastadapt.load(bundles["prototype"])
    images = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    with pytest.raises(FastadaptError, match="label") as error:  # the wording is adapt_arrays' (runtime/model.py)
        model.adapt_arrays(images, np.array(labels), ["a", "b", "c"], steps=0)
    assert "\n" not in str(error.value)


def test_huge_zip_directory_is_refused_before_parsing(bundles, tmp_path):
    data = bytearray(open(bundles["zero"], "rb").read())
    struct.pack_into("<I", data, len(data) - 22 + 12, 3_000_000_000)  # the directory's declared size
    path = tmp_path / "directory.fadapt"
    path.write_bytes(bytes(data))
    refused(lambda: read_bundle(str(path)), "zip directory is too large")
    many = tmp_path / "many.fadapt"
    with zipfile.ZipFile(many, "w") as archive:
        for i in range(30_000):  # empty entries: a 2 MB directory
            archive.writestr(f"{i}", b"")
    refused(lambda: read_bundle(str(many)), "zip directory is too large")


def test_zip64_is_refused(bundles, tmp_path):
    path = tmp_path / "zip64.fadapt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members_of(bundles["zero"]).items():
            with archive.open(zipfile.ZipInfo(name), "w", force_zip64=True) as f:
                f.write(data)
        archive.writestr("pad", b"")
    data = bytearray(path.read_bytes())
    # a zip64 end record and locator before the classic one, as zipfile writes them for > 65,535 entries
    end = len(data) - 22
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 6, 6, *struct.unpack_from("<LL", data, end + 12))
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
    path.write_bytes(bytes(data[:end]) + record + locator + bytes(data[end:]))
    refused(lambda: read_bundle(str(path)), "zip64")


def test_a_bundle_that_could_not_be_read_back_is_never_written(bundles, tmp_path):
    model = fastadapt.load(bundles["zero"])
    images = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    adapted = model.adapt_arrays(images, np.array([0, 0, 1, 1]), ["a", "b" * 300], steps=1)
    out = tmp_path / "long.fadapt"
    with pytest.raises(FastadaptError, match="classes must be names of 1..256 characters.*nothing was written"):
        adapted.save(str(out))
    assert not out.exists()


def test_adapt_and_predict_trusted_key_flags(bundles, glyphs, tmp_path, capsys):
    """--trusted-key: a signed meta model adapts; an unsigned adapted model is refused by predict."""
    key = tmp_path / "signing.key"
    assert run_cli(capsys, "keygen", "--out", key)[0] == 0
    public = (tmp_path / "signing.key.pub").read_text().strip()
    signed = tmp_path / "signed.fadapt"
    assert run_cli(capsys, "sign", bundles["zero"], "--key", key, "--out", signed)[0] == 0
    adapted = tmp_path / "adapted.fadapt"
    code, out, err = run_cli(capsys, "adapt", "--shots", glyphs["shots"], "--model", signed, "--out", adapted,
                             "--trusted-key", public)
    assert code == 0, err
    code, out, err = run_cli(capsys, "adapt", "--shots", glyphs["shots"], "--model", bundles["zero"],
                             "--out", tmp_path / "no.fadapt", "--trusted-key", public)
    assert code == 2 and "not signed" in err and not (tmp_path / "no.fadapt").exists()
    code, out, err = run_cli(capsys, "predict", glyphs["queries"], "--model", adapted, "--trusted-key", public)
    assert code == 2 and "not signed" in err
    assert run_cli(capsys, "sign", adapted, "--key", key)[0] == 0
    code, out, err = run_cli(capsys, "predict", glyphs["queries"], "--model", adapted, "--trusted-key", public)
    assert code == 0, err
