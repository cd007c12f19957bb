"""The Python API fits the ecosystem: typed, images as bytes or file objects (checked like files), and
warnings through Python's ``warnings`` module (category fastadapt.FastadaptWarning)."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
from PIL import Image

import fastadapt
from fastadapt import FastadaptError, FastadaptWarning
from fastadapt.errors import cli_warnings, warn
from sample_data import REPO

EXAMPLES = REPO / "examples"
STAR = EXAMPLES / "queries" / "star" / "star_1.png"
DEFAULT = REPO / "fastadapt" / "assets" / "default.fadapt"

needs_default = pytest.mark.skipif(not DEFAULT.exists(), reason="no default model shipped")


@pytest.fixture(scope="module")
def adapted():
    return fastadapt.load().adapt(str(EXAMPLES / "shots"))


def png(width: int, height: int, value: int = 255) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), value).save(buffer, "PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- typing

def test_the_package_is_typed_and_ships_the_marker():
    assert (REPO / "fastadapt" / "py.typed").exists()
    assert '"py.typed"' in (REPO / "pyproject.toml").read_text()


def test_public_functions_declare_what_they_return():
    from fastadapt.runtime.model import AdaptedModel, Model

    for function in (fastadapt.load, fastadapt.adapt, Model.adapt, AdaptedModel.predict):
        assert "return" in function.__annotations__, function.__qualname__
    assert "AdaptedModel" in str(Model.adapt.__annotations__["return"])
    assert "Prediction" in str(AdaptedModel.predict.__annotations__["return"])


# ----------------------------------------------------------------------------- images as bytes and file objects

@needs_default
def test_bytes_and_file_objects_predict_like_the_path(adapted):
    data = STAR.read_bytes()
    expected = adapted.predict(str(STAR))
    with open(STAR, "rb") as handle:
        answers = [adapted.predict(source) for source in
                   (data, bytearray(data), memoryview(data), io.BytesIO(data), handle)]
    for answer in answers:
        assert answer.label == expected.label == "star"
        assert answer.top == expected.top
    batch = adapted.predict([data, io.BytesIO(data)])  # a list of uploads is a batch
    assert [p.label for p in batch] == ["star", "star"]


@needs_default
def test_a_stream_that_cannot_seek_is_read_once(adapted):
    class Upload:  # e.g. a socket stream: read() only
        def __init__(self, data):
            self.stream = io.BytesIO(data)

        def read(self, size=-1):
            return self.stream.read(size)

    assert adapted.predict(Upload(STAR.read_bytes())).label == "star"


@needs_default
def test_bytes_and_streams_pass_the_same_checks_as_files(adapted, tmp_path):
    from test_images_hardening import png_bytes

    bomb = png_bytes(20000, 20000)  # 400 MP declared in a few hundred bytes
    for source in (bomb, io.BytesIO(bomb)):
        with pytest.raises(FastadaptError, match="400 MP is over the limit of 50 MP; downscale"):
            adapted.predict(source)
    for bad, words in [(b"%!PS-Adobe-3.0 EPSF-3.0\n", "image bytes: not a readable image"),
                       (b"%PDF-1.4\n", "image bytes: not a readable image"),
                       (b"", "empty image bytes"),
                       (io.BytesIO(b"hello"), "file object: not a readable image")]:
        with pytest.raises(FastadaptError) as exc:
            adapted.predict(bad)
        assert words in str(exc.value) and "\n" not in str(exc.value)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with open(text) as handle, pytest.raises(FastadaptError, match="text mode; open the image with open"):
        adapted.predict(handle)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_file_object_on_a_pipe_is_refused_without_blocking(tmp_path):
    from fastadapt.images import Preprocess, to_uint8

    fifo = tmp_path / "upload.png"
    os.mkfifo(fifo)
    with os.fdopen(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
        with pytest.raises(FastadaptError, match="not a regular file"):
            to_uint8(handle, Preprocess())


# ----------------------------------------------------------------------------- warnings

def test_the_warning_category_is_exported():
    assert fastadapt.FastadaptWarning is FastadaptWarning and issubclass(FastadaptWarning, UserWarning)
    assert "FastadaptWarning" in fastadapt.__all__


@needs_default
def test_warnings_can_be_recorded_and_silenced(adapted, capsys):
    light_on_dark = np.zeros((40, 40), np.uint8)
    light_on_dark[10:30, 18:22] = 255
    with pytest.warns(FastadaptWarning, match="light strokes on a dark background"):
        adapted.predict(light_on_dark)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FastadaptWarning)
        adapted.predict(light_on_dark)
    assert capsys.readouterr().err == ""


def test_the_cli_prints_each_warning_as_one_line(capsys):
    with cli_warnings():
        warn("first thing")
        warn("first thing")  # repeats are printed too
        warnings.warn("not ours", UserWarning)
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == ["warning: first thing", "warning: first thing"]
    assert any("UserWarning: not ours" in line for line in err[2:])  # other warnings keep Python's format
