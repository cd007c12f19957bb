"""The meta-training loop: sample tasks, meta-gradient, optimiser step, validate, checkpoint.

Task ``j`` of iteration ``i`` is ``sampler.task(i * meta_batch + j)``, so the data stream is a pure
function of the seed and a resumed run sees exactly the tasks an uninterrupted one would. Under torchrun
each process computes its share of those tasks (see distributed.py); rank 0 alone writes the run folder
(recorder.py: metrics, checkpoints, summary; plotting.py: curves.png).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import zipfile
from dataclasses import dataclass
from typing import Callable

import torch

from ..data.sources import data_location
from ..errors import FastadaptError
from ..progress import progress_bar
from ..models import ModelSpec, build_model
from . import distributed
from .algorithms import (Chunks, cosine_step, meta_gradient, multi_step_weights, out_of_gpu_memory, outer_optimizer,
                         reptile_step)
from .denormals import flushing_denormals
from .evaluate import AdaptationDiverged, evaluate_classification, evaluate_regression
from .inner_loop import InnerLoop, network_params
from .run_setup import (Samplers, batched_path, check_config, check_effect, describe_data, init_meta_params, make_samplers,
                    model_spec_of, recipe_of, resolve_device, task_stream)
from .recorder import Diverged, RunRecorder
from .run import (RESUMABLE, RunLock, TrainConfig, changed_classes, check_limits, config_path, has_checkpoint,
                  load_checkpoint, load_optimizer_state, read_config, read_split, remove_empty_run, remove_temp_files,
                  split_path, truncate_metrics, write_json)

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
            if k in PATH_FLAGS and _stored_path(k, mine[k]) == _stored_path(k, saved.get(k)):
                continue  # the same files, named from another folder or (a run from before absolute paths) relatively
            if k not in RESUMABLE and mine[k] != saved.get(k):
                raise FastadaptError(f"--resume continues {rundir} as it was started, but --{k.replace('_', '-')} "
                                     f"{mine[k]} differs from the run's {saved.get(k)}; drop the flag or use a new --out")
        if "iterations" in (given or ()) and mine["iterations"] != saved.get("iterations") and \
                (saved.get("algorithm") == "reptile" or saved.get("meta_lr_schedule") == "cosine"):
            # the schedule's position is iteration / iterations: a new total would jump it mid-run
            what = ("Reptile's outer step size" if saved.get("algorithm") == "reptile"
                    else "the meta learning rate (--meta-lr-schedule cosine)")
            raise FastadaptError(f"--iterations {mine['iterations']}: {what} anneals to 0 over the run's --iterations "
                                 f"{saved.get('iterations')}, so --resume cannot change it; drop --iterations, or "
                                 f"train longer into a new --out with --init-from {rundir}")
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
    # config.json: the same files from any working folder (evaluate RUN, --resume, export's training stages)
    return dataclasses.replace(c, **{k: _stored_path(k, getattr(c, k)) for k in PATH_FLAGS})


PATH_FLAGS = ("data", "init_from")


def _stored_path(flag: str, value):
    """A path flag as config.json stores it: absolute (--data's built-in names, and no --init-from, as they are)."""
    if flag == "data":
        return data_location(value)
    return os.path.abspath(value) if value else value


def load_initialisation(params: dict, source: str, c: TrainConfig) -> None:
    """Copy a run's best checkpoint (or a checkpoint file) into ``params``; architectures must match.
    Learned inner rates are not copied: they start at --inner-lr, as documented and as the bundle records."""
    path = os.path.join(source, "best.npz") if os.path.isdir(source) else source
    if not os.path.exists(path):
        raise FastadaptError(f"--init-from {source}: no checkpoint there (expected a run folder with best.npz)")
    if _is_bundle(path):
        raise FastadaptError(f"--init-from {source}: a .fadapt bundle; --init-from takes a run folder or a "
                             f"checkpoint .npz (its best.npz, last.npz or pretrain.npz), not a bundle")
    _check_source_config(os.path.dirname(os.path.abspath(path)), source, c)
    saved = load_checkpoint(path).params
    copy_params(network_params(params), saved, f"--init-from {source}",
                "use the same --arch/--width/--channels/--norm as that run")


def _is_bundle(path: str) -> bool:
    """Whether ``path`` is a zip holding manifest.json (a bundle), not a checkpoint."""
    try:
        with zipfile.ZipFile(path) as z:
            return "manifest.json" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _check_source_config(folder: str, source: str, c: TrainConfig) -> None:
    """--norm and --arch must match the source run's (when its config.json is readable): parameters of the
    same shapes would be copied silently into a network that computes something else."""
    try:
        theirs = read_config(folder)
    except FastadaptError:
        return  # a bare checkpoint file, or an unreadable config: the shapes are still checked
    for flag in ("arch", "norm"):
        if getattr(theirs, flag) != getattr(c, flag):
            raise FastadaptError(f"--init-from {source}: that run was trained with --{flag} {getattr(theirs, flag)}, "
                                 f"this one has --{flag} {getattr(c, flag)}; give --{flag} {getattr(theirs, flag)}")


def copy_params(params: dict, saved: dict, source: str, fix: str) -> None:
    """Copy checkpoint arrays into the model's parameters; a missing or wrong-shape one is a user error."""
    for k, v in params.items():
        if k not in saved or tuple(saved[k].shape) != tuple(v.shape):
            got = tuple(saved[k].shape) if k in saved else "missing"
            raise FastadaptError(f"{source}: parameter {k} is {got} there but {tuple(v.shape)} here; {fix}")
    with torch.no_grad():
        for k, v in params.items():
            v.copy_(torch.from_numpy(saved[k]))


def _all_finite(grads: dict) -> bool:
    """Whether every gradient is finite, as one check: on a GPU a check per tensor would make the host wait
    for the device once per parameter tensor, every iteration."""
    return bool(torch.isfinite(torch.cat([g.detach().reshape(-1) for g in grads.values()])).all())


def train(c: TrainConfig, rundir: str, resume: bool = False, quiet: bool = False, given: set | None = None,
          dist_timeout: float = distributed.DEFAULT_TIMEOUT_S) -> dict:
    """Meta-train into ``rundir``; returns a summary. ``given``: flags set explicitly (for --resume).

    Under torchrun (WORLD_SIZE > 1) every process calls this; ``dist_timeout``: seconds a collective
    waits for the other processes before the run stops.
    """
    job = distributed.setup(c.device, dist_timeout)
    lock = RunLock(rundir)
    try:
        with flushing_denormals():
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


@dataclass
class _Start:
    """What a run starts from: its resolved config, data, model, optimiser and, on --resume, progress."""

    c: TrainConfig
    device: torch.device
    samplers: Samplers
    sample_tasks: Callable  # task indices -> TaskTensors on the device (run_setup.task_stream)
    spec: ModelSpec
    recipe: InnerLoop
    model: torch.nn.Module
    params: dict
    optimizer: torch.optim.Optimizer
    start: int = 0
    best: float | None = None
    elapsed_before: float = 0.0


def _start(job: distributed.Job, c: TrainConfig, rundir: str, resume: bool, given: set | None, lock: RunLock,
           log) -> _Start:
    """Everything that reads files or data, before RUNDIR is written; every rank must succeed."""
    last_path, best_path = os.path.join(rundir, "last.npz"), os.path.join(rundir, "best.npz")
    asked = c
    check_limits(c)
    c = resolve_config(c, rundir, resume, given)  # reads only: bad flags create no folder
    check_config(c)
    if not resume:
        check_effect(c)
    pending = c.pretrain_epochs and not (resume and os.path.exists(last_path))  # a resumed run's pre-training is done
    job.check_config(c.meta_batch, c.pretrain_epochs if pending else 0)
    metrics = os.path.join(rundir, "metrics.jsonl")
    if os.path.isdir(metrics):  # else writing it fails as if the disk were full
        raise FastadaptError(f"{metrics} is a directory, not the run's metrics log; move it out of {rundir}, then "
                             f"run the command again")
    if job.is_main:
        # one writer per run folder: a second trainer stops here at once, naming the first; then
        # look again, under the lock, at what the folder holds
        lock.acquire()
        c = resolve_config(asked, rundir, resume, given)
        remove_temp_files(rundir)
    device = resolve_device(str(job.device) if job.active else c.device, c.tf32)  # CUDA: TF32 only if asked
    log(f"loading {describe_data(c)} ...")
    samplers = make_samplers(c)  # bad data fails here
    recorded = read_split(rundir) if resume and samplers.split is not None else None
    changed = recorded and changed_classes(recorded, samplers.split)
    if changed:  # the split moved: the rest of the run would train on classes that validation or test held
        raise FastadaptError(f"--resume: the classes of {c.data} changed since {rundir} started ({changed}), so "
                             f"they would split differently and the run would go on training on classes its "
                             f"validation or test parts held; restore the data as it was, or start a new run "
                             f"with another --out")
    spec = model_spec_of(c)
    model = build_model(spec).to(device)
    params = init_meta_params(model, c, device)
    s = _Start(c, device, samplers, task_stream(c, samplers, device), spec, recipe_of(c), model, params,
               outer_optimizer(c.algorithm, list(params.values()), c.meta_lr))
    if c.init_from and not (resume and os.path.exists(last_path)):
        load_initialisation(params, c.init_from, c)
        log(f"meta-parameters initialised from {c.init_from}")
    if resume and os.path.exists(last_path):
        fix = (f"copy {best_path} over it to resume from the best checkpoint (the optimiser state restarts), "
               f"or train again into a new --out")
        ckpt = load_checkpoint(last_path, fix)
        copy_params(params, ckpt.params, last_path, fix)
        if ckpt.optimizer_state is not None:
            load_optimizer_state(s.optimizer, ckpt.optimizer_state, device, last_path, fix)
        s.start, s.best = ckpt.progress["iteration"], ckpt.progress.get("best")
        s.elapsed_before = ckpt.progress.get("elapsed_seconds", 0.0)
        if c.iterations < s.start:  # else the summary and config would claim fewer iterations than were run
            raise FastadaptError(f"--iterations {c.iterations}: the run in {rundir} is already at iteration "
                                 f"{s.start}; --iterations is the run's total, so give {s.start} or more")
    return s


def _begin_folder(s: _Start, rundir: str, resume: bool, quiet: bool, log) -> None:
    """Rank 0, before the first iteration: the config, pre-training, and the logs of what is continued."""
    c, last_path = s.c, os.path.join(rundir, "last.npz")
    if not resume:  # reusing a folder whose run saved nothing: drop its logs
        for name in ("metrics.jsonl", "summary.json", "curves.png"):
            if os.path.exists(os.path.join(rundir, name)):
                os.unlink(os.path.join(rundir, name))
    write_json(config_path(rundir), c.to_dict())
    if s.samplers.split is not None and not (resume and os.path.exists(split_path(rundir))):
        write_json(split_path(rundir), s.samplers.split)  # what --resume and evaluate compare the data with
    if c.pretrain_epochs and not (resume and os.path.exists(last_path)):
        from .pretrain import pretrain_body

        pretrain_body(s.model, network_params(s.params), s.samplers.train.data, s.samplers.preprocess, c.pretrain_epochs, rundir,
                      c.seed, s.device, lr=c.pretrain_lr, resume=resume, quiet=quiet, augment=c.augment,
                      smoothing=c.pretrain_smoothing, schedule=c.pretrain_schedule)
    if resume:
        truncate_metrics(rundir, s.start)
        log(f"resuming {rundir} at iteration {s.start}/{c.iterations}" if os.path.exists(last_path) else
            f"{rundir} has no checkpoint yet: starting from iteration 0")


def _validate(s: _Start, batched: bool, iteration: int, record: RunRecorder) -> dict:
    """A metrics row of the validation score (accuracy % or MSE, and its 95% CI) at ``iteration``.

    Adaptation that diverges on a validation task stops the run, as a diverged meta-step does: its outputs
    are no score (NaN logits would count as chance), the model would fail on every device, and --resume
    cannot change the --inner-lr that caused it."""
    c, elapsed = s.c, record.elapsed()
    try:
        if c.regression:
            r = evaluate_regression(s.model, s.params, s.recipe, s.samplers.val, s.device, c.val_tasks, c.test_steps)
            return {"iteration": iteration, "val_mse": r["mse"], "val_ci95": r["ci95"], "elapsed_s": round(elapsed, 1)}
        r = evaluate_classification(s.model, s.params, s.recipe, s.samplers.val, s.samplers.preprocess, s.device,
                                    c.val_tasks, c.test_steps, norm=s.spec.norm, batched=batched)
    except AdaptationDiverged:
        raise Diverged(f"validation diverged at iteration {iteration}: adapting to a validation task ({c.test_steps} "
                       f"steps at --inner-lr {c.inner_lr:g}) gave non-finite outputs; lower --inner-lr and train "
                       f"again; {record.last_good()}") from None
    return {"iteration": iteration, "val_accuracy": r["accuracy_pct"], "val_ci95": r["ci95_pct"],
            "elapsed_s": round(elapsed, 1)}


def _train(job: distributed.Job, c: TrainConfig, rundir: str, resume: bool, quiet: bool, given: set | None,
           lock: RunLock) -> dict:
    quiet = quiet or not job.is_main
    log = (lambda *a: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    created, error, s = not os.path.isdir(rundir), None, None
    try:
        s = _start(job, c, rundir, resume, given, lock, log)
    except Exception as exc:
        error = exc
        if job.is_main and created and lock.file is not None:  # leave no empty folder for a run that never started
            remove_empty_run(rundir)
            lock.release()
    job.check(error, "start-up")
    c, device, params, optimizer = s.c, s.device, s.params, s.optimizer
    job.same(s.start, "the iteration to resume from")
    job.broadcast(params)
    if job.is_main:
        _begin_folder(s, rundir, resume, quiet, log)
    log(f"{c.algorithm} on {describe_data(c)}: {c.ways}-way {c.shots}-shot, {c.meta_batch} tasks/iteration, "
        f"{c.inner_steps} inner steps (lr {c.inner_lr}), device {device}"
        + (" (TF32 convolutions)" if device.type == "cuda" and c.tf32 else "")
        + f", {sum(p.numel() for p in params.values())} parameters"
        + (f", {job.world_size} processes x {c.meta_batch // job.world_size} tasks" if job.active else ""))
    batched, why = batched_path(c, device)
    log(f"meta-batch: {why}")

    share = job.share(c.meta_batch)
    # on CPU, tasks run in parallel threads (one per torch thread): faster than threads inside operators
    workers = torch.get_num_threads() if device.type == "cpu" else 1
    chunks = Chunks()  # batched: tasks per vectorised computation, halved for the run on out-of-memory
    progress = progress_bar(quiet)
    record = RunRecorder(rundir, c, s.best, s.elapsed_before, job.is_main, log)  # starts the clock
    done_tasks, train_seconds = 0, 0.0
    stop_reason, done = None, s.start
    may_stop = bool(c.stop_at or c.max_minutes)
    try:
        with progress:
            bar = progress.add_task("meta-training", total=c.iterations, completed=s.start, status="")
            for it in range(s.start, c.iterations):
                # rank 0 decides to stop (--stop-at, --max-minutes); every rank follows
                if may_stop and job.any(stop_reason is not None, f"the decision to stop before iteration {it + 1}"):
                    break
                if c.algorithm == "reptile":
                    reptile_step(optimizer, c.meta_lr, c.inner_lr, it, c.iterations)
                elif c.meta_lr_schedule == "cosine":
                    cosine_step(optimizer, c.meta_lr, it, c.iterations)
                step_start = time.time()
                try:  # this rank's share of the iteration's tasks; every rank stops if one fails
                    tasks = s.sample_tasks([it * c.meta_batch + j for j in share])
                    chunk_before = chunks.size
                    weights = (multi_step_weights(c.inner_steps, it, c.multi_step_loss)
                               if c.multi_step_loss and c.inner_steps > 1 else None)
                    grads, loss, acc = meta_gradient(c.algorithm, s.model, params, tasks, s.recipe, vectorize=batched,
                                                     workers=workers, chunks=chunks, step_weights=weights)
                    if chunks.size != chunk_before:
                        log(f"out of GPU memory at iteration {it + 1}: each meta-batch now runs in chunks of "
                            f"{chunks.size} tasks (the same gradient; a smaller --meta-batch avoids the retry)")
                    error = None
                except Exception as exc:
                    grads, loss, acc, error = None, 0.0, 0.0, exc
                    if out_of_gpu_memory(exc):  # the per-task loop (batching retries in chunks): one task does not fit
                        error = FastadaptError(f"out of GPU memory at iteration {it + 1} with one task at a time: "
                                               f"lower --ways, --shots, --query or --width, or train with --device "
                                               f"cpu; {record.last_good()}")
                grads, loss, acc = job.average(grads, loss, acc, len(share), error, params, f"iteration {it + 1}")
                if not math.isfinite(loss) or not _all_finite(grads):
                    raise Diverged(f"training diverged at iteration {it + 1} (loss {loss}): lower --meta-lr or "
                                   f"--inner-lr and train again; {record.last_good()}")
                optimizer.zero_grad(set_to_none=True)
                for k, v in params.items():
                    v.grad = grads[k]
                optimizer.step()
                done_tasks += c.meta_batch
                train_seconds += time.time() - step_start
                if not job.is_main:
                    continue  # rank 0 alone logs, validates and checkpoints
                rate = done_tasks / max(train_seconds, 1e-9)  # sampling + meta-step, not validation
                status = record.training_row(it + 1, loss, acc, rate, job.world_size)
                done = it + 1
                validated = (it + 1) % c.val_every == 0 or it + 1 == c.iterations
                out_of_time = c.max_minutes and record.elapsed() >= 60 * c.max_minutes
                if validated or out_of_time:  # a run that stops ends with a validation and a checkpoint
                    vrow = _validate(s, batched, it + 1, record)
                    record.validation(vrow, params, optimizer, f"iteration {it + 1}: {status}")
                    if c.stop_at and (vrow["val_mse"] <= c.stop_at if c.regression
                                      else vrow["val_accuracy"] >= c.stop_at):
                        stop_reason = f"validation reached --stop-at {c.stop_at} at iteration {it + 1}"
                    elif out_of_time:
                        # the limit counts every resumed part: a plain --resume would stop again at once
                        stop_reason = (f"--max-minutes {c.max_minutes:g} reached at iteration {it + 1}; to continue, "
                                       f"resume with a higher limit, e.g. --resume --max-minutes "
                                       f"{max(60, 2 * c.max_minutes):g}")
                    if it + 1 == c.iterations:
                        stop_reason = None  # the run is complete: there is nothing left to continue
                    elif stop_reason:
                        log(f"stopping: {stop_reason}")
                elif (it + 1) % c.checkpoint_every == 0:
                    record.checkpoint(it + 1, params, optimizer)
                progress.update(bar, advance=1, status=status)
            if c.iterations == 0 and job.is_main:  # pre-training only: the pre-trained body is the model
                record.validation(_validate(s, batched, 0, record), params, optimizer, "pre-trained body")
    finally:
        record.close()
    meta_seconds = round(record.elapsed(), 1)
    pretrain_seconds = _pretrain_seconds(rundir)
    summary = {"rundir": rundir, "iterations": done if stop_reason else c.iterations, "best": record.best,
               "stopped": stop_reason,
               "seconds": round(meta_seconds + pretrain_seconds, 1), "pretrain_seconds": pretrain_seconds,
               "meta_seconds": meta_seconds, "hardware": hardware(device),
               "world_size": job.world_size}
    if job.is_main:
        record.summary(summary)
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
