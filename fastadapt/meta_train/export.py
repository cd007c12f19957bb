"""Export a meta-trained model as a ``.fadapt`` bundle: forward graph, SGD-step graph, parameters.

The step graph is NOT a second inner loop: it is ``inner_loop.sgd_step_with_loss`` (step + its loss)
traced to aten ops with ``make_fx`` (symbolic shapes, so images and classes stay dynamic) and
exported with ``torch.onnx.export(dynamo=True)``. Plain onnxruntime then runs forward, loss,
backward and update; no onnxruntime-training. ``verify`` checks the graphs against torch before
``export_bundle`` writes anything.

Supported: Conv4 with per-sample norm ("instance", "layer" or "none"), cross-entropy, adapt "all"/"head",
head_init "zero"/"prototype" (the runtime builds the head from the "features" output) or "learned".
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch._decomp import get_decompositions
from torch.export import Dim
from torch.fx.experimental.proxy_tensor import make_fx

from ..bundle import Bundle, save_bundle
from ..errors import FastadaptError
from . import inner_loop as il

aten = torch.ops.aten
VERIFY_TOL = 1e-4


def agrees(value, reference, tol: float = VERIFY_TOL) -> bool:
    """The one float32 agreement rule of export verification and the parity tests.

    |value - reference| <= tol * max(1, max|reference|): float32 rounding errors scale with the size of
    what is computed (prototype logits are differences of terms ~|features|^2, so an absolute bound fails
    on some CPUs' kernel choices while a relative one holds); below size 1 the bound is absolute.
    tol = 1e-4 is ~840 float32 ulps: room for the summation-order differences of correct kernels
    (measured <= 4e-5 relative between torch and onnxruntime on Intel AVX-512/AMX), while a real error
    (a wrong gradient term, a dropped tie rule) moves values by far more.
    """
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    return float(np.abs(value - reference).max()) <= tol * max(1.0, float(np.abs(reference).max()))


def _conv_backward(grad_out, x, weight, bias_sizes, stride, padding, dilation, transposed,
                   output_padding, groups, output_mask):
    # ONNX has no convolution_backward. Rewrite it as ops ONNX has (stride 1, groups 1: all Conv4 uses),
    # in the forms onnxruntime runs fastest (profiled: the textbook "weight gradient = convolution with
    # batch and channels swapped" ran its 14x14 kernel at a quarter of the speed of a matrix product).
    if transposed or groups != 1 or any(s != 1 for s in stride):
        raise FastadaptError("export supports only stride-1, ungrouped convolutions (Conv4)")
    grad_x = grad_w = grad_b = None
    if output_mask[0]:  # input gradient = convolution of grad_out with the flipped, transposed kernel
        flipped = weight.transpose(0, 1).flip(2, 3)
        pad = [d * (k - 1) - p for d, k, p in zip(dilation, weight.shape[2:], padding)]
        grad_x = F.conv2d(grad_out, flipped, None, 1, pad, dilation)
    if output_mask[1]:
        grad_w = _conv_weight_grad(grad_out, x, weight.shape, padding, dilation)
    if output_mask[2]:  # bias gradient = sum over batch and space
        grad_b = grad_out.sum((0, 2, 3))
    return grad_x, grad_w, grad_b


def _conv_weight_grad(grad_out, x, shape, padding, dilation):
    """dL/dW[o, c, i, j] = sum over n, h, w of grad_out[n, o, h, w] * x_padded[n, c, h + i, w + j]:
    the k*k shifted copies of the input (im2col by slicing), then one matrix product."""
    out_ch, in_ch, kh, kw = shape
    height, width = grad_out.shape[2], grad_out.shape[3]
    xt = F.pad(x.transpose(0, 1), (padding[1], padding[1], padding[0], padding[0]))  # (C, N, H+2p, W+2p)
    cols = torch.stack([xt[:, :, i * dilation[0]:i * dilation[0] + height, j * dilation[1]:j * dilation[1] + width]
                        for i in range(kh) for j in range(kw)], dim=1)  # (C, k*k, N, H, W)
    g = grad_out.transpose(0, 1).reshape(out_ch, -1)  # (O, N*H*W)
    return (g @ cols.reshape(in_ch * kh * kw, -1).t()).reshape(out_ch, in_ch, kh, kw)


def _check_pool(kernel_size, stride, padding, dilation, ceil_mode) -> None:
    def pair(value, default):  # aten passes ints, 1-lists or pairs; an empty stride means "= kernel"
        value = list(value) if value else default
        return tuple(value * 2 if len(value) == 1 else value)

    if (pair(kernel_size, [2]) != (2, 2) or pair(stride, [2]) != (2, 2) or pair(padding, [0]) != (0, 0)
            or pair(dilation, [1]) != (1, 1) or ceil_mode):
        raise FastadaptError("export supports only 2x2, stride-2 max pooling (Conv4)")


def _pool_quarters(x) -> list:
    """The four positions of every 2x2 window as (N, C, H//2, W//2) tensors, in torch's scan order."""
    height, width = x.shape[2] // 2 * 2, x.shape[3] // 2 * 2
    x = x[:, :, :height, :width]
    return [x[:, :, i::2, j::2] for i in (0, 1) for j in (0, 1)]


def _window_max(quarters: list):
    return torch.maximum(torch.maximum(quarters[0], quarters[1]), torch.maximum(quarters[2], quarters[3]))


def _first_max_masks(quarters: list, values) -> list:
    """Per quarter, where it holds its window's maximum and no earlier quarter does (torch keeps the
    first maximum it meets, so ties go to the earliest position)."""
    masks, taken = [], None
    for quarter in quarters:
        hit = quarter == values
        if taken is not None:
            hit = hit & ~taken
        masks.append(hit)
        taken = hit if taken is None else taken | hit
    return masks


def _max_pool2d_with_indices(x, kernel_size, stride=(), padding=(0,), dilation=(1,), ceil_mode=False):
    # 2x2 max pooling as an elementwise maximum of the windows' four strided quarters. onnxruntime's
    # MaxPool was the step graph's slowest operator (a quarter of its time on one thread), and the
    # exporter ran it twice, with and without indices, then scattered the gradient back.
    _check_pool(kernel_size, stride, padding, dilation, ceil_mode)
    quarters = _pool_quarters(x)
    values = _window_max(quarters)
    ho, wo, width = values.shape[2], values.shape[3], x.shape[3]
    base = (2 * width * torch.arange(ho, device=x.device)).reshape(ho, 1) + 2 * torch.arange(wo, device=x.device)
    offsets = (0, 1, width, width + 1)
    indices = base + sum(mask.to(torch.int64) * offset
                         for mask, offset in zip(_first_max_masks(quarters, values), offsets))
    return values, indices  # torch's indices (flat positions in the H x W plane); the step graph drops them


def _max_pool2d_with_indices_backward(grad_out, x, kernel_size, stride, padding, dilation, ceil_mode, indices):
    # each window's gradient goes to its first maximum: masks instead of a scatter by index
    _check_pool(kernel_size, stride, padding, dilation, ceil_mode)
    n, c, h, w = x.shape
    ho, wo = grad_out.shape[2], grad_out.shape[3]
    quarters = _pool_quarters(x)
    values = _window_max(quarters)
    g00, g01, g10, g11 = (grad_out * mask.to(grad_out.dtype) for mask in _first_max_masks(quarters, values))
    top = torch.stack([g00, g01], dim=-1).reshape(n, c, ho, 2 * wo)  # interleave the columns
    bottom = torch.stack([g10, g11], dim=-1).reshape(n, c, ho, 2 * wo)
    full = torch.stack([top, bottom], dim=3).reshape(n, c, 2 * ho, 2 * wo)  # interleave the rows
    return F.pad(full, (0, w - 2 * wo, 0, h - 2 * ho))


def _threshold_backward(grad_out, x, threshold):
    # ReLU's backward as a multiplication by a 0/1 mask: onnxruntime's Where, what the exporter makes
    # of torch's version, was 4x slower on Conv4's largest activations.
    return grad_out * (x > threshold).to(grad_out.dtype)


# Decompositions applied while tracing (everything else - GroupNorm backward, log_softmax backward -
# exports and matches torch as is):
#   convolution_backward  no ONNX op (see above);
#   threshold_backward (ReLU), max_pool2d_with_indices and its backward  export as is, but slowly
#     (see above; a first attempt at the pooling, window max + integer index arithmetic, was 2x slower);
#   nll_loss_forward/backward  the exporter turns the "total_weight" output (the batch size that
#     divides the mean loss's gradient) into a constant 1, so the gradient came out B times too
#     large; torch's own decomposition computes it from the labels, which is correct for any B.
DECOMPOSITIONS = {aten.convolution_backward.default: _conv_backward,
                  aten.threshold_backward.default: _threshold_backward,
                  aten.max_pool2d_with_indices.default: _max_pool2d_with_indices,
                  aten.max_pool2d_with_indices_backward.default: _max_pool2d_with_indices_backward,
                  **get_decompositions([aten.nll_loss_forward, aten.nll_loss_backward])}
# The forward graph (prediction) keeps onnxruntime's MaxPool: without a backward to share the windows
# with, it beat the quarters form (measured side by side: one image 0.31 vs 0.34 ms, batches of 256
# 4,300 vs 3,000 images/s).
FORWARD_DECOMPOSITIONS = {k: v for k, v in DECOMPOSITIONS.items() if k != aten.max_pool2d_with_indices.default}


def check_supported(spec, recipe: il.InnerLoop) -> None:
    if spec.name != "conv4" or spec.norm == "batch" or recipe.loss != "cross_entropy":
        raise FastadaptError(f"export supports Conv4 classification with per-sample norm (norm 'instance', 'layer' or 'none', "
                             f"loss cross_entropy); this model is {spec.name} with norm '{spec.norm}' and loss "
                             f"'{recipe.loss}'")


def with_head(model, params: dict, ways: int) -> dict:
    """``params`` (on the CPU) with a ``ways``-row head (a dummy zero head when it has none)."""
    params = {k: v.detach().float().cpu() for k, v in params.items()}
    if "head.weight" not in params:
        some = next(iter(params.values()))
        params["head.weight"] = some.new_zeros(ways, model.feature_dim)
        params["head.bias"] = some.new_zeros(ways)
    return params


def _example_sizes(spec, model, ways: int | None = None) -> tuple:
    # make_fx's symbolic tracing gives equal-valued input sizes the same symbol, so the example
    # number of classes N and images B must differ from each other and from every fixed size.
    fixed = {0, 1, spec.channels, spec.image_size, spec.width, model.feature_dim, 3}
    if ways is None:
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
    return program.model_proto.SerializeToString()


def build_graphs(model, spec, recipe: il.InnerLoop, params: dict) -> tuple:
    """(forward.onnx, step.onnx) bytes, with the bundle's input/output names (see ``fastadapt.bundle``).

    ``params``: body parameters then ``head.weight``/``head.bias`` (added as a dummy head if missing);
    the number of images B and of classes N (head rows) are dynamic in both graphs.
    """
    check_supported(spec, recipe)
    rows = params["head.weight"].shape[0] if "head.weight" in params else None  # a learned head keeps its rows
    ways, batch = _example_sizes(spec, model, rows)
    params = with_head(model, params, ways)
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
    forward_bytes = _to_onnx(forward_fn, [images, *values], [{0: b}, *per_param],
                             ["images", *names], ["logits", "features"], FORWARD_DECOMPOSITIONS)
    step_bytes = _to_onnx(step_fn, [images, labels, torch.tensor(recipe.lr), *values],
                          [{0: b}, {0: b}, None, *per_param],
                          ["images", "labels", "lr", *names], ["loss", *[f"new.{k}" for k in adapted]],
                          DECOMPOSITIONS)
    return forward_bytes, step_bytes


def _sessions(forward_bytes: bytes, step_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return (ort.InferenceSession(forward_bytes, options, providers=["CPUExecutionProvider"]),
            ort.InferenceSession(step_bytes, options, providers=["CPUExecutionProvider"]))


def _sample_task(shape: tuple, ways: int = 5, shots: int = 2, queries: int = 3, seed: int = 0):
    """A deterministic random task: class-dependent mean images plus noise."""
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(ways, *shape, generator=generator)
    support_y = torch.arange(ways).repeat_interleave(shots)
    query_y = torch.arange(ways).repeat_interleave(queries)
    support_x = means[support_y] + 0.5 * torch.randn(len(support_y), *shape, generator=generator)
    query_x = means[query_y] + 0.5 * torch.randn(len(query_y), *shape, generator=generator)
    return support_x, support_y, query_x


def verify(forward_bytes: bytes, step_bytes: bytes, model, recipe: il.InnerLoop, params: dict,
           steps: int, tol: float | None = VERIFY_TOL, task: tuple | None = None) -> float:
    """Run ``steps`` SGD steps on a sample 5-way 2-shot task in onnxruntime (head initialised in numpy
    from the "features" output, as the runtime does) and in torch (``inner_loop.adapt``).

    Returns the max abs difference of the adapted parameters. Each adapted parameter and the forward
    graph's logits on query images must ``agrees`` with torch (a tolerance relative to their size).
    Raises FastadaptError beyond ``tol``.
    """
    forward_session, step_session = _sessions(forward_bytes, step_bytes)
    shape = tuple(forward_session.get_inputs()[0].shape[1:])
    meta = {k: v.detach().float() for k, v in params.items()}
    ways = meta["head.weight"].shape[0] if recipe.head_init == "learned" else 5
    # a real task of the run's data when the caller has one, else a synthetic one
    support_x, support_y, query_x = task if task is not None else _sample_task(shape, ways)
    if task is not None:
        ways = int(support_y.max()) + 1
    if recipe.head_init in ("zero", "prototype"):
        meta = il.body_params(meta)
    as_np = {k: v.numpy() for k, v in meta.items()}
    xs, ys = support_x.numpy(), support_y.numpy()

    # head initialisation in numpy from the ONNX features, as the runtime does
    current = dict(as_np)
    if recipe.head_init != "learned":
        dim = model.feature_dim
        dummy = {**as_np, "head.weight": np.zeros((1, dim), np.float32), "head.bias": np.zeros(1, np.float32)}
        _, feats = forward_session.run(None, {"images": xs, **dummy})
        if recipe.head_init == "zero":
            current["head.weight"], current["head.bias"] = np.zeros((ways, dim), np.float32), np.zeros(ways, np.float32)
        else:
            onehot = np.eye(ways, dtype=np.float32)[ys]
            protos = (onehot.T @ feats) / onehot.sum(0)[:, None]
            current["head.weight"] = (2 * protos).astype(np.float32)
            current["head.bias"] = (-(protos * protos).sum(1)).astype(np.float32)
    step_outputs = [o.name for o in step_session.get_outputs()][1:]
    lr = np.asarray(recipe.lr, dtype=np.float32)
    for _ in range(steps):
        new = step_session.run(step_outputs, {"images": xs, "labels": ys, "lr": lr, **current})
        current.update({name[len("new."):]: value for name, value in zip(step_outputs, new)})
    onnx_logits, _ = forward_session.run(None, {"images": query_x.numpy(), **current})

    reference = il.adapt(model, meta, support_x, support_y, ways, recipe, steps=steps, first_order=True)
    with torch.no_grad():
        torch_logits = il.forward(model, reference, query_x).numpy()
    param_diff = _max_diff(current, reference)
    logit_diff = float(np.abs(onnx_logits - torch_logits).max())
    logit_scale = max(1.0, float(np.abs(torch_logits).max()))
    if tol is None or (all(agrees(current[k], v.detach().numpy(), tol) for k, v in reference.items())
                       and agrees(onnx_logits, torch_logits, tol)):
        return param_diff
    raise FastadaptError(f"export verification failed: after {steps} SGD steps onnxruntime and torch differ by "
                         f"{param_diff:.2e} in the adapted parameters and {logit_diff:.2e} "
                         f"in logits of size {logit_scale:.3g} (tolerance {tol:.0e} x max(1, size)); nothing was written")


def _max_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(np.asarray(a[k], np.float64) - b[k].detach().double().numpy()).max()) for k in b)


def export_bundle(out_path, model, spec, recipe: il.InnerLoop, params: dict, preprocess, provenance: dict,
                  evaluation: list, steps: int | None = None, task: tuple | None = None) -> dict:
    """Build both graphs, verify them against torch for ``steps`` (default: the recipe's) SGD steps,
    then write the bundle atomically. Returns the manifest. Writes nothing when verification fails."""
    check_supported(spec, recipe)
    steps = recipe.steps if steps is None else steps
    meta = {k: v.detach().float().cpu() for k, v in params.items()}
    if recipe.head_init in ("zero", "prototype"):
        meta = il.body_params(meta)  # the runtime creates the head per task
    elif "head.weight" not in meta:
        raise FastadaptError("head_init 'learned' needs head.weight and head.bias among the parameters")
    model = copy.deepcopy(model).cpu()  # leave the caller's model where it is
    forward_bytes, step_bytes = build_graphs(model, spec, recipe, meta)
    diff = verify(forward_bytes, step_bytes, model, recipe, meta, steps, tol=VERIFY_TOL, task=task)
    manifest = {
        "kind": "meta",
        "architecture": {**spec.to_dict(), "feature_dim": int(model.feature_dim)},
        "preprocess": preprocess.to_dict(),
        "inner_loop": {**recipe.to_dict(), "adapted": recipe.adapted_names(with_head(model, meta, 1))},
        "classes": None,
        "provenance": provenance,
        "evaluation": evaluation,
        "verification": {"max_abs_diff": diff, "steps": steps},
    }
    bundle = Bundle(manifest, forward_bytes, step_bytes, {k: v.numpy() for k, v in meta.items()})
    save_bundle(out_path, bundle)
    return bundle.manifest
