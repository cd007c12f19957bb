"""fastadapt: few-shot adaptation on the edge. This module must never import torch.

    import fastadapt
    model = fastadapt.load("omniglot.fadapt")      # or fastadapt.load() for the shipped default
    adapted = model.adapt("shots/")                # shots/<class>/<image>.png, >= 2 classes
    print(adapted.predict("query.png").label)
    adapted.save("mine.fadapt")                    # fastadapt.load("mine.fadapt") predicts right away

Images may be paths, encoded bytes, binary file objects, PIL images or numpy arrays. Mistakes raise
``FastadaptError``; warnings are ``FastadaptWarning`` (Python's ``warnings`` module: filter or record them).
The runtime (and onnxruntime) is imported on first use, so ``import fastadapt`` stays fast.
"""

__version__ = "0.1.0"

from .errors import FastadaptError, FastadaptWarning  # noqa: E402

_RUNTIME = ("load", "adapt", "Model", "AdaptedModel", "Prediction", "evaluate_bundle", "evaluate_unknown")

__all__ = ["FastadaptError", "FastadaptWarning", "__version__", *_RUNTIME]


def __getattr__(name):
    if name in _RUNTIME:
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'fastadapt' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + list(_RUNTIME))
