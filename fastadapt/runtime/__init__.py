"""The torch-free on-device runtime: numpy, pillow and onnxruntime only.

  loading.py   fastadapt.load / fastadapt.adapt: a .fadapt file -> Model or AdaptedModel
  sessions.py  onnxruntime sessions for forward.onnx and step.onnx
  shots.py     a shots folder or dict -> validated, preprocessed support set
  head.py      the head initialisation for N classes (numpy mirror of the trainer's)
  model.py     Model.adapt, AdaptedModel.predict / save
  adaptation.py the inner loop (safeguarded SGD steps through step.onnx) and steps="auto"
  unknown.py   the in-set score and calibrated threshold behind predict(..., unknown=True)
  evaluate.py  evaluate_bundle: few-shot accuracy of a bundle on the torch side's tasks;
               evaluate_unknown: AUROC of the unknown detection
"""

from .loading import DEFAULT_MODEL, adapt, load
from .model import AdaptedModel, Model, Prediction

__all__ = ["load", "adapt", "Model", "AdaptedModel", "Prediction", "DEFAULT_MODEL", "evaluate_bundle",
           "evaluate_unknown"]


def evaluate_bundle(*args, **kwargs):
    from .evaluate import evaluate_bundle as run

    return run(*args, **kwargs)


def evaluate_unknown(*args, **kwargs):
    from .evaluate import evaluate_unknown as run

    return run(*args, **kwargs)
