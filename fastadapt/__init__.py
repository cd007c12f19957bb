"""fastadapt: few-shot adaptation on the edge. This module must never import torch."""

__version__ = "0.1.0"

from .errors import FastadaptError  # noqa: E402

__all__ = ["FastadaptError", "__version__"]
