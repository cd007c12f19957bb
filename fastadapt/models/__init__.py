"""torch network definitions. Imported only by training and export, never by the runtime."""

from .networks import Conv4, MLP, ModelSpec, build_model

__all__ = ["Conv4", "MLP", "ModelSpec", "build_model"]
