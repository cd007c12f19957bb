"""The classification head for N new classes, initialised in numpy exactly as the trainer does.

Mirrors ``fastadapt.meta_train.inner_loop.init_head`` (which the meta-learner optimised for):
  zero       head.weight = zeros(N, D), head.bias = zeros(N)
  prototype  row c = 2 * mean feature of class c, bias c = -|mean_c|^2 (features from forward.onnx,
             run with a dummy one-row head), both times inner_loop.head_scale (1 when absent)
  learned    the bundle's own head, whose size is fixed
"""

from __future__ import annotations

import numpy as np

from ..errors import FastadaptError

HEAD = ("head.weight", "head.bias")


def head_scale_of(manifest: dict) -> float:
    """The prototype head's scale (a softmax temperature; validated by manifest.py)."""
    return float((manifest.get("inner_loop") or {}).get("head_scale", 1.0))


def _body(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in HEAD}


def _feature_dim(params: dict, graphs, manifest: dict) -> int:
    """D, the width of the features the head reads: from the params, the manifest or the graph."""
    if "head.weight" in params:
        return int(params["head.weight"].shape[1])
    dim = (manifest.get("architecture") or {}).get("feature_dim") or graphs.feature_dim()
    if dim is None:
        raise FastadaptError(f"{graphs.where}: cannot tell the feature width (no head.weight in params.npz and a "
                             f"symbolic shape in forward.onnx); re-export the bundle")
    return int(dim)


def support_features(manifest: dict, meta_params: dict, graphs, images: np.ndarray) -> np.ndarray:
    """forward.onnx's features (B, D) of preprocessed images under the meta-initialisation's body (a dummy
    one-row head: the features do not depend on it)."""
    dim = _feature_dim(meta_params, graphs, manifest)
    dummy = {**_body(meta_params), "head.weight": np.zeros((1, dim), np.float32), "head.bias": np.zeros((1,), np.float32)}
    return graphs.forward(images, dummy)[1]


def init_head(manifest: dict, meta_params: dict, graphs, images: np.ndarray, labels: np.ndarray,
              ways: int, where: str, features: np.ndarray | None = None) -> dict:
    """Meta-parameters with a head for ``ways`` classes. ``images`` are the preprocessed support set;
    ``features``: their ``support_features`` when already computed."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu" \
            or not np.array_equal(np.unique(labels), np.arange(ways)):
        raise FastadaptError(f"{where}: the support labels must be whole numbers 0..{ways - 1}, one per image, "
                             f"with every class present")
    head_init = manifest["inner_loop"].get("head_init", "zero")
    if head_init == "learned":
        rows = meta_params["head.weight"].shape[0]
        if rows != ways:
            raise FastadaptError(f"{where}: this model's head has a fixed {rows} outputs (head_init 'learned') "
                                 f"but the shots have {ways} classes")
        return dict(meta_params)
    params = _body(meta_params)
    dim = _feature_dim(meta_params, graphs, manifest)
    if head_init == "zero":
        params["head.weight"] = np.zeros((ways, dim), dtype=np.float32)
        params["head.bias"] = np.zeros((ways,), dtype=np.float32)
        return params
    if head_init == "prototype":
        feats = support_features(manifest, meta_params, graphs, images) if features is None else features
        onehot = np.eye(ways, dtype=np.float32)[labels]  # (n, N)
        protos = (onehot.T @ feats) / onehot.sum(0)[:, None]
        scale = head_scale_of(manifest)
        params["head.weight"] = np.ascontiguousarray((2 * scale) * protos, dtype=np.float32)
        params["head.bias"] = np.ascontiguousarray(-scale * (protos * protos).sum(1), dtype=np.float32)
        return params
    raise FastadaptError(f"{where}: unknown head initialisation '{head_init}' in the manifest; "
                         f"upgrade fastadapt ('pip install -U fastadapt')")
