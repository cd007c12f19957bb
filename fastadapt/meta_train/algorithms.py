"""Meta-gradients of MAML (second order), FOMAML, Reptile and ANIL over a batch of tasks.

Each returns a gradient-like dict for the meta-parameters; the trainer's optimiser applies it.
With phi the meta-parameters and phi' the parameters after the inner loop:
  maml     d L_query(phi') / d phi, differentiating through every inner step
           (one step: (I - alpha H_support(phi)) grad L_query(phi'))
  fomaml   the same with inner gradients treated as constants: grad L_query(phi')
  anil     maml whose inner loop adapts only the head (recipe.adapt == "head")
  reptile  (phi - phi_k) / alpha = the sum of the k inner gradients, inner loop on support + query;
           the optimiser takes phi <- phi - eps * mean over tasks (eps annealed to 0, Nichol et al.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .inner_loop import InnerLoop, adapt, forward, output_loss

ALGORITHMS = ("maml", "fomaml", "reptile", "anil")


@dataclass
class Batch:
    """One task as tensors: support/query inputs and targets, and the number of outputs."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int


def query_metrics(model, params, task: Batch, recipe: InnerLoop) -> tuple:
    out = forward(model, params, task.query_x)
    loss = output_loss(out, task.query_y, recipe.loss)
    if recipe.loss != "cross_entropy":
        return loss, float("nan")
    return loss, (out.detach().argmax(1) == task.query_y).float().mean().item()


def meta_gradient(algorithm: str, model, meta_params: dict, tasks: list, recipe: InnerLoop) -> tuple:
    """Average meta-gradient over ``tasks`` -> (grads dict, mean query loss, mean query accuracy)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{algorithm}', choose one of {ALGORITHMS}")
    if algorithm == "anil" and recipe.adapt != "head":
        raise ValueError(f"anil adapts only the head: its recipe needs adapt='head', got '{recipe.adapt}'")
    names = list(meta_params)
    total = {k: torch.zeros_like(v) for k, v in meta_params.items()}
    losses, accs = [], []
    for task in tasks:
        if algorithm == "reptile":
            x = torch.cat([task.support_x, task.query_x])
            y = torch.cat([task.support_y, task.query_y])
            fast = adapt(model, meta_params, x, y, task.ways, recipe, first_order=True)
            for k in names:
                total[k] += (meta_params[k].detach() - fast[k].detach()) / recipe.lr
            loss, acc = query_metrics(model, fast, task, recipe)
        else:
            fast = adapt(model, meta_params, task.support_x, task.support_y, task.ways, recipe,
                         first_order=(algorithm == "fomaml"))
            loss, acc = query_metrics(model, fast, task, recipe)
            grads = torch.autograd.grad(loss, [meta_params[k] for k in names], allow_unused=True)
            for k, g in zip(names, grads):
                if g is not None:
                    total[k] += g
        losses.append(loss.item())
        accs.append(acc)
    n = len(tasks)
    return {k: v / n for k, v in total.items()}, sum(losses) / n, sum(accs) / n
