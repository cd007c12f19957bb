"""Evaluation in torch: adapt to each task's support set with the inner loop, predict its queries.

Non-transductive by default: with per-sample norm ("layer"), each query's prediction depends only on
itself; with batch-statistics norm ("batch"), each query is normalised together with the support set
only (Nichol et al.'s non-transductive setting). ``transductive=True`` predicts all queries as one
batch, the papers' transductive setting (the same as non-transductive for per-sample norm).
"""

from __future__ import annotations

import json
import os
import stat

import torch

from ..data.sampler import TaskSampler
from ..errors import FastadaptError, warn
from ..data.sources import data_location
from ..evaluation import check_test_classes, evaluate_tasks, evaluation_protocol, mean_ci95, unseen_class_sampler
from ..outputs import KINDS
from .algorithms import TaskTensors, per_task
from .denormals import flushing_denormals
from .inner_loop import InnerLoop, adapt, forward
from .run_setup import DeviceTasks, preprocess_of, to_tensors
from .task_batched import task_batched

EVAL_CHUNK = 16  # tasks per batched evaluation computation (no second-order graph: less than a meta-batch)


class AdaptationDiverged(FastadaptError):
    """Adapting to an evaluation task gave non-finite outputs (the inner steps overflowed: too large a
    learning rate). Never scored: the argmax of NaN logits is class 0, which would read as chance accuracy.
    The caller says which flag to lower (evaluate: --lr; training validation: --inner-lr)."""


def finite(outputs: torch.Tensor) -> torch.Tensor:
    """``outputs`` of adapted models, or AdaptationDiverged when any is NaN or infinite."""
    if not bool(torch.isfinite(outputs).all()):
        raise AdaptationDiverged("adaptation diverged (non-finite outputs)")
    return outputs


def predict_queries(model, params: dict, batch: TaskTensors, norm: str, transductive: bool) -> torch.Tensor:
    with torch.no_grad():
        if norm != "batch" or transductive:
            return forward(model, params, batch.query_x)
        outputs = []
        for q in batch.query_x:
            joint = torch.cat([batch.support_x, q[None]])
            outputs.append(forward(model, params, joint)[-1])
        return torch.stack(outputs)


def adapt_and_predict(model, meta_params: dict, recipe: InnerLoop, batch: TaskTensors, steps: int, lr: float | None,
                      norm: str, transductive: bool) -> torch.Tensor:
    """Outputs for the query set after adapting to the support set (the shared evaluation step)."""
    with torch.enable_grad():
        params = adapt(model, meta_params, batch.support_x, batch.support_y, batch.ways, recipe, steps=steps,
                       lr=lr, first_order=True)
    params = {k: v.detach() for k, v in params.items()}
    return predict_queries(model, params, batch, norm, transductive)


def adapt_and_predict_tasks(model, meta_params: dict, recipe: InnerLoop, batches: list, steps: int,
                            lr: float | None) -> torch.Tensor:
    """``adapt_and_predict`` for tasks of equal shapes as one computation (the same ``adapt`` and ``forward``
    on a ``TaskBatched`` model) -> outputs (tasks, queries, ways). Per-sample norm (or transductive) only."""
    n = len(batches)
    sx, sy, qx = (torch.stack([getattr(b, f) for b in batches]) for f in ("support_x", "support_y", "query_x"))
    params = per_task({k: v.detach() for k, v in meta_params.items()}, n)
    batched = task_batched(model, n)
    with torch.no_grad():  # the inner steps still take their gradients; no graph to the meta-parameters
        fast = adapt(batched, params, sx, sy, batches[0].ways, recipe, steps=steps, lr=lr, first_order=True)
        return forward(batched, fast, qx)


def evaluate_classification(model, meta_params, recipe, sampler: TaskSampler, preprocess, device, tasks: int,
                            steps: int, lr: float | None = None, norm: str = "layer", transductive: bool = False,
                            progress=None, batched: bool = False) -> dict:
    """Accuracy over ``tasks`` tasks of ``sampler``. ``batched``: EVAL_CHUNK tasks at a time as one
    computation (faster on a GPU; the same predictions up to float rounding), except for non-transductive
    batch-statistics norm, which predicts each query with the support set and stays a per-task loop."""
    if batched and (norm != "batch" or transductive):
        stream, pending, start = DeviceTasks(sampler, preprocess, device), [], 0

        def predict_task(task):  # evaluate_tasks asks for tasks 0, 1, ... in order: fill a chunk at a time
            nonlocal start
            if not pending:
                chunk = stream.tasks(range(start, min(start + EVAL_CHUNK, tasks)))
                try:
                    pending.extend(finite(adapt_and_predict_tasks(model, meta_params, recipe, chunk, steps, lr))
                                   .argmax(-1).cpu().numpy())
                except torch.cuda.OutOfMemoryError:
                    pass  # (after the except block, which still holds the failed attempt's memory)
                if not pending:  # out of GPU memory: this chunk task by task
                    pending.extend(finite(adapt_and_predict(model, meta_params, recipe, b, steps, lr, norm, transductive))
                                   .argmax(1).cpu().numpy() for b in chunk)
                start += len(chunk)
            return pending.pop(0)
    else:
        def predict_task(task):
            batch = to_tensors(task, preprocess, device, sampler.ways)
            out = finite(adapt_and_predict(model, meta_params, recipe, batch, steps, lr, norm, transductive))
            return out.argmax(1).cpu().numpy()

    result = evaluate_tasks(sampler, tasks, predict_task, progress)
    result.update(steps=steps, transductive=transductive)
    return result


def evaluate_regression(model, meta_params, recipe, sampler, device, tasks: int, steps: int,
                        lr: float | None = None, progress=None) -> dict:
    """Mean squared error on the query points after ``steps`` SGD steps on the K support points."""
    errors = []
    for i in range(tasks):
        batch = to_tensors(sampler.task(i), None, device, 1)
        out = finite(adapt_and_predict(model, meta_params, recipe, batch, steps, lr, "none", False))
        errors.append(float(((out - batch.query_y) ** 2).mean()))
        if progress is not None:
            progress(i + 1)
    mean, ci = mean_ci95(errors)
    return {"mse": round(mean, 5), "ci95": round(ci, 5), "tasks": tasks, "shots": sampler.shots, "steps": steps}


def unseen_task_sampler(config, data: str, protocol: str, ways: int, shots: int, query: int, seed: int) -> tuple:
    """(sampler, preprocessing): the evaluation tasks of a run with ``config``: the test split of ``data``
    under the run's split settings, the same tasks the runtime evaluates a bundle of the run on."""
    spec = preprocess_of(config)
    sampler = unseen_class_sampler(data, protocol, config.seed, config.val_classes, spec, ways, shots, query, seed,
                                   split_ways=config.ways)
    return sampler, spec


def load_meta_params(rundir: str, checkpoint: str, device) -> tuple:
    """(config, model spec, recipe, model, meta-parameters as tensors) of a run folder's checkpoint."""
    from ..models import build_model
    from .run_setup import model_spec_of, recipe_of
    from .run import load_checkpoint, read_config

    if checkpoint not in ("best", "last"):
        raise FastadaptError(f"--checkpoint must be best or last, got '{checkpoint}'")
    config = read_config(rundir)
    ckpt = load_checkpoint(os.path.join(rundir, f"{checkpoint}.npz"))
    spec, recipe = model_spec_of(config), recipe_of(config)
    model = build_model(spec).to(device)
    for name, param in model.named_parameters():  # a wrong-shape checkpoint: one line, not a torch traceback
        saved = ckpt.params.get(name)
        if saved is None or tuple(saved.shape) != tuple(param.shape):
            got = "missing" if saved is None else tuple(saved.shape)
            raise FastadaptError(f"{rundir}/{checkpoint}.npz: parameter {name} is {got} there but {tuple(param.shape)} "
                                 f"for the model of config.json; the checkpoint belongs to another run")
    params = {k: torch.from_numpy(v).to(device) for k, v in ckpt.params.items()}
    return config, spec, recipe, model, params, ckpt.progress


def check_record(path: str) -> None:
    """Before the evaluation: refuse an evaluations.jsonl the result could not be appended to, under the
    output rules (a regular file only, never written through a link)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise FastadaptError(f"{path}: cannot be checked ({exc.strerror}); fix the run folder, then evaluate again") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise FastadaptError(f"{path}: is {kind}, not a regular file; evaluate appends each result to it (never "
                             f"through a link): move it out of the run folder, then evaluate again")
    if not os.access(path if st is not None else os.path.dirname(os.path.abspath(path)), os.W_OK):
        raise FastadaptError(f"{path}: not writable, so the result could not be recorded; fix the permissions "
                             f"(chmod u+w), then evaluate again")


def append_record(path: str, row: dict) -> None:
    """Append one line; after minutes of evaluation a failure only warns (the caller still gets the result).
    O_NOFOLLOW and the fstat keep the output rules even if the file was swapped since check_record."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o666)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(0, "not a regular file")
            os.write(fd, (json.dumps(row) + "\n").encode())  # one write: export skips a line a full disk cut
        finally:
            os.close(fd)
    except OSError as exc:
        warn(f"{path}: the result was not recorded ({exc.strerror or exc}); 'fastadapt export' will not include it")


def evaluate_run(rundir: str, data: str | None = None, protocol: str = "auto", ways: int = 5, shots: int | None = None,
                 query: int = 15, tasks: int = 600, seed: int = 0, steps: int | None = None, lr: float | None = None,
                 transductive: bool = False, checkpoint: str = "best", progress=None, device: str = "auto",
                 batched: bool | None = None) -> dict:
    """``fastadapt evaluate RUNDIR``: test-class accuracy (or sinusoid MSE) of a run's checkpoint.

    ``batched``: classification tasks evaluated EVAL_CHUNK at a time as one computation; None: on CUDA.

    The result is also appended to RUNDIR/evaluations.jsonl, which ``fastadapt export`` copies into the
    bundle's provenance.
    """
    from ..data.sinusoid import SinusoidSampler
    from .run import read_split
    from .run_setup import resolve_device

    dev = resolve_device(device)
    config, spec, recipe, model, params, ckpt_progress = load_meta_params(rundir, checkpoint, dev)
    record = os.path.join(rundir, "evaluations.jsonl")
    check_record(record)
    steps = config.test_steps if steps is None else steps
    if steps < 0:
        raise FastadaptError(f"--steps must be 0 or more, got {steps}")
    if tasks < 2:
        raise FastadaptError(f"--tasks must be at least 2 for a confidence interval, got {tasks}")
    if shots is not None and shots < 1:
        raise FastadaptError(f"--shots must be at least 1, got {shots}")
    if lr is not None and not lr > 0:
        raise FastadaptError(f"--lr must be a positive number, got {lr}")
    data = data or config.data
    try:
        if config.regression:
            if data != "sinusoid":
                raise FastadaptError(f"{rundir} is a sinusoid regression run; evaluate it with --data sinusoid")
            # 100 query points per task; task seeds offset from the training/validation streams
            sampler = SinusoidSampler(config.shots if shots is None else shots, 100, seed + 10_000)
            with flushing_denormals():
                result = evaluate_regression(model, params, recipe, sampler, dev, tasks, steps, lr, progress)
        else:
            if data == "sinusoid":
                raise FastadaptError(f"{rundir} is an image classification run; --data sinusoid does not apply")
            protocol = evaluation_protocol(protocol, config.protocol, data, data_location(data) == config.data)
            sampler, spec_pre = unseen_task_sampler(config, data, protocol, ways, 1 if shots is None else shots, query,
                                                    seed)
            recorded = read_split(rundir)
            if recorded is not None and data_location(data) == config.data and protocol == config.protocol:
                check_test_classes(recorded["test"], sampler.data.names, data, rundir,
                                   seen=recorded["train"] + recorded["val"])
            with flushing_denormals():
                result = evaluate_classification(model, params, recipe, sampler, spec_pre, dev, tasks, steps, lr,
                                                 spec.norm, transductive, progress,
                                                 dev.type == "cuda" if batched is None else batched)
            result["protocol"] = protocol
    except AdaptationDiverged:
        now = f"{lr:g}" if lr is not None else ("the run's meta-learned rates" if config.learn_inner_lr
                                               else f"the run's {config.inner_lr:g}")
        raise FastadaptError(f"adaptation diverged (non-finite outputs after {steps} steps); lower --lr (now {now}); "
                             f"nothing was recorded") from None
    result.update(data=data, checkpoint=checkpoint, iteration=ckpt_progress.get("iteration"),
                  algorithm=config.algorithm, evaluated_with="torch")
    append_record(record, {k: v for k, v in result.items() if k != "per_task_accuracy"})
    return result
