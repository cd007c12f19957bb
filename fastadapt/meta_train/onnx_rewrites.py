"""Rewrites of aten ops that ONNX lacks or that onnxruntime runs slowly, applied while tracing the graphs.

One job: the decomposition tables ``tracing`` hands to ``make_fx``. Each rewrite computes exactly what
torch's op computes (tests/test_export.py compares them, ties and odd sizes included); the comments say
why the form was chosen (a missing ONNX op, or what profiling onnxruntime showed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._decomp import get_decompositions

from ..errors import FastadaptError

aten = torch.ops.aten


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
