"""``load``: a .fadapt bundle -> ``Model`` (kind "meta") or ``AdaptedModel`` (kind "adapted")."""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Iterable

from ..bundle import read_bundle
from ..errors import FastadaptError
from ..manifest import printable
from .head import HEAD
from .model import AdaptedModel, Model

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
# The models shipped inside the package, by the name --model and load() accept: characters is the default.
BUILT_IN = {"characters": "default.fadapt", "photos": "photos.fadapt"}
DEFAULT_MODEL = os.path.join(ASSETS, BUILT_IN["characters"])


def model_path(model: str | os.PathLike | None) -> str:
    """The bundle file ``model`` names: None is always the shipped default (characters) model, whatever
    files the current folder holds; a built-in model's name (``BUILT_IN``: "characters", "photos") is that
    shipped bundle unless a file of that name exists here; anything else is a path.

    >>> from fastadapt.runtime.loading import model_path
    >>> model_path("photos").endswith("photos.fadapt"), model_path("my_model.fadapt")
    (True, 'my_model.fadapt')
    """
    if model is None:  # never a file named "characters" in a service's working folder
        return _built_in("characters")
    if not isinstance(model, (str, os.PathLike)):
        return model  # read_bundle refuses it in one line, naming what a path is
    name = os.fspath(model)
    if name not in BUILT_IN or os.path.isfile(name):
        if isinstance(name, str) and name and not os.path.exists(name) and not os.path.splitext(name)[1] \
                and os.sep not in name and "/" not in name:  # a bare word: a mistyped built-in name, most likely
            raise FastadaptError(f"{printable(name)}: no such model file, and no built-in model has that name "
                                 f"({', '.join(BUILT_IN)}); pass one of those or a .fadapt bundle's path")
        return name
    return _built_in(name)


def _built_in(name: str) -> str:
    """The shipped bundle of the built-in model ``name``; an error naming the fix when it is missing."""
    path = os.path.join(ASSETS, BUILT_IN[name])
    if not os.path.exists(path):
        raise FastadaptError(f"the built-in model '{name}' is not in this installation ({path} is missing); "
                             f"reinstall fastadapt or pass a bundle path, e.g. --model my_model.fadapt")
    return path


def load(path: str | os.PathLike | None = None, trusted_keys: Iterable[str] | None = None) -> Model | AdaptedModel:
    """Read and verify a bundle -> ``Model`` (kind "meta": ``adapt`` it) or ``AdaptedModel`` (kind "adapted":
    ``predict`` with it). No path: the shipped default meta-initialisation (characters); "photos": the
    shipped model for colour photos (``BUILT_IN``).

    trusted_keys  hex Ed25519 public keys (``fastadapt keygen``); with those in FASTADAPT_TRUSTED_KEYS,
                  when any are given the bundle must carry a valid signature by one of them.

    >>> model = fastadapt.load()                # or fastadapt.load("my_model.fadapt")
    >>> model.kind, model.preprocess.size
    ('meta', 32)
    """
    return _from_bundle(read_bundle(model_path(path), trusted_keys))


def _from_bundle(bundle) -> Model | AdaptedModel:
    # read_bundle validated the manifest: kind is "meta" or "adapted"
    model = AdaptedModel(bundle) if bundle.manifest.get("kind") == "adapted" else Model(bundle)
    _check_parameter_shapes(model)
    return model


def _rebuild(data: bytes, path: str | None, seconds: float | None) -> Model | AdaptedModel:
    """A model pickled by ``_Loaded.__reduce__`` (multiprocessing, copy.deepcopy): the bundle bytes its own
    save wrote, read back and verified exactly as a file is."""
    with tempfile.TemporaryDirectory(prefix="fastadapt-") as folder:
        copy = os.path.join(folder, "model.fadapt")
        with open(copy, "wb") as file:
            file.write(data)
        # trust was checked where the model was first loaded; the copy carries no signature
        bundle = read_bundle(copy, check_trust=False)
    bundle.path = path  # messages name the original file, not the temporary copy
    model = _from_bundle(bundle)
    if isinstance(model, AdaptedModel):
        model.seconds = seconds
    return model


def _check_parameter_shapes(model) -> None:
    """Every parameter forward.onnx takes is in params.npz with the shape the graph declares, so a
    crafted or mismatched bundle is refused on load rather than failing inside onnxruntime later."""
    where = model.path or "model"
    for given in model.graphs._forward.get_inputs()[1:]:  # the first input is "images"
        value = model.params.get(given.name)
        if value is None:
            if given.name in HEAD and model.recipe.get("head_init", "zero") != "learned":
                continue  # built on the device for each task
            raise FastadaptError(f"{where}: forward.onnx needs parameter '{given.name}' that params.npz lacks; "
                                 f"re-export the bundle")
        declared = list(given.shape)
        if len(declared) != value.ndim or any(isinstance(d, int) and d != n for d, n in zip(declared, value.shape)):
            shown = tuple(d if isinstance(d, int) else "?" for d in declared)
            raise FastadaptError(f"{where}: parameter '{given.name}' has shape {tuple(value.shape)} but forward.onnx "
                                 f"expects {shown}; the bundle's members do not belong together, re-export it")


def adapt(shots, model: str | os.PathLike | None = None, steps: int | str | None = None, lr: float | None = None,
          progress: Callable[[int, int], None] | None = None, trusted_keys: Iterable[str] | None = None,
          safeguard: bool = True, colour: str = "auto") -> AdaptedModel:
    """One call: load a meta model (default: the shipped one) and adapt it to ``shots`` (see ``Model.adapt``).

    >>> adapted = fastadapt.adapt("examples/shots")
    >>> adapted.predict("examples/queries/arrow/arrow_1.png").label
    'arrow'
    """
    loaded = load(model, trusted_keys)
    return loaded.adapt(shots, steps=steps, lr=lr, progress=progress, safeguard=safeguard, colour=colour)
