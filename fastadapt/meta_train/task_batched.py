"""Many tasks as one computation: a body whose every layer holds one set of parameters per task.

The batched training path (``meta_gradient(vectorize=True)``) runs the inner loop of ``inner_loop`` on
T tasks at once. Every parameter gets a leading task dimension (T, ...), and ``TaskBatched(model, T)``
computes the T tasks' features in one pass:
  convolutions   the tasks' images side by side as channel groups, (N, T*C, H, W), and one grouped
                 convolution (groups=T) with the tasks' kernels stacked: one kernel launch for all tasks;
  norms          instance / layer norm = GroupNorm with T times the groups; batch-statistics norm = batch
                 norm over T*C channels, each channel's statistics from its own task's images;
  linear layers  (the sinusoid MLP) one batched matrix product, (T, N, in) @ (T, in, out).
ReLU, max-pooling, the residual sums and the spatial mean act channel by channel, so they work unchanged.

Why not ``torch.func.vmap`` over the per-task function, as before: it dispatches 2.4x as many operators
for the same meta-step (2,125 against 878, Conv4, the default model's recipe, 16 tasks), and on a GPU a
meta-step of these small networks waits on the host issuing operators rather than on the kernels. Plain
autograd also differentiates through batch statistics correctly, where vmap's second-order gradient
through ``F.batch_norm`` with a batched weight was wrong (full MAML with ``--norm batch`` had to take the
loop). A task's loss depends only on its own parameters, so the gradient of the sum of the tasks' losses
with respect to the (T, ...) parameters is every task's own gradient.
"""

from __future__ import annotations

import copy
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..models.networks import MLP, BatchStatsNorm, Conv4, ResNet12, ResidualBlock

# Measured on an H200 (scripts/gpu_speed_probe.py, session 16): cuDNN's grouped direct convolution takes 44% of
# the default recipe's GPU time. The same convolution as im2col + one batched matrix product is the candidate;
# off until a GPU measures it faster (the probe's "conv-bmm" variant turns it on). Same result (tested).
CONV_AS_MATRIX_PRODUCT = False

_CONTAINERS = (nn.Sequential, Conv4, ResNet12, ResidualBlock, MLP)  # forwards that act channel by channel
_STATELESS = (nn.ReLU, nn.MaxPool2d, nn.Identity)


def _placeholder() -> nn.Parameter:
    """Where a task-batched parameter goes: ``functional_call`` always substitutes the real one."""
    return nn.Parameter(torch.empty(0, device="meta"), requires_grad=False)


class _TaskConv2d(nn.Module):
    def __init__(self, conv: nn.Conv2d, tasks: int):
        super().__init__()
        self.tasks, self.stride, self.padding, self.dilation = tasks, conv.stride, conv.padding, conv.dilation
        self.weight = _placeholder()
        self.bias = _placeholder() if conv.bias is not None else None

    def forward(self, x):  # weight (T, out, in, k, k) -> (T*out, in, k, k): task t's kernels see group t
        if CONV_AS_MATRIX_PRODUCT and not isinstance(self.padding, str):
            return _conv_as_matrix_product(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        bias = None if self.bias is None else self.bias.flatten()
        return F.conv2d(x, self.weight.flatten(0, 1), bias, self.stride, self.padding, self.dilation, self.tasks)


def _conv_as_matrix_product(x, weight, bias, stride, padding, dilation):
    """The grouped convolution of ``_TaskConv2d`` as im2col columns and one batched matrix product over tasks:
    x (N, T*C, H, W), weight (T, out, C, kh, kw), bias (T, out) or None -> (N, T*out, H', W')."""
    n, _, h, w = x.shape
    tasks, out, channels, kh, kw = weight.shape
    columns = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # (N, T*C*kh*kw, L)
    positions = columns.shape[-1]
    columns = columns.view(n, tasks, channels * kh * kw, positions).permute(1, 2, 0, 3)
    y = torch.bmm(weight.reshape(tasks, out, -1), columns.reshape(tasks, channels * kh * kw, n * positions))
    if bias is not None:
        y = y + bias.unsqueeze(-1)
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return y.view(tasks, out, n, oh, ow).permute(2, 0, 1, 3, 4).reshape(n, tasks * out, oh, ow)


class _TaskGroupNorm(nn.Module):
    def __init__(self, norm: nn.GroupNorm, tasks: int):
        super().__init__()
        self.groups, self.eps = tasks * norm.num_groups, norm.eps
        self.weight, self.bias = _placeholder(), _placeholder()

    def forward(self, x):
        return F.group_norm(x, self.groups, self.weight.flatten(), self.bias.flatten(), self.eps)


class _TaskBatchStatsNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight, self.bias = _placeholder(), _placeholder()

    def forward(self, x):
        return F.batch_norm(x, None, None, self.weight.flatten(), self.bias.flatten(), training=True)


class _TaskLinear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = _placeholder()
        self.bias = _placeholder() if linear.bias is not None else None

    def forward(self, x):  # x (T, N, in), weight (T, out, in)
        out = x @ self.weight.transpose(1, 2)
        return out if self.bias is None else out + self.bias.unsqueeze(1)


def _has_task_layer(module: nn.Module) -> bool:
    """Whether ``_task_layer`` batches this layer over tasks."""
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            or isinstance(module, nn.GroupNorm) and module.affine
            or isinstance(module, (BatchStatsNorm, nn.Linear)))


def _task_layer(module: nn.Module, tasks: int) -> nn.Module:
    """The task-batched version of a layer that ``_has_task_layer``."""
    if isinstance(module, nn.Conv2d):
        return _TaskConv2d(module, tasks)
    if isinstance(module, nn.GroupNorm):
        return _TaskGroupNorm(module, tasks)
    if isinstance(module, BatchStatsNorm):
        return _TaskBatchStatsNorm()
    return _TaskLinear(module)


def supports(model: nn.Module) -> bool:
    """Whether ``TaskBatched`` computes this body: the project's networks, built from the layers above."""
    return all(isinstance(m, _CONTAINERS + _STATELESS) or _has_task_layer(m) for m in model.modules())


class TaskBatched:
    """``model`` for ``tasks`` tasks at once (module docstring). ``features(params, x)``: parameters named
    as in ``model`` with a leading task dimension, inputs (T, N, ...) -> features (T, N, feature_dim)."""

    def __init__(self, model: nn.Module, tasks: int):
        if not supports(model):
            raise ValueError(f"{type(model).__name__} has layers that cannot be batched over tasks")
        self.tasks, self.feature_dim = tasks, model.feature_dim
        self.images = any(isinstance(m, nn.Conv2d) for m in model.modules())
        self.body = copy.deepcopy(model)
        for name, module in list(self.body.named_modules()):
            if _has_task_layer(module):
                self.body.set_submodule(name, _task_layer(module, tasks))

    def features(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        if not self.images:
            return functional_call(self.body, params, (x,))
        tasks, n = x.shape[:2]
        side_by_side = x.transpose(0, 1).reshape(n, tasks * x.shape[2], *x.shape[3:])
        return functional_call(self.body, params, (side_by_side,)).reshape(n, tasks, -1).transpose(0, 1)


_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def task_batched(model: nn.Module, tasks: int) -> TaskBatched:
    """``TaskBatched(model, tasks)``, built once per model and task count (a training run reuses it)."""
    per_model = _cache.setdefault(model, {})
    if tasks not in per_model:
        per_model[tasks] = TaskBatched(model, tasks)
    return per_model[tasks]
