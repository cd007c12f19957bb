"""Property-based fuzzing of the image loader: whatever comes in, the answer is a FastadaptError or a
valid (C, size, size) uint8 image, never another exception, and memory stays bounded.

Deterministic (derandomize, no example database), a few thousand inputs in a few seconds.
"""

import io
import resource
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fastadapt.errors import FastadaptError
from fastadapt.images import Preprocess, decode_bytes, open_image, to_uint8

FUZZ = settings(max_examples=600, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
SPECS = [Preprocess(), Preprocess(size=16, channels=3, invert=False, fit="crop"), Preprocess(fit="stretch")]
# Peak RSS may grow by at most this over the module: the pixel limit bounds one image to ~200 MB.
MAX_GROWTH_MB = 512


def _seed_files() -> dict:
    """Small valid files in every format we read, to mutate."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (11, 7, 3), dtype=np.uint8)
    out = {}
    for fmt, mode in [("PNG", "RGBA"), ("PNG", "I;16"), ("PNG", "P"), ("JPEG", "RGB"), ("JPEG", "L"),
                      ("GIF", "P"), ("TIFF", "RGB"), ("TIFF", "F"), ("BMP", "RGB"), ("WEBP", "RGB"), ("PPM", "L")]:
        image = Image.fromarray(pixels).convert(mode if mode not in ("I;16", "F") else "L")
        if mode == "I;16":
            image = Image.fromarray(pixels[:, :, 0].astype(np.uint16) * 257)
        if mode == "F":
            image = Image.fromarray(pixels[:, :, 0].astype(np.float32) / 255)
        buffer = io.BytesIO()
        try:
            image.save(buffer, fmt)
        except (KeyError, OSError):  # a Pillow built without this encoder
            continue
        out[f"{fmt}-{mode}"] = buffer.getvalue()
    return out


SEEDS = _seed_files()


def _peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


@pytest.fixture(scope="module", autouse=True)
def bounded_memory():
    before = _peak_mb()
    yield
    assert _peak_mb() - before < MAX_GROWTH_MB


def check(source, spec: Preprocess) -> None:
    """The property: a valid result or a one-line FastadaptError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's own warnings (corrupt EXIF, ...) are not the property
        try:
            out = to_uint8(source, spec)
        except FastadaptError as exc:
            assert "\n" not in str(exc)
            return
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.shape == (spec.channels, spec.size, spec.size)


def check_bytes(data: bytes, spec: Preprocess, tmp_file) -> None:
    tmp_file.write_bytes(data)
    check(str(tmp_file), spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = decode_bytes(data, "zip:member.png")
        except FastadaptError:
            return
    check(image, spec)


@pytest.fixture(scope="module")
def tmp_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "input.png"


# ----------------------------------------------------------------------------- bytes

@FUZZ
@given(data=st.binary(max_size=512), spec=st.sampled_from(SPECS))
def test_random_bytes(tmp_file, data, spec):
    check_bytes(data, spec, tmp_file)


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("big"), st.integers(0, 10_000), st.sampled_from([0xFF, 0x7F, 0x80])),
)


def mutate(data: bytes, mutations) -> bytes:
    data = bytearray(data)
    for kind, position, value in mutations:
        if not data:
            break
        i = position % len(data)
        if kind == "flip":
            data[i] ^= value
        elif kind == "set":
            data[i] = value
        elif kind == "truncate":
            del data[i:]
        elif kind == "insert":
            data[i:i] = bytes([value]) * (1 + position % 7)
        else:  # a header field blown up: sizes, counts, offsets
            data[i:i + 4] = bytes([value]) * 4
    return bytes(data)


@FUZZ
@given(name=st.sampled_from(sorted(SEEDS)), mutations=st.lists(MUTATION, min_size=1, max_size=6),
       spec=st.sampled_from(SPECS))
def test_mutated_valid_files(tmp_file, name, mutations, spec):
    check_bytes(mutate(SEEDS[name], mutations), spec, tmp_file)


@FUZZ
@given(name=st.sampled_from(sorted(SEEDS)), position=st.integers(0, 63), spec=st.sampled_from(SPECS))
def test_truncated_headers(tmp_file, name, position, spec):
    check_bytes(SEEDS[name][:position], spec, tmp_file)


# ----------------------------------------------------------------------------- arrays

DTYPES = ["uint8", "int8", "uint16", "int16", "int32", "uint32", "int64", "float16", "float32", "float64",
          "bool", "complex64", "object", "<U2", "S3", "datetime64[s]"]
SHAPE = st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 9, 31]), min_size=0, max_size=4)


@FUZZ
@given(dtype=st.sampled_from(DTYPES), shape=SHAPE, seed=st.integers(0, 2**32 - 1),
       specials=st.lists(st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 0.5, 1.0, 255.0, 256.0, 65535.0, 1e30]),
                         max_size=3),
       spec=st.sampled_from(SPECS))
def test_random_arrays(dtype, shape, seed, specials, spec):
    rng = np.random.default_rng(seed)
    values = np.asarray(rng.normal(0, 1, shape)) * rng.choice([1.0, 255.0, 70000.0, 1e10])
    if values.size and specials:
        flat = values.reshape(-1)
        flat[rng.integers(0, flat.size, len(specials))] = specials
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # casting NaN to int warns; that is the input, not the loader
        if dtype == "object":
            array = np.asarray(values).astype(object)
        elif dtype[0] in "<S":
            array = values.astype(str).astype(dtype)
        else:
            array = values.astype(dtype)
    check(array, spec)
    if array.ndim >= 2 and array.size and array.dtype.kind in "biuf":
        check(array.transpose(), spec)  # non-contiguous views too


# ----------------------------------------------------------------------------- PIL images

MODES = ["1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA", "La",
         "I", "I;16", "I;16B", "I;16L", "F"]


@FUZZ
@given(mode=st.sampled_from(MODES), width=st.integers(0, 40), height=st.integers(0, 40),
       seed=st.integers(0, 2**32 - 1), closed=st.booleans(), transparency=st.booleans(),
       spec=st.sampled_from(SPECS))
def test_random_pil_images(mode, width, height, seed, closed, transparency, spec):
    image = Image.new(mode, (width, height))
    raw = np.random.default_rng(seed).integers(0, 256, len(image.tobytes()), dtype=np.uint8).tobytes()
    if raw:
        image.frombytes(raw)  # random pixels: NaN and inf floats too, for "F"
    if transparency and mode in ("L", "RGB", "P"):
        image.info["transparency"] = 0 if mode != "RGB" else (0, 0, 0)
    if closed:
        image.close()
    check(image, spec)
    if not closed:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                assert isinstance(open_image(image), Image.Image)
            except FastadaptError:
                pass
