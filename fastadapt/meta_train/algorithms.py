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

import copy
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..errors import FastadaptError
from .inner_loop import LEARNED_LRS, InnerLoop, adapt, adapt_steps, forward, output_loss
from .task_batched import TaskBatched, supports, task_batched

ALGORITHMS = ("maml", "fomaml", "reptile", "anil")


@dataclass
class TaskTensors:
    """One task as tensors: support/query inputs and targets, and the number of outputs."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int


def query_metrics(model, params, task: TaskTensors, recipe: InnerLoop) -> tuple:
    out = forward(model, params, task.query_x)
    return output_loss(out, task.query_y, recipe.loss), _accuracy(out, task.query_y, recipe)


def _accuracy(out: torch.Tensor, y: torch.Tensor, recipe: InnerLoop) -> float:
    if recipe.loss != "cross_entropy":
        return float("nan")
    return (out.detach().argmax(1) == y).float().mean().item()


@dataclass
class Chunks:
    """How many tasks one vectorised computation takes (None: the whole batch). Kept by the caller for a
    whole run: after a CUDA out-of-memory error the size is halved and stays so."""

    size: int | None = None


def meta_gradient(algorithm: str, model, meta_params: dict, tasks: list, recipe: InnerLoop,
                  vectorize: bool = False, workers: int = 1, chunks: Chunks | None = None,
                  step_weights: tuple | None = None) -> tuple:
    """Average meta-gradient over ``tasks`` -> (grads dict, mean query loss, mean query accuracy).

    ``step_weights`` (MAML++'s multi-step loss; not for reptile): the meta-objective is
    sum_t w_t L_query(phi_t) over the parameters after each inner step t = 1..k instead of L_query(phi_k)
    alone; the loss and accuracy returned are still those after the last step.

    ``workers`` > 1: the per-task loop runs on that many threads, each with its share of torch's
    intra-op threads (see ``_meta_gradient_threads``); the result equals the loop's up to
    floating-point summation order.

    ``vectorize``: process a batch whose tasks all have the same shapes (always so in training) as one
    computation: the same ``adapt`` / ``output_loss`` the per-task loop calls, on a ``TaskBatched`` model
    (``task_batched``: one grouped convolution per layer for all tasks); ragged batches, and networks it
    does not support, still take the loop. Both paths give the same result up to floating-point
    summation order. Off by default: on CPU the loop is faster (the default model's recipe, 16 tasks,
    1 thread: 3.2 s against 5.0 s per meta-step) -- each task is already a large, memory-bound
    computation, and the batch's T-times larger activations and grouped convolutions cost more than
    the loop's per-task overhead saves. It pays on a GPU, where the loop is kernel-launch bound, at T
    times the activation memory (the trainer turns it on there by default).

    ``chunks``: the vectorised path computes at most ``chunks.size`` tasks at once and combines the
    chunks' means weighted by their sizes (the same gradient up to summation order); a CUDA
    out-of-memory error halves the size (kept in ``chunks``) and the batch is computed again.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{algorithm}', choose one of {ALGORITHMS}")
    if algorithm == "anil" and recipe.adapt != "head":
        raise ValueError(f"anil adapts only the head: its recipe needs adapt='head', got '{recipe.adapt}'")
    if not tasks:
        raise ValueError("meta_gradient needs at least one task")
    if algorithm == "reptile" and LEARNED_LRS in meta_params:
        raise ValueError("reptile has no gradient for learned inner rates; use maml, fomaml or anil")
    if step_weights is not None and (algorithm == "reptile" or len(step_weights) != recipe.steps):
        raise ValueError(f"step_weights: one weight per inner step ({recipe.steps}), and not for reptile")
    if vectorize and _stackable(tasks) and can_vectorize(algorithm, model):
        return _meta_gradient_chunked(algorithm, model, meta_params, tasks, recipe, chunks or Chunks(), step_weights)
    if workers > 1 and len(tasks) > 1:
        return _meta_gradient_threads(algorithm, model, meta_params, tasks, recipe, workers, step_weights)
    return _meta_gradient_loop(algorithm, model, meta_params, tasks, recipe, step_weights)


def _meta_gradient_threads(algorithm: str, model, meta_params: dict, tasks: list, recipe: InnerLoop,
                           workers: int, step_weights: tuple | None = None) -> tuple:
    """The per-task loop split over ``workers`` threads (torch releases the GIL inside its operators).

    Why: a few-shot task is too small to keep several cores busy from inside each operator (Conv4 on
    80 images: 2 intra-op threads are only 1.3x faster than 1 on this project's 2-core machine), while
    independent tasks on separate cores scale almost linearly. Each thread gets its own copy of the
    module, because ``functional_call`` swaps a module's parameters while it runs. The chunks' sums are
    combined in a fixed order, so the result does not depend on thread timing.
    """
    workers = min(workers, len(tasks))
    chunks = [tasks[i::workers] for i in range(workers)]
    modules = [model] + [copy.deepcopy(model) for _ in range(workers - 1)]
    threads = torch.get_num_threads()

    def work(module, chunk):
        torch.set_num_threads(max(1, threads // workers))
        return _meta_gradient_loop(algorithm, module, meta_params, chunk, recipe, step_weights)

    try:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(work, modules, chunks))
    finally:
        torch.set_num_threads(threads)
    return _weighted_mean(results, [len(c) for c in chunks], meta_params)


def _weighted_mean(results: list, sizes: list, names) -> tuple:
    """(grads, loss, acc) of a batch from its parts' means, each weighted by its number of tasks."""
    n = sum(sizes)
    grads = {k: sum(r[0][k] * m for r, m in zip(results, sizes)) / n for k in names}
    loss = sum(r[1] * m for r, m in zip(results, sizes)) / n
    acc = sum(r[2] * m for r, m in zip(results, sizes)) / n
    return grads, loss, acc


def _meta_gradient_chunked(algorithm: str, model, meta_params: dict, tasks: list, recipe: InnerLoop,
                           chunks: Chunks, step_weights: tuple | None = None) -> tuple:
    """The vectorised path over consecutive chunks of at most ``chunks.size`` tasks.

    A CUDA out-of-memory error frees what the failed attempt held, halves the size and starts the batch
    again; one task that does not fit is a one-line error. Never a traceback in the middle of a run.
    """
    while True:
        size = min(chunks.size or len(tasks), len(tasks))
        try:
            parts = [tasks[i:i + size] for i in range(0, len(tasks), size)]
            results = [_meta_gradient_batched(algorithm, model, meta_params, part, recipe, step_weights) for part in parts]
            return results[0] if len(parts) == 1 else _weighted_mean(results, [len(p) for p in parts], meta_params)
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
            if not out_of_gpu_memory(exc):
                raise
            if size == 1:
                raise FastadaptError("out of GPU memory with a single task: lower --ways, --shots, --query or "
                                     "--width (or --image-size), or train with --device cpu") from None
        chunks.size = (size + 1) // 2
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the failed attempt's blocks, so the smaller chunks can use them


def out_of_gpu_memory(exc: BaseException) -> bool:
    """torch's CUDA out-of-memory error, or the RuntimeError that cuDNN and cuBLAS raise when their own
    workspace allocation fails (a full GPU too, which smaller chunks can fit)."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and any(sign in str(exc) for sign in ("ALLOC_FAILED", "CUDA out of memory")))


def can_vectorize(algorithm: str, model) -> bool:
    """Whether the vectorised path computes ``algorithm``'s meta-gradient for ``model`` (every algorithm,
    for the project's networks: ``task_batched.supports``)."""
    return supports(model)


def _stackable(tasks: list) -> bool:
    """All tasks have the same number of outputs and equal shapes, dtypes and devices field by field."""
    first = tasks[0]
    fields = ("support_x", "support_y", "query_x", "query_y")
    return all(t.ways == first.ways and all(
        (getattr(t, f).shape, getattr(t, f).dtype, getattr(t, f).device)
        == (getattr(first, f).shape, getattr(first, f).dtype, getattr(first, f).device) for f in fields)
        for t in tasks[1:])


def _query_objective(model, trajectory: list, task_x, task_y, recipe: InnerLoop, step_weights: tuple | None):
    """(what is differentiated, the last step's query outputs and loss): L_query(phi_k), or with
    ``step_weights`` sum_t w_t L_query(phi_t) over steps t = 1..k."""
    batched = isinstance(model, TaskBatched)
    out = forward(model, trajectory[-1], task_x)
    loss = output_loss(out, task_y, recipe.loss, tasks_first=batched)
    if step_weights is None:
        return loss, out, loss
    objective = step_weights[-1] * loss
    for w, params in zip(step_weights[:-1], trajectory[1:-1]):
        objective = objective + w * output_loss(forward(model, params, task_x), task_y, recipe.loss, tasks_first=batched)
    return objective, out, loss


def _meta_gradient_loop(algorithm: str, model, meta_params: dict, tasks: list, recipe: InnerLoop,
                        step_weights: tuple | None = None) -> tuple:
    """One task at a time (ragged batches, and the reference for the vectorised path)."""
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
            trajectory = adapt_steps(model, meta_params, task.support_x, task.support_y, task.ways, recipe,
                                     first_order=(algorithm == "fomaml"))
            objective, out, loss = _query_objective(model, trajectory, task.query_x, task.query_y, recipe,
                                                    step_weights)
            acc = _accuracy(out, task.query_y, recipe)
            grads = torch.autograd.grad(objective, [meta_params[k] for k in names], allow_unused=True)
            for k, g in zip(names, grads):
                if g is not None:
                    total[k] += g
        losses.append(loss.item())
        accs.append(acc)
    n = len(tasks)
    return {k: v / n for k, v in total.items()}, sum(losses) / n, sum(accs) / n


def per_task(params: dict, tasks: int) -> dict:
    """Meta-parameters for a ``TaskBatched`` model: each given a leading task dimension (a view, so autograd
    sums the tasks' gradients back into it); the learned inner rates are shared by every task."""
    return {k: v if k == LEARNED_LRS else v.expand(tasks, *v.shape) for k, v in params.items()}


def _meta_gradient_batched(algorithm: str, model, meta_params: dict, tasks: list, recipe: InnerLoop,
                           step_weights: tuple | None = None) -> tuple:
    """The loop's computation for all tasks at once (``batched_meta_gradient``), its means as numbers."""
    grads, loss, correct = batched_meta_gradient(algorithm, model, meta_params, tasks, recipe, step_weights)
    n = len(tasks)
    return grads, loss.item() / n, float("nan") if correct is None else correct.item() / n


def batched_meta_gradient(algorithm: str, model, meta_params: dict, tasks: list, recipe: InnerLoop,
                          step_weights: tuple | None = None) -> tuple:
    """-> (mean meta-gradient, the tasks' query losses summed, their query accuracies summed (None for
    regression)), all tensors: nothing here waits for the device, so a GPU can capture it as a graph.

    The loop's computation for all tasks at once: the same ``adapt`` / ``forward`` / ``output_loss`` on
    a ``TaskBatched`` model, every parameter given a leading task dimension (the meta-parameters expanded,
    so autograd sums the tasks' gradients into them). MAML stays second order (FOMAML: the inner
    gradients are detached); the loss summed over tasks is divided by their number, as the loop averages."""
    names = list(meta_params)
    ways, n = tasks[0].ways, len(tasks)
    batched = task_batched(model, n)
    sx, sy, qx, qy = (torch.stack([getattr(t, f) for t in tasks])
                      for f in ("support_x", "support_y", "query_x", "query_y"))

    if algorithm == "reptile":
        # first order and no meta-gradient through autograd: adapt detached copies of phi
        phi = {k: v.detach() for k, v in meta_params.items()}
        fast = adapt(batched, per_task(phi, n), torch.cat([sx, qx], 1), torch.cat([sy, qy], 1), ways, recipe,
                     first_order=True)
        out = forward(batched, fast, qx)
        # each task's step first, then their mean: phi - phi_k is small, and averaging the phi_k first would
        # round at the size of phi
        grads = {k: (phi[k] - fast[k].detach()).mean(0) / recipe.lr for k in names}
        loss = output_loss(out, qy, recipe.loss, tasks_first=True)
    else:
        trajectory = adapt_steps(batched, per_task(meta_params, n), sx, sy, ways, recipe,
                                 first_order=(algorithm == "fomaml"))
        objective, out, loss = _query_objective(batched, trajectory, qx, qy, recipe, step_weights)
        g = torch.autograd.grad(objective / n, [meta_params[k] for k in names], allow_unused=True)
        grads = {k: torch.zeros_like(meta_params[k]) if gk is None else gk for k, gk in zip(names, g)}
    correct = (out.detach().argmax(-1) == qy).float().mean(1).sum() if recipe.loss == "cross_entropy" else None
    return grads, loss.detach(), correct


def outer_optimizer(algorithm: str, params: list, meta_lr: float) -> torch.optim.Optimizer:
    """The optimiser that applies the meta-gradient: Adam, or Reptile's plain SGD step (see ``reptile_step``)."""
    if algorithm == "reptile":
        return torch.optim.SGD(params, lr=meta_lr)  # lr set every iteration by reptile_step
    return torch.optim.Adam(params, lr=meta_lr)


def multi_step_weights(steps: int, iteration: int, anneal: int) -> tuple:
    """MAML++'s multi-step loss weights for ``iteration`` (0-based): every step's query loss counts 1/k at
    first; the weights of steps 1..k-1 fall linearly over ``anneal`` iterations to 0.03/k (MAML++'s
    minimum, Antoniou et al. 2019) and the last step takes the rest."""
    low = 0.03 / steps
    others = max(low, 1.0 / steps - iteration * (1.0 / steps - low) / anneal)
    return (others,) * (steps - 1) + (1.0 - (steps - 1) * others,)


def cosine_step(optimizer: torch.optim.Optimizer, meta_lr: float, iteration: int, iterations: int) -> None:
    """--meta-lr-schedule cosine: the outer learning rate for ``iteration`` (0-based) of ``iterations``,
    annealed from ``meta_lr`` to 0 along half a cosine (MAML++, Antoniou et al. 2019)."""
    for group in optimizer.param_groups:
        group["lr"] = meta_lr * 0.5 * (1 + math.cos(math.pi * iteration / iterations))


def reptile_step(optimizer: torch.optim.Optimizer, meta_lr: float, inner_lr: float, iteration: int,
                 iterations: int) -> None:
    """Reptile's outer step size for ``iteration`` (0-based) of ``iterations``: the meta-gradient is
    (phi - phi_k) / alpha, so lr eps * alpha makes the update phi + eps * (phi_k - phi) of the paper, with
    eps = ``meta_lr`` annealed linearly to 0 (Nichol et al.)."""
    for group in optimizer.param_groups:
        group["lr"] = meta_lr * inner_lr * (1 - iteration / iterations)
