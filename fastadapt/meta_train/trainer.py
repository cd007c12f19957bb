"""The meta-training loop: sample tasks, meta-gradient, optimiser step, validate, checkpoint.

Task ``j`` of iteration ``i`` is ``sampler.task(i * meta_batch + j)``, so the data stream is a pure
function of the seed and a resumed run sees exactly the tasks an uninterrupted one would. Under torchrun
each process computes its share of those tasks (see distributed.py); rank 0 alone writes the run folder.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import time

import numpy as np
import torch

from ..errors import FastadaptError, warn
from ..progress import progress_bar
from ..models import build_model
from . import distributed
from .algorithms import Chunks, meta_gradient
from .evaluate import evaluate_classification, evaluate_regression
from .parts import (batched_path, check_config, describe_data, init_meta_params, make_samplers, model_spec_of,
                    recipe_of, resolve_device, task_stream)
from .run import (RESUMABLE, RunLock, TrainConfig, check_limits, config_path, has_checkpoint, load_checkpoint,
                  load_optimizer_state, optimizer_state_to_numpy, read_config, read_metrics, remove_empty_run,
                  remove_temp_files, save_checkpoint, truncate_metrics, write_atomic, write_json)


class Diverged(FastadaptError):
    pass


def _optimizer(c: TrainConfig, params: list):
    if c.algorithm == "reptile":
        return torch.optim.SGD(params, lr=c.meta_lr)  # lr annealed linearly to 0 in the loop
    return torch.optim.Adam(params, lr=c.meta_lr)


def resolve_config(c: TrainConfig, rundir: str, resume: bool, given: set | None = None) -> TrainConfig:
    """The config to train with: ``c`` for a new run, the run's own for --resume. Writes nothing.

    ``given`` names the flags the user set explicitly; on --resume only those are compared with the
    run's config (and those in RESUMABLE, such as --iterations, may change it).
    """
    exists = os.path.exists(config_path(rundir))
    if resume:
        if not exists:
            raise FastadaptError(f"--resume: {rundir} holds no run to resume (no config.json); drop --resume to start one")
        saved = read_config(rundir).to_dict()
        mine = c.to_dict()
        for k in sorted(given if given is not None else mine):
            if k not in RESUMABLE and mine[k] != saved.get(k):
                raise FastadaptError(f"--resume continues {rundir} as it was started, but --{k.replace('_', '-')} "
                                     f"{mine[k]} differs from the run's {saved.get(k)}; drop the flag or use a new --out")
        for k in RESUMABLE & set(given or ()) - {"command"}:
            saved[k] = mine[k]
        if mine["command"] and mine["command"] != saved.get("command"):
            # keep the command that started the run (the model card's); append how it was resumed
            saved["command"] = list(saved.get("command") or []) + ["&&"] + list(mine["command"])
        return TrainConfig.from_dict(saved)
    if exists and has_checkpoint(rundir):
        raise FastadaptError(f"--out {rundir} already holds a run; add --resume to continue it or choose another --out")
    # a folder whose run saved nothing (it diverged or failed at once) is reused: nothing trained is lost
    if os.path.exists(rundir) and not os.path.isdir(rundir):
        raise FastadaptError(f"--out {rundir} is a file; pass a folder for the run")
    return c


def load_initialisation(params: dict, source: str) -> None:
    """Copy a run's best checkpoint (or a checkpoint file) into ``params``; architectures must match."""
    path = os.path.join(source, "best.npz") if os.path.isdir(source) else source
    if not os.path.exists(path):
        raise FastadaptError(f"--init-from {source}: no checkpoint there (expected a run folder with best.npz)")
    copy_params(params, load_checkpoint(path).params, f"--init-from {source}",
                "use the same --width/--channels/--norm as that run")


def copy_params(params: dict, saved: dict, source: str, fix: str) -> None:
    """Copy checkpoint arrays into the model's parameters; a missing or wrong-shape one is a user error."""
    for k, v in params.items():
        if k not in saved or tuple(saved[k].shape) != tuple(v.shape):
            got = tuple(saved[k].shape) if k in saved else "missing"
            raise FastadaptError(f"{source}: parameter {k} is {got} there but {tuple(v.shape)} here; {fix}")
    with torch.no_grad():
        for k, v in params.items():
            v.copy_(torch.from_numpy(saved[k]))


def train(c: TrainConfig, rundir: str, resume: bool = False, quiet: bool = False, given: set | None = None,
          dist_timeout: float = distributed.DEFAULT_TIMEOUT_S) -> dict:
    """Meta-train into ``rundir``; returns a summary. ``given``: flags set explicitly (for --resume).

    Under torchrun (WORLD_SIZE > 1) every process calls this; ``dist_timeout``: seconds a collective
    waits for the other processes before the run stops.
    """
    job = distributed.setup(c.device, dist_timeout)
    lock = RunLock(rundir)
    try:
        summary = _train(job, c, rundir, resume, quiet, given, lock)
    except OSError as exc:  # a full disk, a read-only folder, a name too long: one line, the run resumable
        job.teardown(clean=False)
        raise FastadaptError(f"{exc.filename or rundir}: {exc.strerror or exc} (training into {rundir}); "
                             f"free space or fix permissions, then add --resume to continue") from None
    except BaseException:
        job.teardown(clean=False)
        raise
    finally:
        lock.release()
    job.teardown(clean=True)
    return summary


def _train(job: distributed.Job, c: TrainConfig, rundir: str, resume: bool, quiet: bool, given: set | None,
           lock: RunLock) -> dict:
    quiet = quiet or not job.is_main
    log = (lambda *a: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    last_path, best_path = os.path.join(rundir, "last.npz"), os.path.join(rundir, "best.npz")
    start, best, error, elapsed_before, created = 0, None, None, 0.0, False
    try:  # everything that reads files or data, before RUNDIR is written; every rank must succeed
        asked = c
        check_limits(c)
        c = resolve_config(c, rundir, resume, given)  # reads only: bad flags create no folder
        check_config(c)
        job.check_config(c.meta_batch, c.pretrain_epochs)
        if job.is_main:
            # one writer per run folder: a second trainer stops here at once, naming the first; then
            # look again, under the lock, at what the folder holds
            created = not os.path.isdir(rundir)
            lock.acquire()
            c = resolve_config(asked, rundir, resume, given)
            remove_temp_files(rundir)
        device = resolve_device(str(job.device) if job.active else c.device, c.tf32)  # CUDA: TF32 only if asked
        log(f"loading {describe_data(c)} ...")
        samplers = make_samplers(c)  # bad data fails here
        sample_tasks = task_stream(c, samplers, device)
        spec, recipe = model_spec_of(c), recipe_of(c)
        model = build_model(spec).to(device)
        params = init_meta_params(model, c, device)
        names = list(params)
        optimizer = _optimizer(c, [params[k] for k in names])
        if c.init_from and not (resume and os.path.exists(last_path)):
            load_initialisation(params, c.init_from)
            log(f"meta-parameters initialised from {c.init_from}")
        if resume and os.path.exists(last_path):
            fix = (f"copy {best_path} over it to resume from the best checkpoint (the optimiser state restarts), "
                   f"or train again into a new --out")
            ckpt = load_checkpoint(last_path, fix)
            copy_params(params, ckpt.params, last_path, fix)
            if ckpt.optimizer_state is not None:
                load_optimizer_state(optimizer, ckpt.optimizer_state, device)
            start, best = ckpt.progress["iteration"], ckpt.progress.get("best")
            elapsed_before = ckpt.progress.get("elapsed_seconds", 0.0)
            if c.iterations < start:  # else the summary and config would claim fewer iterations than were run
                raise FastadaptError(f"--iterations {c.iterations}: the run in {rundir} is already at iteration "
                                     f"{start}; --iterations is the run's total, so give {start} or more")
    except Exception as exc:
        error = exc
        if created and lock.file is not None:  # leave no empty folder behind for a run that never started
            remove_empty_run(rundir)
            lock.release()
    job.check(error, "start-up")
    job.same(start, "the iteration to resume from")
    job.broadcast(params)
    if job.is_main:
        if not resume:  # reusing a folder whose run saved nothing: drop its logs
            for name in ("metrics.jsonl", "summary.json", "curves.png"):
                if os.path.exists(os.path.join(rundir, name)):
                    os.unlink(os.path.join(rundir, name))
        write_json(config_path(rundir), c.to_dict())
        if c.pretrain_epochs and not (resume and os.path.exists(last_path)):
            from .pretrain import pretrain_body

            pretrain_body(model, params, samplers.train.data, samplers.preprocess, c.pretrain_epochs, rundir, c.seed,
                          device, lr=c.pretrain_lr, resume=resume, quiet=quiet, augment=c.augment,
                          smoothing=c.pretrain_smoothing, schedule=c.pretrain_schedule)
        if resume:
            truncate_metrics(rundir, start)
            log(f"resuming {rundir} at iteration {start}/{c.iterations}" if os.path.exists(last_path) else
                f"{rundir} has no checkpoint yet: starting from iteration 0")
    log(f"{c.algorithm} on {describe_data(c)}: {c.ways}-way {c.shots}-shot, {c.meta_batch} tasks/iteration, "
        f"{c.inner_steps} inner steps (lr {c.inner_lr}), device {device}"
        + (" (TF32 convolutions)" if device.type == "cuda" and c.tf32 else "")
        + f", {sum(p.numel() for p in params.values())} parameters"
        + (f", {job.world_size} processes x {c.meta_batch // job.world_size} tasks" if job.active else ""))
    batched, why = batched_path(c, device)
    log(f"meta-batch: {why}")

    def snapshot(it: int) -> dict:
        return {k: v.detach().cpu().numpy() for k, v in params.items()}

    def last_good() -> str:
        if os.path.exists(last_path):
            return f"the last good checkpoint is {last_path} (--resume continues from it)"
        return f"no checkpoint was saved, so {rundir} can be reused as --out"

    def checkpoint(it: int) -> None:
        arrays = snapshot(it)
        if not all(np.isfinite(a).all() for a in arrays.values()):
            raise Diverged(f"parameters became non-finite at iteration {it}; {last_good()}")
        save_checkpoint(last_path, arrays, optimizer_state_to_numpy(optimizer),
                        {"iteration": it, "best": best, "elapsed_seconds": round(elapsed(), 1)})

    def elapsed() -> float:
        """Wall seconds of meta-training so far, over all resumed parts (pre-training not included)."""
        return elapsed_before + time.time() - t0

    def validate(it: int) -> dict:
        if c.regression:
            r = evaluate_regression(model, params, recipe, samplers.val, device, c.val_tasks, c.test_steps)
            return {"iteration": it, "val_mse": r["mse"], "val_ci95": r["ci95"], "elapsed_s": round(elapsed(), 1)}
        r = evaluate_classification(model, params, recipe, samplers.val, samplers.preprocess, device, c.val_tasks,
                                    c.test_steps, norm=spec.norm, batched=batched)
        return {"iteration": it, "val_accuracy": r["accuracy_pct"], "val_ci95": r["ci95_pct"],
                "elapsed_s": round(elapsed(), 1)}

    def reached_target(vrow: dict) -> bool:
        if not c.stop_at:
            return False
        return vrow["val_mse"] <= c.stop_at if c.regression else vrow["val_accuracy"] >= c.stop_at

    def better(row: dict) -> bool:
        if best is None:
            return True
        return row["val_mse"] < best if c.regression else row["val_accuracy"] > best

    metrics = open(os.path.join(rundir, "metrics.jsonl"), "a") if job.is_main else None
    share = job.share(c.meta_batch)
    # on CPU, tasks run in parallel threads (one per torch thread): faster than threads inside operators
    workers = torch.get_num_threads() if getattr(device, "type", str(device)) == "cpu" else 1
    chunks = Chunks()  # batched: tasks per vectorised computation, halved for the run on out-of-memory
    progress = progress_bar(quiet)
    t0, done_tasks, train_seconds = time.time(), 0, 0.0
    stop_reason, done = None, start
    may_stop = bool(c.stop_at or c.max_minutes)
    try:
        with progress:
            bar = progress.add_task("meta-training", total=c.iterations, completed=start, status="")
            for it in range(start, c.iterations):
                # rank 0 decides to stop (--stop-at, --max-minutes); every rank follows
                if may_stop and job.any(stop_reason is not None, f"the decision to stop before iteration {it + 1}"):
                    break
                if c.algorithm == "reptile":
                    # meta_gradient returns (phi - phi_k) / alpha; lr eps * alpha makes the update
                    # phi + eps * (phi_k - phi) of the paper, with eps annealed linearly to 0
                    for group in optimizer.param_groups:
                        group["lr"] = c.meta_lr * c.inner_lr * (1 - it / c.iterations)
                step_start = time.time()
                try:  # this rank's share of the iteration's tasks; every rank stops if one fails
                    tasks = sample_tasks([it * c.meta_batch + j for j in share])
                    chunk_before = chunks.size
                    grads, loss, acc = meta_gradient(c.algorithm, model, params, tasks, recipe, vectorize=batched,
                                                     workers=workers, chunks=chunks)
                    if chunks.size != chunk_before:
                        log(f"out of GPU memory at iteration {it + 1}: each meta-batch now runs in chunks of "
                            f"{chunks.size} tasks (the same gradient; a smaller --meta-batch avoids the retry)")
                    error = None
                except torch.cuda.OutOfMemoryError:  # the per-task loop: one task does not fit
                    grads, loss, acc = None, 0.0, 0.0
                    error = FastadaptError(f"out of GPU memory at iteration {it + 1} with one task at a time: lower "
                                           f"--ways, --shots, --query or --width, or train with --device cpu; "
                                           f"{last_good()}")
                except Exception as exc:
                    grads, loss, acc, error = None, 0.0, 0.0, exc
                grads, loss, acc = job.average(grads, loss, acc, len(share), error, params, f"iteration {it + 1}")
                if not math.isfinite(loss) or not all(torch.isfinite(g).all() for g in grads.values()):
                    raise Diverged(f"training diverged at iteration {it + 1} (loss {loss}): lower --meta-lr or "
                                   f"--inner-lr and train again; {last_good()}")
                optimizer.zero_grad(set_to_none=True)
                for k in names:
                    params[k].grad = grads[k]
                optimizer.step()
                done_tasks += c.meta_batch
                train_seconds += time.time() - step_start
                rate = done_tasks / max(train_seconds, 1e-9)  # sampling + meta-step, not validation
                if not job.is_main:
                    continue  # rank 0 alone logs, validates and checkpoints
                row = {"iteration": it + 1, "loss": round(loss, 5), "tasks_per_s": round(rate, 2),
                       "world_size": job.world_size}
                if not c.regression:
                    row["accuracy"] = round(100 * acc, 2)
                metrics.write(json.dumps(row) + "\n")
                status = f"loss {loss:.3f}" + ("" if c.regression else f" acc {100 * acc:5.1f}%") + f" {rate:.1f} tasks/s"
                done = it + 1
                validated = (it + 1) % c.val_every == 0 or it + 1 == c.iterations
                out_of_time = c.max_minutes and elapsed() >= 60 * c.max_minutes
                if validated or out_of_time:  # a run that stops ends with a validation and a checkpoint
                    vrow = validate(it + 1)
                    metrics.write(json.dumps(vrow) + "\n")
                    metrics.flush()
                    key = "val_mse" if c.regression else "val_accuracy"
                    if better(vrow):
                        best = vrow[key]
                        save_checkpoint(best_path, snapshot(it + 1), None, {"iteration": it + 1, "best": best, **vrow})
                    log(f"iteration {it + 1}: {status}, validation {key} {vrow[key]} ± {vrow['val_ci95']} (best {best})")
                    checkpoint(it + 1)
                    plot_curves(rundir)
                    if reached_target(vrow):
                        stop_reason = f"validation reached --stop-at {c.stop_at} at iteration {it + 1}"
                    elif out_of_time:
                        stop_reason = f"--max-minutes {c.max_minutes} reached at iteration {it + 1}"
                    if stop_reason and it + 1 < c.iterations:
                        log(f"stopping: {stop_reason}")
                elif (it + 1) % c.checkpoint_every == 0:
                    metrics.flush()
                    checkpoint(it + 1)
                progress.update(bar, advance=1, status=status)
            if c.iterations == 0:  # pre-training only: the pre-trained body is the model
                vrow = validate(0)
                metrics.write(json.dumps(vrow) + "\n")
                best = vrow["val_accuracy"]
                save_checkpoint(best_path, snapshot(0), None, {"iteration": 0, "best": best, **vrow})
                checkpoint(0)
                log(f"pre-trained body: validation accuracy {best} ± {vrow['val_ci95']}")
    finally:
        if metrics is not None:
            metrics.close()
    meta_seconds = round(elapsed(), 1)
    pretrain_seconds = _pretrain_seconds(rundir)
    summary = {"rundir": rundir, "iterations": done if stop_reason else c.iterations, "best": best,
               "stopped": stop_reason,
               "seconds": round(meta_seconds + pretrain_seconds, 1), "pretrain_seconds": pretrain_seconds,
               "meta_seconds": meta_seconds, "hardware": hardware(device),
               "world_size": job.world_size}
    if job.is_main:
        write_json(os.path.join(rundir, "summary.json"), summary)
    return summary


def _pretrain_seconds(rundir: str) -> float:
    path = os.path.join(rundir, "pretrain.npz")
    return float(load_checkpoint(path).progress.get("elapsed_seconds", 0.0)) if os.path.exists(path) else 0.0


def hardware(device) -> str:
    """What the run ran on, for the model card."""
    import platform

    where = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if getattr(device, "type", str(device)) == "cuda":
        where = f"{torch.cuda.get_device_name(device)}; " + where
    return where


def plot_curves(rundir: str) -> None:
    """curves.png: training loss/accuracy and validation score against iterations."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warn("matplotlib is not installed: no curves.png (pip install 'fastadapt[train]')")
        return
    rows = read_metrics(rundir)
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "val_ci95" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    its = [r["iteration"] for r in train_rows]
    window = max(1, len(its) // 50)
    smooth = lambda v: np.convolve(v, np.ones(window) / window, mode="valid")  # noqa: E731
    if train_rows:
        axes[0].plot(its[window - 1:], smooth([r["loss"] for r in train_rows]), label="train query loss")
    axes[0].set_xlabel("iteration")
    axes[0].set_title("meta-training loss")
    key = "val_mse" if val_rows and "val_mse" in val_rows[0] else "val_accuracy"
    if train_rows and "accuracy" in train_rows[0]:
        axes[1].plot(its[window - 1:], smooth([r["accuracy"] for r in train_rows]), label="train query accuracy")
    if val_rows:
        v = np.array([r[key] for r in val_rows])
        ci = np.array([r["val_ci95"] for r in val_rows])
        vi = [r["iteration"] for r in val_rows]
        axes[1].errorbar(vi, v, yerr=ci, marker="o", capsize=3, label=f"validation ({key})")
    axes[1].set_xlabel("iteration")
    axes[1].set_title("accuracy %" if key == "val_accuracy" else "validation MSE")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_atomic(os.path.join(rundir, "curves.png"), buffer.getvalue())
