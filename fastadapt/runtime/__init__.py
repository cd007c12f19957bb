"""The torch-free on-device runtime: numpy, pillow and onnxruntime only.

  loading.py   fastadapt.load / fastadapt.adapt: a .fadapt file -> Model or AdaptedModel
  sessions.py  onnxruntime sessions for forward.onnx and step.onnx
  shots.py     a shots folder or dict -> validated, preprocessed support set
  head.py      the head initialisation for N classes (numpy mirror of the trainer's)
  model.py     Model.adapt, AdaptedModel.predict / save / add_classes, model_card / describe
  describe.py  a bundle as text: its model card and what 'fastadapt info' prints
  adaptation.py the inner loop (safeguarded SGD steps through step.onnx) and steps="auto"
  unknown.py   the in-set score and calibrated threshold behind predict(..., unknown=True)
  evaluate.py  evaluate_bundle: few-shot accuracy of a bundle on the torch side's tasks;
               evaluate_unknown: AUROC of the unknown detection

Every public function and method has a short example in its docstring; they run from a checkout's root
after ``import fastadapt`` (and ``import numpy as np``), and tests/test_api_conventions.py runs them.
"""

from .loading import DEFAULT_MODEL, adapt, load
from .model import AdaptedModel, Model, Prediction

# imported on first use (they read datasets: data/, evaluation.py), so that loading a model stays light
_EVALUATION = ("evaluate_bundle", "evaluate_unknown")

__all__ = ["load", "adapt", "Model", "AdaptedModel", "Prediction", "DEFAULT_MODEL", *_EVALUATION]


def __getattr__(name: str):
    if name in _EVALUATION:
        from . import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module 'fastadapt.runtime' has no attribute '{name}'")


def __dir__() -> list:
    return sorted(list(globals()) + list(_EVALUATION))
