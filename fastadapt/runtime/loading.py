"""``load``: a .fadapt bundle -> ``Model`` (kind "meta") or ``AdaptedModel`` (kind "adapted")."""

from __future__ import annotations

import os

from ..bundle import read_bundle
from ..errors import FastadaptError
from .model import AdaptedModel, Model

DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "default.fadapt")


def default_model_path() -> str:
    if not os.path.exists(DEFAULT_MODEL):
        raise FastadaptError("no default model is shipped yet (fastadapt/assets/default.fadapt is missing); "
                             "pass a model path, e.g. --model omniglot.fadapt or fastadapt.load('omniglot.fadapt')")
    return DEFAULT_MODEL


def load(path: str | os.PathLike | None = None):
    """Read and verify a bundle. No path: the shipped default meta-initialisation."""
    path = default_model_path() if path is None else os.fspath(path)
    bundle = read_bundle(path)
    kind = bundle.manifest.get("kind", "meta")
    if kind == "meta":
        return Model(bundle)
    if kind == "adapted":
        return AdaptedModel(bundle)
    raise FastadaptError(f"{path}: unknown bundle kind '{kind}'; upgrade fastadapt ('pip install -U fastadapt')")


def adapt(shots, model: str | os.PathLike | None = None, steps: int | None = None, lr: float | None = None,
          progress=None) -> AdaptedModel:
    """One call: load a meta model (default: the shipped one) and adapt it to ``shots``."""
    loaded = load(model)
    return loaded.adapt(shots, steps=steps, lr=lr, progress=progress)
