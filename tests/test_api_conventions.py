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


# ----------------------------------------------------------------------------- names: parameters in Python, flags on the CLI

def test_errors_name_the_parameter_in_python_and_the_flag_on_the_cli(tmp_path, capsys):
    from test_cli_runtime import run_cli

    model = fastadapt.load()
    for call, words in [(lambda: model.adapt(str(EXAMPLES / "shots"), steps="x"), "steps must be a whole number"),
                        (lambda: model.adapt(str(EXAMPLES / "shots"), lr=-1), "lr must be a positive number")]:
        with pytest.raises(FastadaptError) as exc:
            call()
        assert str(exc.value).startswith(words) and "--" not in str(exc.value)
    for flag, value in (("--steps", "x"), ("--lr", "-1")):
        code, out, err = run_cli(capsys, "adapt", "--shots", EXAMPLES / "shots", "--out", tmp_path / "a.fadapt",
                                 flag, value)
        assert code == 2 and err.startswith(f"error: {flag} must be"), err


def test_one_message_renders_both_namings():
    from fastadapt.cli import flag

    error = FastadaptError("{unknown} must be a finite number; or lower {trusted_keys} and {top_k}", "unknown",
                           "trusted_keys", "top_k")
    assert str(error) == "unknown must be a finite number; or lower trusted_keys and top_k"
    assert error.render(flag) == ("--unknown-threshold must be a finite number; or lower --trusted-key and --top-k")
    assert FastadaptError("no {braces} named", "other").render(flag) == "no {braces} named"
    import pickle

    assert str(pickle.loads(pickle.dumps(error))) == str(error)


# ----------------------------------------------------------------------------- predict: one implementation, API and CLI

@needs_default
def test_predict_can_skip_unreadable_images(adapted, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(FastadaptError, match="bad.png: not a readable image"):
        adapted.predict([str(STAR), str(bad)])
    with pytest.warns(FastadaptWarning, match="bad.png: not a readable image.*; skipped"):
        answers = adapted.predict([str(bad), str(STAR)], skip_unreadable=True)
    assert answers[0] is None and answers[1].label == "star"
    with pytest.warns(FastadaptWarning, match="bad.png: not a readable image"):  # README: None, not an error
        assert adapted.predict([str(bad), str(bad)], skip_unreadable=True) == [None, None]
    with pytest.raises(FastadaptError, match="^top must be a whole number >= 1"):  # checked before any image is read
        adapted.predict([str(bad)], top=0)


# ----------------------------------------------------------------------------- the model card as data and text

@needs_default
def test_the_model_card_and_description_come_from_the_library(capsys):
    from test_cli_runtime import run_cli

    model = fastadapt.load()
    card = model.model_card()
    assert list(card)[:2] == ["intended_use", "not_for"] and card["intended_use"].startswith("Handwritten")
    code, out, err = run_cli(capsys, "info")
    assert code == 0, err
    assert out == model.describe() + "\n"  # the CLI prints the library's text, nothing of its own


# ----------------------------------------------------------------------------- public API: documented, typed, examples run

def _public_api() -> list:
    """Every public function, class and method exported by fastadapt and fastadapt.runtime."""
    import inspect

    import fastadapt.runtime as runtime

    found = {}
    for module in (fastadapt, runtime):
        for name in module.__all__:
            value = getattr(module, name)
            if callable(value):
                found[f"{module.__name__}.{name}"] = value
            if inspect.isclass(value) and value.__module__.startswith("fastadapt"):
                for member, attribute in vars(value).items():
                    if not member.startswith("_") and (callable(attribute) or isinstance(attribute, property)):
                        found[f"{value.__name__}.{member}"] = attribute
                for base in value.__mro__[1:]:  # methods inherited from the private base (_Loaded, _Named)
                    if base.__name__.startswith("_") and base.__module__.startswith("fastadapt"):
                        for member, attribute in vars(base).items():
                            if not member.startswith("_") and (callable(attribute) or isinstance(attribute, property)):
                                found[f"{value.__name__}.{member}"] = attribute
    return sorted(found.items())


def test_all_names_exist_and_helpers_are_private():
    import fastadapt.runtime as runtime
    from fastadapt.runtime import loading, model

    for module in (fastadapt, runtime):
        assert all(hasattr(module, name) for name in module.__all__), module.__name__
    public = {name for name in vars(model) if not name.startswith("_") and callable(getattr(model, name))
              and getattr(getattr(model, name), "__module__", "") == model.__name__}
    assert public == {"Model", "AdaptedModel", "Prediction"}, public
    assert not hasattr(model.AdaptedModel, "predictions") and not hasattr(model.AdaptedModel, "threshold")
    assert {n for n in vars(loading) if not n.startswith("_") and callable(getattr(loading, n))
            and getattr(loading, n).__module__ == loading.__name__} == {"load", "adapt", "model_path"}


# the modules whose public-looking names are the package's internal interface (the API is their __all__)
_INTERNAL = ("fastadapt/runtime/*.py", "fastadapt/standalone.py", "fastadapt/images.py", "fastadapt/outputs.py")


def test_a_public_looking_helper_is_used_outside_its_module():
    """A top-level function or class without a leading underscore is either API (in an ``__all__``) or used
    by another module or a test; one that only its own module calls is a helper and gets an underscore."""
    import ast
    import re

    import fastadapt.runtime as runtime

    exported = set(fastadapt.__all__) | set(runtime.__all__)
    sources = {path: path.read_text() for folder in ("fastadapt", "tests", "benchmarks", "scripts", "examples")
               for path in (REPO / folder).rglob("*.py")}
    lonely = []
    for pattern in _INTERNAL:
        for path in sorted(REPO.glob(pattern)):
            for node in ast.parse(sources[path]).body:
                if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name.startswith("_") \
                        or node.name in exported:
                    continue
                used = re.compile(rf"(\bimport\b[^\n]*|\.)\b{node.name}\b|\b{node.name}\(")
                if not any(used.search(text) for other, text in sources.items() if other != path):
                    lonely.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not lonely, f"used only inside their module, so make them private (_name): {lonely}"


def test_every_public_function_is_documented_with_an_example_and_annotated():
    import inspect

    for name, value in _public_api():
        function = value.fget if isinstance(value, property) else value
        doc = inspect.getdoc(function) or ""
        assert ">>> " in doc, f"{name}: no example in its docstring"
        if inspect.isfunction(function):
            assert "return" in function.__annotations__, f"{name}: no return annotation"


@pytest.mark.slow
@needs_default
def test_the_docstring_examples_run(tmp_path, monkeypatch):
    import doctest
    import importlib
    import importlib.util
    import shutil

    shutil.copytree(EXAMPLES, tmp_path / "examples")
    monkeypatch.chdir(tmp_path)  # the examples read examples/ and write files beside it
    found = []  # every example in the API and in the modules behind it
    for name, value in _public_api():
        function = value.fget if isinstance(value, property) else value
        found += doctest.DocTestFinder(recurse=False).find(function, name, globs={})
    for pattern in ("fastadapt/errors.py", *_INTERNAL):
        for path in sorted(REPO.glob(pattern)):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            found += doctest.DocTestFinder().find(importlib.import_module(module), globs={})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    ran, seen = 0, set()
    for test in found:
        if not test.examples or (test.filename, test.lineno) in seen:
            continue  # the same docstring is found from the API and from its module
        if test.name.endswith("export_onnx") and importlib.util.find_spec("onnx") is None:
            continue  # the ONNX export needs the onnx package (fastadapt[train])
        seen.add((test.filename, test.lineno))
        test.globs = {"fastadapt": fastadapt, "np": np}
        ran += len(test.examples)
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0 and ran > 40, results
