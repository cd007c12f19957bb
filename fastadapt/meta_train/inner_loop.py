"""The inner loop: k plain SGD steps on a task's support set, as pure functions over a parameter dict.

This is the ONE definition of adaptation. Training (all algorithms), evaluation and the exported
ONNX step graph all call ``sgd_step``; the device then repeats exactly these steps.

A model's parameters are a flat dict: the body's (``layers.0.weight`` ...) plus the linear head
(``head.weight`` of shape (outputs, features), ``head.bias``). The head is created per task by
``init_head`` so any number of classes works:
  zero       all-zero rows. Every class starts equal and the first step separates them. (A shared
             learned row repeated N times is exactly equivalent: adding one vector to every row
             adds a constant to every logit, which softmax ignores, so it cannot be meta-learned.)
  prototype  row c = 2 * mean feature of class c, bias c = -|mean|^2 (Proto-MAML, Triantafillou
             et al. 2020): before any step the model is a prototypical network. Both are multiplied
             by ``head_scale`` (a softmax temperature, 1 by default): a body whose squared feature
             distances are large (a supervised pre-trained one) saturates the softmax at scale 1, and
             meta-training from it then lowers accuracy; ~0.1 lets it help (README photos card).
  learned    the head is an ordinary meta-parameter with a fixed output size (regression).

Learned inner learning rates (MAML++'s per-layer, per-step rates, Antoniou et al. 2019; a coarse
Meta-SGD): the meta-parameter dict may also hold ``LEARNED_LRS``, a (steps, adapted tensors) matrix;
step t then moves adapted tensor i by ``-rates[t, i] * grad``. It is meta-learned with the rest (the
meta-gradient reaches it through every step), goes into the bundle's manifest, and the exported step
graph takes one rate per adapted tensor, so the device repeats exactly these steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from .task_batched import TaskBatched

HEAD = ("head.weight", "head.bias")
LEARNED_LRS = "inner.lrs"  # (steps, adapted tensors) learned rates among the meta-parameters, when learned
HEAD_INITS = ("zero", "prototype", "learned")
LOSSES = ("cross_entropy", "mse")


@dataclass(frozen=True)
class InnerLoop:
    """The adaptation recipe the model is meta-trained for and the device repeats."""

    steps: int = 5
    lr: float = 0.4
    adapt: str = "all"  # "all" parameters, or only the "head" (ANIL)
    loss: str = "cross_entropy"
    head_init: str = "zero"
    head_scale: float = 1.0  # the prototype head's rows and biases times this (a softmax temperature)

    def __post_init__(self):
        if self.adapt not in ("all", "head"):
            raise ValueError(f"adapt must be 'all' or 'head', got '{self.adapt}'")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got '{self.loss}'")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got '{self.head_init}'")
        if not (self.head_scale > 0) or (self.head_scale != 1 and self.head_init != "prototype"):
            raise ValueError(f"head_scale must be above 0, and 1 unless head_init is 'prototype', got "
                             f"{self.head_scale} with '{self.head_init}'")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InnerLoop":
        return cls(**{k: d[k] for k in ("steps", "lr", "adapt", "loss", "head_init")}, head_scale=d.get("head_scale", 1.0))

    def adapted_names(self, params: dict) -> list:
        return [k for k in params if k != LEARNED_LRS and (self.adapt == "all" or k in HEAD)]


def network_params(params: dict) -> dict:
    """The network's parameters (body and head, if any): ``params`` without the learned rates."""
    return {k: v for k, v in params.items() if k != LEARNED_LRS}


def body_params(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in HEAD and k != LEARNED_LRS}


def initial_rates(steps: int, adapted: int, lr: float, like: torch.Tensor) -> torch.Tensor:
    """Learned rates before meta-training: the fixed recipe's ``lr`` for every step and tensor."""
    return like.new_full((steps, adapted), float(lr))


def step_rate(lr, step: int):
    """The rate(s) of inner step ``step`` (0-based): a fixed ``lr`` for every step, or row ``step`` of a
    learned (steps, tensors) matrix (its last row for steps beyond those meta-trained)."""
    if isinstance(lr, torch.Tensor) and lr.dim() == 2:
        return lr[min(step, lr.shape[0] - 1)]
    return lr


def features(model, params: dict, x: torch.Tensor) -> torch.Tensor:
    if isinstance(model, TaskBatched):
        return model.features(body_params(params), x)
    return functional_call(model, body_params(params), (x,))


def forward(model, params: dict, x: torch.Tensor) -> torch.Tensor:
    """Outputs (logits, or regression values) of body + head. For a ``TaskBatched`` model every tensor has a
    leading task dimension, and so do the outputs: (tasks, N, outputs)."""
    f = features(model, params, x)
    if isinstance(model, TaskBatched):
        return params["head.bias"].unsqueeze(1) + f @ params["head.weight"].transpose(1, 2)
    return F.linear(f, params["head.weight"], params["head.bias"])


def output_loss(out: torch.Tensor, y, loss: str, tasks_first: bool = False) -> torch.Tensor:
    """The mean loss over the outputs; ``tasks_first`` (outputs of a ``TaskBatched`` model): the SUM over
    tasks of each task's mean, so its gradient w.r.t. task t's parameters is task t's own gradient."""
    if not tasks_first:
        return F.cross_entropy(out, y) if loss == "cross_entropy" else F.mse_loss(out, y)
    if loss == "cross_entropy":
        return F.cross_entropy(out.flatten(0, 1), y.flatten(0, 1), reduction="sum") / out.shape[1]
    return F.mse_loss(out, y, reduction="sum") / out[0].numel()


def task_loss(model, params: dict, x, y, loss: str) -> torch.Tensor:
    return output_loss(forward(model, params, x), y, loss, tasks_first=isinstance(model, TaskBatched))


def init_head(model, meta_params: dict, support_x, support_y, ways: int, recipe: InnerLoop) -> dict:
    """Meta-parameters + a head for ``ways`` outputs, per the recipe's head initialisation."""
    if recipe.head_init == "learned":
        return network_params(meta_params)
    params = body_params(meta_params)
    tasks = tuple(support_y.shape[:-1])  # (T,) for a TaskBatched model, else ()
    if recipe.head_init == "zero":
        some = next(iter(params.values()))
        params["head.weight"] = some.new_zeros(*tasks, ways, model.feature_dim)
        params["head.bias"] = some.new_zeros(*tasks, ways)
        return params
    feats = features(model, params, support_x)
    onehot = F.one_hot(support_y, ways).to(feats.dtype)
    protos = (onehot.transpose(-1, -2) @ feats) / onehot.sum(-2).unsqueeze(-1)
    params["head.weight"] = (2 * recipe.head_scale) * protos
    params["head.bias"] = -recipe.head_scale * (protos * protos).sum(-1)
    return params


def sgd_step(model, params: dict, x, y, recipe: InnerLoop, lr: float, first_order: bool = False) -> dict:
    """One SGD step on the adapted subset. Second order unless ``first_order`` (gradients detached)."""
    return sgd_step_with_loss(model, params, x, y, recipe, lr, first_order)[0]


def sgd_step_with_loss(model, params: dict, x, y, recipe: InnerLoop, lr: float, first_order: bool = False) -> tuple:
    """``sgd_step`` -> (new parameters, the support loss before the step), one forward pass.

    Second order (``first_order`` False, autograd recording): the gradient keeps its graph, so the
    meta-gradient differentiates through the step. First order: the gradient is taken w.r.t.
    detached copies, so no graph of it is built at all (cheaper than building one and detaching it).
    A ``TaskBatched`` model steps every task at once (its loss is the sum of the tasks' losses).
    """
    names = recipe.adapted_names(params)
    frozen = {k: v for k, v in params.items() if k not in names}
    second_order = not first_order and torch.is_grad_enabled()
    with torch.enable_grad():
        # one fresh node per parameter, so each gradient is a partial derivative even where one
        # parameter is computed from another (the prototype head from the body)
        leaves = {k: params[k].view_as(params[k]) if second_order and params[k].requires_grad
                  else params[k].detach().requires_grad_() for k in names}
        loss = task_loss(model, {**frozen, **leaves}, x, y, recipe.loss)
        grads = torch.autograd.grad(loss, [leaves[k] for k in names], create_graph=second_order)
    # lr: one rate for every tensor, or (learned rates) a vector with one rate per adapted tensor
    per_tensor = isinstance(lr, torch.Tensor) and lr.dim() == 1
    new = dict(params)
    for i, (k, g) in enumerate(zip(names, grads)):
        new[k] = params[k] - (lr[i] if per_tensor else lr) * g
    return new, loss


def adapt(model, meta_params: dict, support_x, support_y, ways: int, recipe: InnerLoop,
          steps: int | None = None, lr: float | None = None, first_order: bool = False) -> dict:
    """Head initialisation, then ``steps`` SGD steps on the support set -> task-specific parameters.

    The rates: ``lr`` when given (one for every step and tensor), else the learned rates in
    ``meta_params`` (``LEARNED_LRS``) when it holds them, else the recipe's lr."""
    return adapt_steps(model, meta_params, support_x, support_y, ways, recipe, steps, lr, first_order)[-1]


def adapt_steps(model, meta_params: dict, support_x, support_y, ways: int, recipe: InnerLoop,
                steps: int | None = None, lr: float | None = None, first_order: bool = False) -> list:
    """``adapt``, keeping every step: [parameters after the head initialisation, after step 1, ..., k]
    (MAML++'s multi-step loss scores each of them on the query set)."""
    rates = meta_params.get(LEARNED_LRS) if lr is None else None
    params = init_head(model, network_params(meta_params), support_x, support_y, ways, recipe)
    steps = recipe.steps if steps is None else steps
    lr = rates if rates is not None else (recipe.lr if lr is None else lr)
    trajectory = [params]
    for t in range(steps):
        params = sgd_step(model, params, support_x, support_y, recipe, step_rate(lr, t), first_order)
        trajectory.append(params)
    return trajectory
