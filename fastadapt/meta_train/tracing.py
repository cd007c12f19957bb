"""Trace the inner loop to ONNX: the forward graph and the SGD-step graph of a ``.fadapt`` bundle.

One job: model + recipe + parameters -> (forward.onnx, step.onnx) bytes. The step graph is NOT a second
inner loop: it is ``inner_loop.sgd_step_with_loss`` (step + its loss) traced to aten ops with ``make_fx``
(symbolic shapes, so images and classes stay dynamic, and the ``onnx_rewrites`` applied) and exported
with ``torch.onnx.export(dynamo=True)``. Plain onnxruntime then runs forward, loss, backward and
update; no onnxruntime-training.

Supported: Conv4 or ResNet-12 with per-sample norm ("instance", "layer" or "none"), cross-entropy, adapt "all"/"head",
head_init "zero"/"prototype" (the runtime builds the head for any number of classes from the
"features" output).
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import torch
import torch.nn.functional as F
from torch.export import Dim
from torch.fx.experimental.proxy_tensor import make_fx

from ..errors import FastadaptError
from ..onnx_wire import stamp_ir_version
from . import inner_loop as il
from .onnx_rewrites import DECOMPOSITIONS, FORWARD_DECOMPOSITIONS


def check_supported(spec, recipe: il.InnerLoop) -> None:
    if spec.name not in ("conv4", "resnet12") or spec.norm == "batch" or recipe.loss != "cross_entropy":
        raise FastadaptError(f"export supports Conv4 or ResNet-12 classification with per-sample norm (norm 'instance', 'layer' or 'none', "
                             f"loss cross_entropy); this model is {spec.name} with norm '{spec.norm}' and loss "
                             f"'{recipe.loss}'")
    if recipe.head_init not in ("zero", "prototype"):  # 'learned' is regression's, and regression runs are not exported
        raise FastadaptError(f"export supports head_init 'zero' or 'prototype' (a head for any number of classes), "
                             f"this model has '{recipe.head_init}'; retrain with --head-init zero or prototype")


def with_head(model, params: dict, ways: int) -> dict:
    """``params`` (on the CPU) with a ``ways``-row dummy zero head (the runtime builds the real one per task)."""
    params = {k: v.detach().float().cpu() for k, v in il.body_params(params).items()}
    some = next(iter(params.values()))
    params["head.weight"] = some.new_zeros(ways, model.feature_dim)
    params["head.bias"] = some.new_zeros(ways)
    return params


def _example_sizes(spec, model) -> tuple:
    # make_fx's symbolic tracing gives equal-valued input sizes the same symbol, so the example
    # number of classes N and images B must differ from each other and from every fixed size.
    fixed = {0, 1, spec.channels, spec.image_size, spec.width, model.feature_dim, 3}
    ways = next(n for n in range(5, 1000) if n not in fixed and 2 * n not in fixed)
    batch = next(b for b in range(2 * ways, 100 * ways) if b not in fixed)
    return ways, batch


@contextlib.contextmanager
def _quiet():
    """The exporter's progress lines and deprecation warnings are noise to a user of 'fastadapt export'."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _to_onnx(fn, args, dynamic: list, input_names: list, output_names: list, decompositions: dict) -> bytes:
    with _quiet():
        graph = make_fx(fn, tracing_mode="symbolic", decomposition_table=decompositions)(*args)
        program = torch.onnx.export(graph, tuple(args), dynamo=True, dynamic_shapes=tuple(dynamic),
                                    input_names=input_names, output_names=output_names,
                                    optimize=True, verbose=False)
    proto = program.model_proto  # a new proto at each access
    stamp_ir_version(proto)  # readable by onnxruntime 1.17 (onnx_wire.IR_VERSION)
    return proto.SerializeToString()


# Graphs already traced in this process. The parameters are graph inputs, so the graphs depend only on
# the architecture (forward) and the recipe's shape (step), never on the values: exporting a second run
# of the same architecture (a sweep, the test suite) skips the ~30 s trace. Bytes, a few hundred KB each.
_TRACED: dict = {}


def build_graphs(model, spec, recipe: il.InnerLoop, params: dict, per_tensor_lr: bool = False) -> tuple:
    """(forward.onnx, step.onnx) bytes, with the bundle's input/output names (see ``fastadapt.bundle``).

    ``params``: the body parameters (a head among them is replaced by a dummy one); both graphs take
    them, then ``head.weight``/``head.bias``. The number of images B and of classes N (head rows) are
    dynamic in both graphs. The step graph's ``lr`` is a scalar, or with ``per_tensor_lr`` (learned
    inner rates) a vector of one rate per adapted tensor, in the manifest's ``adapted`` order.
    """
    check_supported(spec, recipe)
    ways, batch = _example_sizes(spec, model)
    params = with_head(model, params, ways)
    shapes = tuple((k, tuple(v.shape)) for k, v in params.items())
    forward_key, step_key = ("forward", spec, shapes), ("step", spec, shapes, recipe.adapt, recipe.loss, per_tensor_lr)
    for key in (forward_key, step_key):
        if key not in _TRACED:
            _TRACED[key] = _trace(key[0], model, spec, recipe, params, per_tensor_lr, ways, batch)
    return _TRACED[forward_key], _TRACED[step_key]


def _trace(graph: str, model, spec, recipe: il.InnerLoop, params: dict, per_tensor_lr: bool, ways: int,
           batch: int) -> bytes:
    """The ``graph`` ("forward" or "step") as ONNX bytes."""
    names, adapted = list(params), recipe.adapted_names(params)
    b, n = Dim("B", min=1, max=100000), Dim("N", min=1, max=100000)
    per_param = [{0: n} if k in il.HEAD else None for k in names]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, spec.channels, spec.image_size, spec.image_size, generator=generator)
    labels = torch.arange(batch) % ways

    def forward_fn(images, *values):
        p = dict(zip(names, values))
        feats = il.features(model, p, images)
        return F.linear(feats, p["head.weight"], p["head.bias"]), feats

    def step_fn(images, labels, lr, *values):
        p = dict(zip(names, values))
        # first_order: the graph only needs the step's values, not gradients through it
        new, loss = il.sgd_step_with_loss(model, p, images, labels, recipe, lr, first_order=True)
        return (loss, *[new[k] for k in adapted])

    values = list(params.values())
    if graph == "forward":
        return _to_onnx(forward_fn, [images, *values], [{0: b}, *per_param],
                        ["images", *names], ["logits", "features"], FORWARD_DECOMPOSITIONS)
    lr = torch.full((len(adapted),), float(recipe.lr)) if per_tensor_lr else torch.tensor(recipe.lr)
    return _to_onnx(step_fn, [images, labels, lr, *values],
                    [{0: b}, {0: b}, None, *per_param],
                    ["images", "labels", "lr", *names], ["loss", *[f"new.{k}" for k in adapted]],
                    DECOMPOSITIONS)
