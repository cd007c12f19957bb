"""Property-based fuzzing (hypothesis) of the bundle reader and manifest validation (issue 11).

For thousands of generated inputs (random bytes, mutated and truncated real bundles, zips with random
members, random and mutated manifests, huge declared sizes, crafted .npy headers), the property is:
a ``FastadaptError`` with a one-line message, or a valid result; never another exception, never more
than a bounded amount of memory. ``fastadapt info`` must print any bundle that reads, with no terminal
control characters. Deterministic (``derandomize``) and a few tens of seconds in all.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastadapt import signing
from fastadapt.bundle import Bundle, read_bundle
from fastadapt.errors import FastadaptError
from fastadapt.images import Preprocess
from fastadapt.manifest import printable, validate_manifest

MEMORY_LIMIT = 64 * 2**20  # bytes any single read may allocate (the test bundle is 0.5 MB)


def fuzz(examples: int):
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def real(bundles, tmp_path_factory) -> dict:
    """The zero bundle's bytes, members and manifest, and a scratch file path for generated bundles."""
    with zipfile.ZipFile(bundles["zero"]) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    return {"bytes": Path(bundles["zero"]).read_bytes(), "members": members,
            "manifest": json.loads(members["manifest.json"]), "params": read_bundle(bundles["zero"]).params,
            "scratch": str(tmp_path_factory.mktemp("fuzz") / "fuzzed.fadapt")}


@contextlib.contextmanager
def bounded_memory():
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
        assert peak < MEMORY_LIMIT, f"{peak / 2**20:.0f} MiB"
    finally:
        tracemalloc.stop()


def check_read(path: str) -> Bundle | None:
    """The property: read_bundle gives a valid Bundle or a one-line FastadaptError, in bounded memory."""
    with bounded_memory():
        try:
            bundle = read_bundle(path)
        except FastadaptError as exc:
            assert "\n" not in str(exc) and "\x1b" not in str(exc), str(exc)
            return None
    assert isinstance(bundle, Bundle) and validate_manifest(bundle.manifest, path) is bundle.manifest
    assert list(bundle.params) == bundle.manifest["parameters"]
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in bundle.params.values())
    Preprocess.from_dict(bundle.manifest["preprocess"])  # what the runtime does next
    check_info(path)
    return bundle


def check_info(path: str) -> None:
    from fastadapt.cli.info_command import info

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        info(Path(path), False)
    text = out.getvalue()
    assert not any(c in text for c in "\x1b\r\x07\x9b"), text


def zip_bytes(members: dict, method=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def bundle_bytes(members: dict, manifest, fix_members: bool = True, fix_manifest: bool = True, raw=None) -> bytes:
    """A bundle zip from ``members`` and ``manifest`` (a JSON value), with checksums made to match."""
    members = dict(members)
    if fix_members and isinstance(manifest, dict) and isinstance(manifest.get("members"), dict):
        manifest = {**manifest, "members": {**manifest["members"], **{
            name: hashlib.sha256(members[name]).hexdigest() for name in ("forward.onnx", "step.onnx", "params.npz")
            if name in members}}}
    members["manifest.json"] = raw if raw is not None else json.dumps(manifest).encode()
    if fix_manifest:
        members["manifest.sha256"] = hashlib.sha256(members["manifest.json"]).hexdigest().encode()
    return zip_bytes(members)


def write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


# ----------------------------------------------------------------------------- strategies

FIELDS = ["format", "format_version", "kind", "preprocess", "inner_loop", "parameters", "members", "classes",
          "size", "channels", "invert", "mean", "std", "fit", "steps", "lr", "head_init", "adapted", "adapt",
          "provenance", "evaluation", "verification", "adaptation", "unknown", "threshold", "architecture",
          "feature_dim", "accuracy_pct", "ci95_pct", "config", "seed", "val_classes", "shots_per_class", "from",
          "colour", "bins", "scale"]
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.integers(-3, 1100)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["meta", "adapted", "zero", "prototype", "learned", "pad", "crop", "\x1b[31m", "head.weight",
                              "colour.weight", "colour.bias"]))
keys = st.sampled_from(FIELDS) | st.text(max_size=8)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
                           max_leaves=25)


@st.composite
def mutated(draw, base):
    """``base`` (a JSON value) with 1-4 values replaced, deleted or added somewhere in its tree."""
    value = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        parent, key, node = None, None, value
        while isinstance(node, (dict, list)) and node and (parent is None or draw(st.booleans())):
            parent = node
            key = draw(st.sampled_from(sorted(node))) if isinstance(node, dict) else draw(st.integers(0, len(node) - 1))
            node = node[key]
        if parent is None:
            continue
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[key] = draw(json_values)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(keys)] = draw(json_values)
        else:
            parent.insert(key, draw(json_values))
    return value


def npy(header: dict, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + payload


# ----------------------------------------------------------------------------- properties

@fuzz(800)
@given(value=json_values)
def test_validate_manifest_random_json(value):
    try:
        result = validate_manifest(value, "fuzz.fadapt")
    except FastadaptError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzz.fadapt: ")
    else:
        assert result is value


@fuzz(600)
@given(data=st.data())
def test_validate_manifest_mutations_of_a_real_one(real, data):
    manifest = data.draw(mutated(real["manifest"]))
    try:
        validate_manifest(manifest, "fuzz.fadapt")
    except FastadaptError as exc:
        assert "\n" not in str(exc)
    else:
        Preprocess.from_dict(manifest["preprocess"])
        assert 0 <= manifest["inner_loop"]["steps"] <= 1000 and math.isfinite(manifest["inner_loop"]["lr"])


@fuzz(250)
@given(data=st.data())
def test_read_mutated_manifests_with_matching_checksums(real, data):
    manifest = data.draw(mutated(real["manifest"]))
    check_read(write(real["scratch"], bundle_bytes(real["members"], manifest)))


@pytest.fixture(scope="module")
def coloured(tmp_path_factory) -> dict:
    """An adapted photos bundle with a colour head (runtime/colour.py): its members and manifest."""
    import fastadapt
    from fastadapt.runtime import loading

    shots = Path(loading.ASSETS) / "photo_examples" / "shots"
    if not shots.is_dir() or not (Path(loading.ASSETS) / loading.BUILT_IN["photos"]).exists():
        pytest.skip("no photos model shipped in this checkout")
    path = str(tmp_path_factory.mktemp("fuzz-colour") / "coloured.fadapt")
    adapted = fastadapt.load("photos").adapt(str(shots))
    assert "colour" in adapted.manifest
    adapted.save(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    return {"members": members, "manifest": json.loads(members["manifest.json"]), "scratch": path + ".fuzzed",
            "image": np.random.default_rng(0).integers(0, 256, (1, 3, 32, 32), dtype=np.uint8)}


@fuzz(150)
@given(data=st.data())
def test_mutated_colour_manifests_read_and_predict_or_fail_in_one_line(coloured, data):
    """The colour cue's manifest entry and head: any mutation reads and predicts finite probabilities, or is a
    one-line FastadaptError."""
    import fastadapt
    from fastadapt.images import to_float

    manifest = data.draw(mutated(coloured["manifest"]))
    path = write(coloured["scratch"], bundle_bytes(coloured["members"], manifest))
    if check_read(path) is None:
        return
    try:
        model = fastadapt.load(path)
        if model.kind != "adapted":  # a meta model has nothing to predict
            return
        probabilities = model.probabilities(to_float(coloured["image"], model.preprocess))
    except FastadaptError as exc:
        assert "\n" not in str(exc)
    else:
        assert np.isfinite(probabilities).all()


@fuzz(250)
@given(blob=st.binary(max_size=2000) | st.sampled_from([b"PK\x03\x04", b"PK\x05\x06" + bytes(18), b""]))
def test_read_random_bytes(real, blob):
    check_read(write(real["scratch"], blob))


@fuzz(300)
@given(data=st.data())
def test_read_damaged_real_bundle(real, data):
    blob = bytearray(real["bytes"])
    for _ in range(data.draw(st.integers(1, 6))):
        action = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        where = data.draw(st.integers(0, max(0, len(blob) - 1)))
        if action == "flip" and blob:
            blob[where] ^= data.draw(st.integers(1, 255))
        elif action == "truncate":
            del blob[where:]
        elif action == "insert":
            blob[where:where] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del blob[where:where + data.draw(st.integers(1, 64))]
    check_read(write(real["scratch"], bytes(blob)))


member_names = st.sampled_from(["manifest.json", "manifest.sha256", "forward.onnx", "step.onnx", "params.npz",
                                signing.SIGNATURES, "../evil", "x/" * 5, "\x1b[2J"])


@fuzz(250)
@given(data=st.data())
def test_read_zips_with_random_members_and_manifests(real, data):
    members = {}
    for name in data.draw(st.lists(member_names, max_size=7)):
        members[name] = data.draw(st.sampled_from([real["members"].get(name, b"")]) | st.binary(max_size=64))
    manifest = data.draw(json_values | mutated(real["manifest"]))
    raw = data.draw(st.none() | st.binary(max_size=64) | st.sampled_from([b"[" * 5000, b"\xff", b"1" * 5000]))
    blob = bundle_bytes(members, manifest, fix_members=data.draw(st.booleans()),
                        fix_manifest=data.draw(st.booleans()), raw=raw)
    check_read(write(real["scratch"], blob))


def declare(blob: bytes, index: int, size: int) -> bytes:
    """``blob`` (a zip) with the central directory's uncompressed size of its index-th entry set to ``size``."""
    blob = bytearray(blob)
    start = -1
    for _ in range(index + 1):
        start = blob.find(b"PK\x01\x02", start + 1)
    struct.pack_into("<I", blob, start + 24, size)
    return bytes(blob)


@fuzz(100)
@given(index=st.integers(0, 4), size=st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 2**31, 2**32 - 1]))
def test_read_huge_or_wrong_declared_sizes(real, index, size):
    check_read(write(real["scratch"], declare(real["bytes"], index, size)))


@fuzz(150)
@given(data=st.data())
def test_read_crafted_npy_headers(real, data):
    params = real["params"]
    names = list(params)
    header = {"descr": data.draw(st.sampled_from(["<f4", ">f4", "<f8", "|O", "<i4", "<f2", "|u1", [("a", "<f4")]])),
              "fortran_order": data.draw(st.booleans()),
              "shape": tuple(data.draw(st.lists(st.integers(0, 2**40) | st.integers(0, 70), max_size=6)))}
    victim = data.draw(st.sampled_from(names))
    shape_bytes = math.prod(header["shape"]) * 4
    payload = bytes(shape_bytes) if shape_bytes < 100_000 and data.draw(st.booleans()) else data.draw(st.binary(max_size=64))
    members = {f"{n}.npy": (npy(header, payload) if n == victim else npy(
        {"descr": "<f4", "fortran_order": False, "shape": v.shape}, v.tobytes())) for n, v in params.items()}
    npz = zip_bytes(members, data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])))
    blob = bundle_bytes({**real["members"], "params.npz": npz}, real["manifest"])
    bundle = check_read(write(real["scratch"], blob))
    if bundle is not None:  # only a header the exporter could have written passes
        assert bundle.params[victim].shape == header["shape"] and header["descr"] in ("<f4", ">f4")


@fuzz(500)
@given(text=st.text())
def test_printable_leaves_no_control_characters(text):
    import unicodedata

    shown = printable(text)
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs") or c == "\u200d" for c in shown)
    assert shown == text or "\\" in shown
