"""Server-side commands: train, evaluate, export. torch is imported inside the commands that need it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from . import app, check_out
from ..outputs import check_inputs
from ..errors import FastadaptError
from ..manifest import printable

SERVER_PANEL = "On the server (pip install 'fastadapt\\[train]')"


def _need_torch(command: str):
    try:
        import torch  # noqa: F401
    except ImportError:
        raise FastadaptError(f"'fastadapt {command}' needs the training extra: pip install 'fastadapt[train]'") from None


@app.command(rich_help_panel=SERVER_PANEL)
def train(
    out: str = typer.Option(..., "--out", help="Run folder: config, checkpoints, metrics.jsonl, curves.png."),
    data: Optional[str] = typer.Option(None, help="An Omniglot folder (holding images_background.zip and "
                             "images_evaluation.zip), a folder or zip of class folders, 'synthetic' (drawn glyphs, "
                             "no download) or 'sinusoid' (the MAML regression family). \\[default: synthetic]"),
    protocol: Optional[str] = typer.Option(None, help="lake | vinyals (Omniglot), split (70/10/20 of the classes), "
                                           "auto: lake for Omniglot, split otherwise. \\[default: auto]"),
    algorithm: Optional[str] = typer.Option(None, help="maml (second order) | fomaml | reptile | anil (head-only "
                                            "inner loop). \\[default: maml]"),
    ways: Optional[int] = typer.Option(None, help="Classes per task (N). \\[default: 5]"),
    shots: Optional[int] = typer.Option(None, help="Support images per class (K). \\[default: 1; sinusoid 10]"),
    query: Optional[int] = typer.Option(None, help="Query images per class. \\[default: 15; sinusoid 10]"),
    inner_steps: Optional[int] = typer.Option(None, help="SGD steps of the inner loop. \\[default: 3]"),
    inner_lr: Optional[float] = typer.Option(None, help="Inner-loop learning rate alpha. \\[default: 0.4; sinusoid 0.01]"),
    eval_inner_steps: Optional[int] = typer.Option(None, help="Inner steps at validation/evaluation; 0 = --inner-steps."),
    meta_batch: Optional[int] = typer.Option(None, help="Tasks per meta-update. \\[default: 16; sinusoid 25]"),
    meta_lr: Optional[float] = typer.Option(None, help="Outer learning rate beta (Adam), or Reptile's initial "
                                            "outer step size epsilon (annealed linearly to 0). \\[default: 1e-3; reptile 1.0]"),
    iterations: Optional[int] = typer.Option(None, help="Meta-updates. \\[default: 1000]"),
    seed: Optional[int] = typer.Option(None, help="Seeds the model init, the class splits and the task stream. \\[default: 0]"),
    device: Optional[str] = typer.Option(None, help="auto (CUDA when present) | cpu | cuda. \\[default: auto]"),
    batched: Optional[bool] = typer.Option(None, "--batched/--no-batched", help="Compute each meta-batch as one "
                                           "batched computation (all tasks through each layer at once), or task by task. \\[default: batched on "
                                           "CUDA, task by task on a CPU, where that is faster]"),
    tf32: Optional[bool] = typer.Option(None, "--tf32/--no-tf32", help="CUDA: let convolutions use TF32 (a 10-bit "
                                        "mantissa): faster batched training on NVIDIA Ampere or newer (an H200: 1.0-1.6x), "
                                        "results no longer true float32. \\[default: off]"),
    head_init: Optional[str] = typer.Option(None, help="How the per-task head starts: zero | prototype (class-mean "
                                            "features). Both work for any number of classes. \\[default: zero]"),
    head_scale: Optional[float] = typer.Option(None, help="Prototype head only: its rows and biases times this (a softmax "
                                               "temperature). Below 1 when the body's feature distances are large, e.g. "
                                               "0.1 when meta-training from a pre-trained body (--init-from). \\[default: 1]"),
    norm: Optional[str] = typer.Option(None, help="instance | layer (both per-sample, non-transductive) | batch (batch statistics, transductive) | none. \\[default: instance]"),
    arch: Optional[str] = typer.Option(None, help="The network: conv4 (4 x conv, norm, ReLU, pool: the papers' "
                                       "backbone) | resnet12 (4 residual blocks of widths w, 2w, 4w, 5w, averaged "
                                       "into 5w features). \\[default: conv4]"),
    width: Optional[int] = typer.Option(None, help="Conv4: filters per layer; resnet12: w, the first block's "
                                        "filters. \\[default: 64]"),
    image_size: Optional[int] = typer.Option(None, help="Square input size in pixels. \\[default: 28]"),
    channels: Optional[int] = typer.Option(None, help="1 (grayscale) or 3 (RGB). \\[default: 1]"),
    val_every: Optional[int] = typer.Option(None, help="Validate (and checkpoint) every N iterations. \\[default: 100]"),
    val_tasks: Optional[int] = typer.Option(None, help="Validation tasks per validation. \\[default: 100]"),
    val_classes: Optional[int] = typer.Option(None, help="Training classes held out for validation: N exactly, or left out "
                                            "(the default 100) 10% of the classes, at most 100; at least --ways. "
                                            "\\[default: 100]"),
    checkpoint_every: Optional[int] = typer.Option(None, help="Save last.npz every N iterations. \\[default: 25]"),
    stop_at: Optional[float] = typer.Option(None, help="Stop once validation accuracy (%) reaches this, e.g. 95 "
                                            "(sinusoid: once validation MSE falls to it). \\[default: off]"),
    max_minutes: Optional[float] = typer.Option(None, help="Stop after this many minutes of meta-training, counted "
                                                "over all resumed parts (validated and checkpointed; to continue, "
                                                "--resume with a higher limit, e.g. --resume --max-minutes 60). "
                                                "\\[default: no limit]"),
    rotations: Optional[bool] = typer.Option(None, "--rotations/--no-rotations", help="Add 90/180/270 degree "
                                             "rotations of the train classes as new classes. \\[default: on]"),
    pretrain_epochs: Optional[int] = typer.Option(None, help="First pre-train the body as a plain classifier over "
                                                  "all training classes for this many epochs, then meta-train from it. "
                                                  "\\[default: 0]"),
    pretrain_lr: Optional[float] = typer.Option(None, help="Adam learning rate of pre-training. \\[default: 1e-3]"),
    pretrain_smoothing: Optional[float] = typer.Option(None, help="Label smoothing of the pre-training loss "
                                                       "(0 = plain cross-entropy). \\[default: 0]"),
    pretrain_schedule: Optional[str] = typer.Option(None, help="Pre-training learning rate: constant | cosine "
                                                    "(annealed to 0 over the epochs). \\[default: constant]"),
    augment: Optional[str] = typer.Option(None, help="Random distortions of training images (pre-training and "
                                          "meta-training tasks; never on the device): none | affine (small rotation, "
                                          "shear, scale, shift: characters) | photo (flip, shift, zoom, colour "
                                          "jitter). Seeded, so the task stream stays reproducible. \\[default: none]"),
    learn_inner_lr: Optional[bool] = typer.Option(None, "--learn-inner-lr/--fixed-inner-lr", help="Meta-learn one "
                                                  "inner learning rate per adapted tensor and step (MAML++), starting "
                                                  "at --inner-lr; the bundle carries them, so the device repeats them "
                                                  "(maml, fomaml, anil). \\[default: fixed]"),
    meta_lr_schedule: Optional[str] = typer.Option(None, help="Meta learning rate: constant | cosine (annealed to 0 "
                                                   "over --iterations, MAML++). \\[default: constant]"),
    multi_step_loss: Optional[int] = typer.Option(None, help="MAML++ multi-step loss: the query loss after every "
                                                  "inner step counts, annealed to mostly the last step over this many "
                                                  "iterations (maml, fomaml, anil); 0 = off. \\[default: 0]"),
    init_from: Optional[str] = typer.Option(None, help="Start from another run's best checkpoint (a run folder, "
                                            "e.g. a pre-training-only run) instead of a random initialisation."),
    invert: Optional[bool] = typer.Option(None, "--invert/--no-invert", help="Invert gray levels so dark strokes "
                                          "on a light background become bright on zero (drawings); --no-invert for "
                                          "photos. Recorded in the bundle, so the device does the same. \\[default: on]"),
    fit: Optional[str] = typer.Option(None, help="Non-square images: 'pad' (fit inside the square, pad with the "
                                      "border's colour), 'crop' (centre square) or 'stretch'. Recorded in the bundle, "
                                      "so the device does the same. \\[default: pad]"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint (a run "
                                "stopped by --max-minutes: give a higher --max-minutes too)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or log lines."),
    dist_timeout: float = typer.Option(300.0, help="Under torchrun: seconds a process waits for the others "
                                       "(each all-reduce; rank 0's validation) before the run stops with an error."),
):
    """Meta-train a model (MAML, FOMAML, Reptile or ANIL) into a run folder.

    Flags map one to one to the papers' hyper-parameters. A killed run continues with --resume and loses at
    most --checkpoint-every iterations. Example:

      fastadapt train --data ~/omniglot --algorithm fomaml --ways 5 --shots 1 --iterations 2000 --out runs/fo

    Data-parallel on several GPUs or machines: torchrun --nproc-per-node 4 -m fastadapt train ... (--meta-batch
    stays the global meta-batch and must be divisible by the number of processes).
    """
    # the flags set explicitly (None = not given); taken before any other local name exists
    given = {k: v for k, v in locals().items() if k not in ("out", "resume", "quiet", "dist_timeout") and v is not None}
    _need_torch("train")
    from ..meta_train.distributed import env_rank
    from ..meta_train.run import TrainConfig, check_flag, read_config
    from ..meta_train.trainer import train as run_training

    config = TrainConfig.with_defaults(**given, command=["fastadapt"] + sys.argv[1:])  # type- and range-checked
    check_flag("--dist-timeout", dist_timeout, 1.0, 7 * 24 * 3600.0)
    check_run_out(out, [config.data if config.data not in ("synthetic", "sinusoid") else None, config.init_from or None])
    created = not os.path.lexists(out)
    try:
        summary = run_training(config, out, resume=resume, quiet=quiet, given=set(given) | {"command"},
                               dist_timeout=dist_timeout)
    except KeyboardInterrupt:  # Typer turns it into a silent exit 130: say what was kept
        if env_rank() == 0:
            _interrupted(out, created)
        raise typer.Exit(130) from None
    if env_rank() != 0:
        return
    best = summary["best"]
    regression = read_config(out).regression  # the run's own --data: a plain --resume gives none
    typer.echo(f"done: {summary['iterations']} iterations in {summary['seconds']} s, best validation "
               f"{'MSE' if regression else 'accuracy %'} {best}; run folder {printable(out)}"
               + (f" (stopped: {summary['stopped']})" if summary.get("stopped") else ""))


def _interrupted(out: str, created: bool) -> None:
    """After Ctrl-C: advise --resume only where a checkpoint exists. The trainer removes a folder it
    created for a run that never started only on errors, so an interrupt while loading is handled here."""
    from ..meta_train.run import config_path, has_checkpoint, remove_empty_run

    if has_checkpoint(out):
        message = f"resume from the last checkpoint with: fastadapt train --out {printable(out)} --resume"
    elif os.path.exists(config_path(out)):
        message = "no checkpoint was saved yet; run the same command again to start over"
    else:
        if created:
            remove_empty_run(out)  # only the lock file: the run never began
        message = "nothing was saved; run the same command again to start over"
    print(f"interrupted; {message}", file=sys.stderr)


@app.command(rich_help_panel=SERVER_PANEL)
def evaluate(
    model: str = typer.Argument(..., help="A run folder (evaluated in torch), a .fadapt bundle or a built-in "
                                "model's name (characters, photos; a file or run folder of that name here comes "
                                "first), evaluated through the torch-free runtime on the same tasks."),
    data: Optional[str] = typer.Option(None, help="Dataset whose test classes to use; required for bundles. "
                                       "\\[default: a run folder's --data]"),
    protocol: str = typer.Option("auto", help="As for train; 'all' uses every class of --data as a test class. "
                                 "'auto': on the data the model was trained on, the split it was trained with "
                                 "(its test classes); another one warns."),
    ways: int = typer.Option(5, help="Classes per task (N)."),
    shots: Optional[int] = typer.Option(None, help="Support images per class (K). \\[default: 1; sinusoid: the run's]"),
    query: int = typer.Option(15, help="Query images per class; lower it if classes have fewer than shots+query images."),
    tasks: int = typer.Option(600, help="Number of unseen-class tasks."),
    seed: int = typer.Option(0, help="Task seed: the same seed gives the same tasks for a run folder and a bundle."),
    steps: Optional[int] = typer.Option(None, help="Inner steps. \\[default: the run's --eval-inner-steps / the bundle's recipe]"),
    lr: Optional[float] = typer.Option(None, help="Inner learning rate. \\[default: the meta-trained one]"),
    transductive: bool = typer.Option(False, "--transductive", help="Run folders: predict each task's queries as "
                                      "one batch (matters only for --norm batch models; per-sample norm, which "
                                      "bundles have, is never transductive)."),
    checkpoint: str = typer.Option("best", help="best | last (run folders only)."),
    batched: Optional[bool] = typer.Option(None, "--batched/--no-batched", help="Run folders: adapt to several "
                                           "tasks as one batched computation, or one task at a time. \\[default: "
                                           "batched on CUDA]"),
    safeguard: Optional[bool] = typer.Option(None, "--safeguard/--no-safeguard", help="Bundles: adapt as 'fastadapt "
                                             "adapt' does (safeguarded: steps that raise the support loss are not kept) "
                                             "or run the plain meta-trained recipe (the same numbers as the run "
                                             "folder's torch evaluation, task by task). Run folders: always the plain "
                                             "recipe. \\[default: safeguarded]"),
    colour: Optional[str] = typer.Option(None, "--colour", help="Bundles of colour models: adapt with the colour cue "
                                         "as 'fastadapt adapt' does ('auto') or without it ('off', the same numbers as "
                                         "the run folder's torch evaluation). \\[default: auto]", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a sentence."),
    record: bool = typer.Option(False, "--record", help="Bundles: also store the result in the bundle's manifest "
                                "(its model card; the file is rewritten atomically). Run folders always record "
                                "into RUNDIR/evaluations.jsonl."),
):
    """Few-shot accuracy on unseen classes: mean ± 95% CI (1.96·std/√n) over --tasks tasks.

    Works on a run folder (torch) and on an exported bundle (runtime only, no torch needed); with the same
    --data/--ways/--shots/--seed both see exactly the same tasks.
    """
    _check_evaluate_flags(data in (None, "sinusoid"), ways=ways, shots=shots, query=query, tasks=tasks, seed=seed,
                          steps=steps, lr=lr)
    from ..runtime.loading import BUILT_IN, model_path

    given = model
    world = os.environ.get("WORLD_SIZE", "1").strip()
    if world.isdigit() and int(world) > 1:  # under torchrun every process would evaluate and record the same tasks
        raise FastadaptError("evaluate runs in one process (each torchrun process would evaluate and record the same "
                             "tasks); run 'fastadapt evaluate' without torchrun")
    if model in BUILT_IN and not os.path.isdir(model):  # a built-in model's name (characters, photos): its shipped
        model = model_path(model)  # bundle, unless a file or a run folder of that name is here (as for --model)
    if os.path.isfile(model):
        from ..runtime import evaluate_bundle

        if record:
            _check_record(model, given)
        if data is None:
            raise FastadaptError("--data is required to evaluate a bundle (e.g. an Omniglot folder)")
        if batched is not None:
            raise FastadaptError("--batched/--no-batched apply to run folders (torch); a bundle is evaluated by "
                                 "the runtime one task at a time: drop the flag")
        if checkpoint != "best":
            raise FastadaptError(f"--checkpoint {printable(checkpoint)}: applies to run folders; a bundle holds the "
                                 f"one checkpoint it was exported from (fastadapt export RUN --checkpoint): drop the flag")
        if transductive:
            raise FastadaptError("--transductive applies to run folders with --norm batch; a bundle's norm is per "
                                 "sample, so each query is predicted on its own either way: drop the flag")
        evaluated = _model_identity(model) if record else None
        result = evaluate_bundle(model, data=data, protocol=protocol, ways=ways, shots=1 if shots is None else shots, query=query,
                                 tasks=tasks, seed=seed, steps=steps, lr=lr,
                                 safeguard=safeguard is not False, colour="auto" if colour is None else colour,
                                 progress=None if as_json else _task_progress(tasks))
        if record:
            from ..runtime.evaluate import record_evaluation

            if _model_identity(model) != evaluated:  # replaced during the evaluation: the result is not its
                raise FastadaptError(f"--record: {printable(given)} changed during the evaluation (another model "
                                     f"was written there); nothing was recorded: evaluate it again")
            record_evaluation(model, result)
    else:
        if safeguard or colour is not None:
            raise FastadaptError(f"--{'safeguard' if safeguard else 'colour'} applies to bundles (the runtime's "
                                 f"adaptation); a run folder is evaluated with the plain meta-trained recipe: drop the flag")
        _need_torch("evaluate RUNDIR")
        from ..meta_train.evaluate import evaluate_run

        result = evaluate_run(model, data=data, protocol=protocol, ways=ways, shots=shots, query=query, tasks=tasks,
                              seed=seed, steps=steps, lr=lr, transductive=transductive, checkpoint=checkpoint,
                              progress=None if as_json else _task_progress(tasks), batched=batched)
    _print_result(result, as_json)


def _check_record(path: str, given: str) -> None:
    """Refuse evaluate --record up front (before minutes of evaluation) where rewriting the bundle would harm it."""
    import zipfile

    from ..bundle import ZIP_ERRORS
    from ..runtime.loading import ASSETS, BUILT_IN
    from ..signing import SIGNATURES

    if os.path.dirname(os.path.realpath(path)) == os.path.realpath(ASSETS):  # by name or by its path
        where = f" (its path is the first line of 'fastadapt info {given}')" if given in BUILT_IN else ""
        raise FastadaptError(f"--record: {printable(given)} is a built-in model inside the installed fastadapt, "
                             f"which --record would rewrite; copy it to a file first{where}, then evaluate the "
                             f"copy with --record")
    check_out(path, "--record", "model.fadapt")  # the rewrite's rules (no link, a writable folder), checked now
    try:
        with zipfile.ZipFile(path) as archive:
            signed = SIGNATURES in archive.namelist()
    except ZIP_ERRORS:
        return  # not a readable bundle: the evaluation says why
    if signed:
        # the signature covers the manifest, which recording changes: the rewritten bundle would be unsigned
        raise FastadaptError(f"--record: {printable(given)} is signed ('fastadapt sign'), and recording the result "
                             f"rewrites it without its signature; record into an unsigned copy (the bundle before "
                             f"signing), then sign it again with 'fastadapt sign', or drop --record")


def _model_identity(path: str):
    """What makes the bundle at ``path`` the model it is: the SHA-256 of its graphs and parameters (its
    manifest's members), not the records that --record itself adds."""
    from ..bundle import read_bundle

    return read_bundle(path).manifest.get("members")


def check_run_out(out: str, inputs: list) -> None:
    """--out of train is a folder: not a file, not a link, and not inside (or equal to) what the run reads."""
    if os.fspath(out) == "-":  # by Unix convention stdout, which would otherwise become a folder named '-'
        raise FastadaptError("--out -: a run is a folder, not standard output; give a folder name such as runs/mine")
    if os.path.islink(out):
        raise FastadaptError(f"--out {out}: is a symbolic link; give the run folder's real path")
    if os.path.exists(out) and not os.path.isdir(out):
        raise FastadaptError(f"--out {out} is a file; pass a folder for the run")
    check_inputs(out, inputs, "--out")


def _check_evaluate_flags(regression: bool, **flags) -> None:
    """evaluate's numbers, within the same limits as the train flags they mirror (meta_train.run.LIMITS)."""
    from ..meta_train.run import LIMITS, POSITIVE, check_flag

    mirrors = {"ways": "ways", "shots": "shots", "query": "query", "tasks": "val_tasks", "seed": "seed",
               "steps": "eval_inner_steps", "lr": "inner_lr"}
    for name, value in flags.items():
        if value is not None:
            low, high = LIMITS[mirrors[name]]
            if name == "ways" and not regression:
                low = 2  # as train: 1 way is for --data sinusoid
            if name == "tasks":
                low = 2  # a confidence interval needs 2 (validation may use 1)
            check_flag(f"--{name}", value, low, high, positive=mirrors[name] in POSITIVE)


def _task_progress(total: int):
    from ..progress import lazy_reporter

    report = lazy_reporter("evaluating")
    return lambda done: report(done, total)


def _print_result(result: dict, as_json: bool) -> None:
    shown = {k: v for k, v in result.items() if k != "per_task_accuracy"}
    if as_json:
        typer.echo(json.dumps(shown))
    elif "mse" in result:
        typer.echo(f"MSE {result['mse']:.4f} ± {result['ci95']:.4f} (95% CI) over {result['tasks']} tasks, "
                   f"K={result['shots']}, {result['steps']} step{'' if result['steps'] == 1 else 's'}")
    else:
        typer.echo(f"{result['ways']}-way {result['shots']}-shot: {result['accuracy_pct']:.2f}% ± "
                   f"{result['ci95_pct']:.2f}% (95% CI) over {result['tasks']} tasks, {result['steps']} step{'' if result['steps'] == 1 else 's'}, "
                   f"{'transductive' if result['transductive'] else 'non-transductive'}"
                   + (", safeguarded" if result.get("safeguard") else "")
                   + (f", colour {result['colour']}" + (f" (used in {result['colour_used_pct']:.0f}% of the tasks)"
                                                          if result["colour"] == "auto" else "")
                      if "colour" in result else "")
                   + (f", adaptation {result['adapt_ms_median']:.1f} ms per task (median)" if "adapt_ms_median" in result else ""))


@app.command(rich_help_panel=SERVER_PANEL)
def export(
    rundir: str = typer.Argument(..., help="A run folder made by 'fastadapt train'; with --format onnx, an "
                                 "adapted .fadapt made by 'fastadapt adapt'."),
    out: str = typer.Option(..., "--out", help="Where to write the .fadapt bundle (with --format onnx: the .onnx "
                                               "file), atomically."),
    checkpoint: str = typer.Option("best", help="best | last."),
    sign: Optional[Path] = typer.Option(None, "--sign", help="Also sign the bundle with this private key (made by "
                                        "'fastadapt keygen'), for devices that require a trusted key."),
    fmt: str = typer.Option("fadapt", "--format", help="fadapt: a run folder -> a .fadapt bundle. onnx: an adapted "
                            ".fadapt (from 'fastadapt adapt') -> one standalone ONNX file for any onnxruntime, and "
                            "its preprocessing recipe beside it (OUT without .onnx + .preprocess.json)."),
):
    """Export a run as one self-contained .fadapt bundle for the torch-free runtime.

    The bundle holds the forward graph, the SGD-step graph, the meta-parameters and a manifest (recipe,
    preprocessing, provenance, evaluation results). Export checks itself: it adapts a sample task in
    onnxruntime and in torch and refuses to write if they differ by more than 1e-4 (relative to the values' size).

    With --format onnx: fastadapt export ADAPTED.fadapt --format onnx --out model.onnx (see README "Deploy
    without fastadapt"); checked against fastadapt's own predictions before writing.
    """
    if fmt != "fadapt" or os.path.isfile(rundir):
        from ..standalone import export_command

        return export_command(rundir, out, fmt, sign)
    key_pair = [sign, f"{sign}.pub"] if sign is not None else []
    check_out(out, "--out", "model.fadapt", inputs=[rundir, *key_pair])  # never over the run's files or the keys
    secret = None
    if sign is not None:  # read the key before the minutes of export, so a wrong path fails at once
        from ..signing import read_private_key

        secret = read_private_key(str(sign))
    _need_torch("export")
    from ..meta_train.export_run import export_run

    manifest = export_run(rundir, out, checkpoint, say=lambda stage: print(f"export: {stage} ...", file=sys.stderr,
                                                                          flush=True))
    size = os.path.getsize(out) / 1e6
    typer.echo(f"wrote {printable(out)} ({size:.2f} MB); runtime vs torch after {manifest['verification']['steps']} step{'' if manifest['verification']['steps'] == 1 else 's'}: "
               f"max abs diff {manifest['verification']['max_abs_diff']:.2e}")
    if secret is not None:
        from ..signing import sign_bundle

        typer.echo(f"signed {printable(out)} with key {sign_bundle(out, secret)}")
