"""A run directory: its config, its checkpoints (npz + JSON, never pickle) and its metrics.

RUNDIR/
  config.json      every flag of the run (+ the command line), written once at the start
  last.npz         latest checkpoint: meta-parameters, optimiser state, progress (JSON)
  best.npz         the checkpoint with the best validation score
  metrics.jsonl    one JSON object per logged iteration / validation
  curves.png       training and validation curves
  train.lock       held (flock) by the one trainer writing the folder; holds its pid
Checkpoints are written to a temp file and renamed, so a kill never leaves a half-written one; a
temp file left by ``kill -9`` is removed by the next trainer of the folder (under the lock).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import socket
import zipfile
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ..data.classes import few
from ..data.sources import DEFAULT_SEED, DEFAULT_VAL_CLASSES, DEFAULT_WAYS
from ..bundle import FLOAT32, ZIP_ERRORS, _read_array
from ..outputs import write_atomic
from ..errors import FastadaptError, warn
from ..manifest import MAX_HEAD_SCALE, MIN_HEAD_SCALE

# Defaults that depend on the data or the algorithm (the field defaults below are for image classification
# with an Adam outer loop): MAML's sinusoid setting, and Reptile's outer step size epsilon (Nichol et al.).
SINUSOID_DEFAULTS = {"ways": 1, "shots": 10, "query": 10, "inner_lr": 0.01, "meta_batch": 25, "val_tasks": 100}
REPTILE_DEFAULTS = {"meta_lr": 1.0}


def defaults_for(data: str, algorithm: str) -> dict:
    """The fields whose default differs for ``data`` / ``algorithm`` from TrainConfig's field defaults."""
    return {**(SINUSOID_DEFAULTS if data == "sinusoid" else {}),
            **(REPTILE_DEFAULTS if algorithm == "reptile" else {})}


@dataclass
class TrainConfig:
    """Every setting of a run. ``TrainConfig.with_defaults(data=..., algorithm=..., ...)`` fills in the
    defaults that depend on the data and the algorithm (``defaults_for``), as ``fastadapt train`` does;
    the plain constructor uses the image-classification field defaults below for everything not given."""

    data: str = "synthetic"
    protocol: str = "auto"
    algorithm: str = "maml"
    ways: int = DEFAULT_WAYS
    shots: int = 1
    query: int = 15
    inner_steps: int = 3
    inner_lr: float = 0.4
    eval_inner_steps: int = 0  # 0: same as inner_steps
    meta_batch: int = 16
    meta_lr: float = 1e-3
    iterations: int = 1000
    seed: int = DEFAULT_SEED
    device: str = "auto"
    head_init: str = "zero"
    head_scale: float = 1.0  # the prototype head times this (inner_loop.InnerLoop.head_scale)
    norm: str = "instance"
    arch: str = "conv4"  # the image body: conv4 | resnet12 (models.networks)
    width: int = 64
    image_size: int = 28
    channels: int = 1
    val_every: int = 100
    val_tasks: int = 100
    val_classes: int = DEFAULT_VAL_CLASSES
    checkpoint_every: int = 25
    rotations: bool = True
    invert: bool = True  # dark strokes on a light background (Omniglot, sketches); False for photos
    fit: str = "pad"  # non-square images: images.FITS (run folders from before this field: "stretch")
    pretrain_epochs: int = 0
    pretrain_lr: float = 1e-3
    pretrain_smoothing: float = 0.0  # label smoothing of the pre-training cross-entropy
    pretrain_schedule: str = "constant"  # constant | cosine (annealed to 0 over the pre-training epochs)
    augment: str = "none"  # training-time distortions (augment.AUGMENTS), pre-training and meta-training tasks
    learn_inner_lr: bool = False  # meta-learn one inner rate per adapted tensor and step (MAML++ LSLR)
    meta_lr_schedule: str = "constant"  # constant | cosine (the meta learning rate annealed to 0 over --iterations)
    multi_step_loss: int = 0  # MAML++ multi-step loss annealed over this many iterations; 0 = off
    stop_at: float = 0.0  # stop once validation accuracy (%) reaches it (regression: MSE falls to it); 0 = never
    max_minutes: float = 0.0  # stop after this much meta-training wall time; 0 = no limit
    init_from: str = ""  # a run folder (its best.npz) or a checkpoint .npz to start the meta-parameters from
    batched: bool | None = None  # a meta-batch as one computation (task_batched); None: auto (on CUDA; run_setup.batched_path)
    tf32: bool = False  # CUDA: let cuDNN convolutions use TF32 (faster, 10-bit mantissa); off = true float32
    command: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config from flags or config.json: every value type- and range-checked (check_limits)."""
        if not isinstance(d, dict):
            raise FastadaptError(f"a run config must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in d.items() if k in names})
        check_limits(config)
        return config

    @classmethod
    def with_defaults(cls, **given) -> "TrainConfig":
        """A config from the settings ``given``, every other one at its default for the given data and
        algorithm (``defaults_for``); type- and range-checked like ``from_dict``."""
        fallback = cls()
        chosen = defaults_for(given.get("data", fallback.data), given.get("algorithm", fallback.algorithm))
        return cls.from_dict({**fallback.to_dict(), **chosen, **given})

    @property
    def test_steps(self) -> int:
        return self.eval_inner_steps or self.inner_steps

    @property
    def regression(self) -> bool:
        return self.data == "sinusoid"


# Every numeric flag of train (and, by name, of evaluate): its (low, high). The high ends keep a typo
# from hanging the machine or exhausting its memory; they lie far above any published few-shot setting.
# image_size: the Conv4 halves the image four times, so 16 is the least that leaves a feature map.
LIMITS = {
    "ways": (1, 1000), "shots": (1, 1000), "query": (1, 1000), "inner_steps": (1, 1000),
    "eval_inner_steps": (0, 1000), "meta_batch": (1, 1024), "iterations": (0, 10**8), "seed": (0, 2**32 - 1),
    "width": (1, 1024), "image_size": (16, 512), "channels": (1, 3), "val_every": (1, 10**8),
    "val_tasks": (1, 100_000), "val_classes": (0, 100_000), "checkpoint_every": (1, 10**8),
    "pretrain_epochs": (0, 10_000), "inner_lr": (0.0, 1e6), "meta_lr": (0.0, 1e6), "pretrain_lr": (0.0, 1e6),
    "pretrain_smoothing": (0.0, 0.99), "head_scale": (MIN_HEAD_SCALE, MAX_HEAD_SCALE),  # what a bundle may hold
    "stop_at": (0.0, 1e9), "max_minutes": (0.0, 1e7), "multi_step_loss": (0, 10**8),
}
POSITIVE = {"inner_lr", "meta_lr", "pretrain_lr"}  # learning rates: above their low end
MAX_TASK_IMAGES = 20_000  # ways * (shots + query): one task is held in memory at once


def check_flag(flag: str, value, low, high, positive: bool = False) -> None:
    """One numeric flag: an int where ``low`` is an int (else a finite number), within [low, high]."""
    integer = isinstance(low, int)
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise FastadaptError(f"{flag} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise FastadaptError(f"{flag} must be a finite number, got {value}")
    if value < low or value > high or (positive and value == low):
        lowest = f"above {low:g} and at most" if positive else f"from {low} to"
        highest = f"{high:g}" if isinstance(high, float) else str(high)  # --seed: 4294967295, not 4.29497e+09
        raise FastadaptError(f"{flag} must be {lowest} {highest}, got {value}")


def check_limits(c: TrainConfig) -> None:
    """Types and ranges of every field, before any work: a bad value fails in one line naming its flag.

    Combinations (an algorithm that needs classes, a head init that fits the data ...) are checked by
    run_setup.check_config.
    """
    from ..images import FITS

    if c.fit not in FITS:
        raise FastadaptError(f"--fit must be one of {', '.join(FITS)}, got {c.fit!r}")
    for f in fields(c):
        value, flag = getattr(c, f.name), "--" + f.name.replace("_", "-")
        if f.name in LIMITS:
            low, high = LIMITS[f.name]
            if f.name == "ways" and not c.regression:
                low = 2  # a classification task needs 2 classes; 1 is for --data sinusoid
            check_flag(flag, value, low, high, positive=f.name in POSITIVE)
        elif f.type in ("str", "bool") and type(value).__name__ != f.type:
            raise FastadaptError(f"{flag} must be a {'string' if f.type == 'str' else 'boolean'}, got {value!r}")
        elif f.name == "batched" and value is not None and not isinstance(value, bool):
            raise FastadaptError(f"--batched must be a boolean (or null: automatic), got {value!r}")
        elif f.name == "command" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise FastadaptError(f"command must be a list of strings, got {value!r}")
    if c.ways * (c.shots + c.query) > MAX_TASK_IMAGES:
        raise FastadaptError(f"--ways x (--shots + --query) is {c.ways * (c.shots + c.query)} images per task; "
                             f"at most {MAX_TASK_IMAGES}: lower --ways, --shots or --query")


# Flags that may differ when resuming (they do not change what is being trained; batched: only the
# floating-point summation order). --iterations only where no schedule anneals over it (trainer.resolve_config).
RESUMABLE = {"iterations", "device", "batched", "tf32", "val_every", "val_tasks", "checkpoint_every", "command", "stop_at", "max_minutes"}


def config_path(rundir: str) -> str:
    return os.path.join(rundir, "config.json")


def read_config(rundir: str) -> TrainConfig:
    path = config_path(rundir)
    if not os.path.isdir(rundir):
        raise FastadaptError(f"{rundir}: no such run folder; pass the --out folder of a 'fastadapt train' run")
    if not os.path.exists(path):
        raise FastadaptError(f"{rundir}: not a training run (no config.json)")
    try:
        with open(path, "rb") as f:
            saved = json.loads(f.read(1 << 20))  # a config is a few hundred bytes
        if isinstance(saved, dict):
            saved.setdefault("fit", "stretch")  # runs from before the field resized by stretching
        config = TrainConfig.from_dict(saved)
        from .run_setup import check_config  # (run_setup imports this module)

        check_config(config, here=False)  # choices and combinations: train wrote none that fail
        return config
    except (OSError, ValueError, TypeError, RecursionError, FastadaptError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        # the checks name flags ("--arch"); in the file they are fields ("arch")
        reason = re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), reason)
        raise FastadaptError(f"{path}: damaged run config ({reason}); fix that field, restore the file from a "
                             f"backup, or train again into a new --out") from None


def write_json(path: str, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


SPLIT_PARTS = ("train", "val", "test")


def split_path(rundir: str) -> str:
    """split.json: the class names of the run's training, validation and test parts, as the data was when the
    run started. The split is a function of the data's class list, so a folder that gains or loses a class
    splits differently: --resume and evaluate compare against this record."""
    return os.path.join(rundir, "split.json")


def read_split(rundir: str) -> dict | None:
    """The recorded split; None for a run from before it was recorded (nothing to compare with)."""
    path = split_path(rundir)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            split = json.load(f)
        if isinstance(split, dict) and all(isinstance(split.get(k), list) for k in SPLIT_PARTS):
            return split
    except (OSError, ValueError):
        pass
    raise FastadaptError(f"{path}: damaged record of the run's class split; restore it from a backup, or delete it "
                         f"to skip the check that the data's classes are the ones the run was trained on")


def changed_classes(recorded: dict, split: dict) -> str:
    """'' when the data's classes split as recorded; else what changed ('added: ...; removed: ...')."""
    if all(sorted(recorded[k]) == sorted(split[k]) for k in SPLIT_PARTS):
        return ""
    before, after = (set().union(*(map(str, d[k]) for k in SPLIT_PARTS)) for d in (recorded, split))
    added, removed = sorted(after - before), sorted(before - after)
    parts = ([f"added: {few(added)}"] if added else []) + ([f"removed: {few(removed)}"] if removed else [])
    return "; ".join(parts) or "the same classes, split otherwise"


def save_checkpoint(path: str, params: dict, optimizer_state: dict | None, progress: dict) -> None:
    """params: name -> array; optimizer_state: torch optimiser state_dict with tensors as arrays."""
    arrays = {f"param/{k}": np.asarray(v) for k, v in params.items()}
    meta = {"progress": progress, "param_names": list(params)}
    if optimizer_state is not None:
        meta["optimizer_groups"] = optimizer_state["param_groups"]
        for index, state in optimizer_state["state"].items():
            for key, value in state.items():
                arrays[f"opt/{index}/{key}"] = np.asarray(value)
    arrays["meta"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


@dataclass
class Checkpoint:
    params: dict
    optimizer_state: dict | None
    progress: dict


DAMAGED_FIX = "restore it from a backup, or use the run's other checkpoint (best.npz / last.npz)"


def load_checkpoint(path: str, fix: str = DAMAGED_FIX) -> Checkpoint:
    """Read a checkpoint (never unpickling); a damaged one is a FastadaptError naming it and ``fix``."""
    if not os.path.exists(path):
        raise FastadaptError(f"{path}: no checkpoint yet; the run has not saved one (train longer)")
    try:
        arrays = _read_npz(path)
        meta = json.loads(str(arrays.pop("meta")))
        params = {k: arrays.pop(f"param/{k}") for k in meta["param_names"]}
        state = {}
        for key, value in arrays.items():
            if not key.startswith("opt/"):
                raise ValueError(f"unexpected member {key[:80]!r}")
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
        progress = meta["progress"]
        _check_progress(progress)
        optimizer = None
        if "optimizer_groups" in meta:
            optimizer = {"state": state, "param_groups": meta["optimizer_groups"]}
            _check_optimizer(optimizer, list(params.values()))
        elif state:
            raise ValueError("optimiser state without its groups")
    # a damaged zip or .npy raises one of ZIP_ERRORS; a wrong layout gives Key/Type/AttributeError
    except ZIP_ERRORS + (TypeError, AttributeError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        raise FastadaptError(f"{path}: damaged checkpoint ({reason[:300]}); {fix}") from None
    return Checkpoint(params, optimizer, progress)


def _read_npz(path: str) -> dict:
    """The arrays of a checkpoint written by save_checkpoint: float32 ones (finite) and the JSON ``meta``
    string. Every .npy header is checked against its member's real size before anything is allocated:
    one declaring 10^12 elements would otherwise be allocated (bundle._read_array does the check)."""
    arrays = {}
    with zipfile.ZipFile(path) as npz:
        infos = npz.infolist()
        # np.savez stores its members: their sizes add up to at most the file's, which bounds every read
        if any(i.compress_type != zipfile.ZIP_STORED for i in infos) or \
                sum(i.file_size for i in infos) > os.path.getsize(path):
            raise ValueError("its members declare more bytes than the file holds")
        for info in infos:
            name = info.filename.removesuffix(".npy")
            if name in arrays or name == info.filename:
                raise ValueError(f"unexpected member {info.filename[:80]!r}")
            want = FLOAT32
            if name == "meta":  # a unicode string of the length its header declares
                with npz.open(info) as f:
                    header = np.lib.format.read_array_header_1_0 if np.lib.format.read_magic(f) == (1, 0) \
                        else np.lib.format.read_array_header_2_0
                    want = header(f)[2]
                if want.kind != "U":
                    raise ValueError(f"meta has dtype {want}, not a string")
            with npz.open(info) as f:
                arrays[name] = _read_array(f, info.file_size, name[:80], want)
    if "meta" not in arrays:
        raise KeyError("meta")
    return arrays


def _number(value, low: float = -math.inf) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value >= low


def _check_progress(progress) -> None:
    """The counters a resume continues from: the iteration (pretrain.npz: epoch) within its flag's limit,
    the best validation score so far and the elapsed seconds."""
    if not isinstance(progress, dict):
        raise TypeError("progress is not a JSON object")
    key, flag = ("epoch", "pretrain_epochs") if "epoch" in progress else ("iteration", "iterations")
    count = progress[key]
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= LIMITS[flag][1]:
        raise ValueError(f"{key} {count!r:.40}")
    for name, low in (("best", -math.inf), ("elapsed_seconds", 0)):
        value = progress.get(name)
        if value is not None and not _number(value, low):
            raise ValueError(f"{name} {value!r:.40}")


def _check_optimizer(saved: dict, params: list) -> None:
    """A torch optimiser state_dict of ``params``: groups that hold each parameter index once, and state
    tensors shaped like their parameter (Adam's step: a scalar), all with the same entries."""
    groups = saved["param_groups"]
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise TypeError("optimizer_groups is not a list of objects")
    indices = [i for g in groups for i in g["params"]]
    if not all(type(i) is int for i in indices) or sorted(indices) != list(range(len(params))):
        raise ValueError(f"optimiser groups hold parameters {indices!r:.80}, not 0 to {len(params) - 1}")
    for g in groups:
        for key, value in g.items():  # hyperparameters: numbers, flags, None or (betas) lists of numbers
            values = value if isinstance(value, list) and key != "params" else [value]
            if key != "params" and not all(v is None or isinstance(v, bool) or _number(v) for v in values):
                raise ValueError(f"optimiser setting {key[:40]!r} is {value!r:.40}")
        if not _number(g.get("lr"), 0):
            raise ValueError(f"optimiser learning rate {g.get('lr')!r:.40}")
    entries = {tuple(sorted(s)) for s in saved["state"].values()}
    if len(entries) > 1:
        raise ValueError("optimiser state entries differ between parameters")
    for index, s in saved["state"].items():
        if not 0 <= index < len(params):
            raise ValueError(f"optimiser state for parameter {index}, of {len(params)}")
        for name, value in s.items():
            shape = () if name == "step" else params[index].shape
            if value.shape != shape or (name == "step" and value < 0):
                raise ValueError(f"optimiser state {index}/{name} is {value.shape}, not {shape}")


def has_checkpoint(rundir: str) -> bool:
    """Whether a run folder holds any trained state (a folder without one can be reused)."""
    return any(os.path.exists(os.path.join(rundir, n)) for n in ("last.npz", "best.npz", "pretrain.npz"))


LOCK_NAME = "train.lock"


class RunLock:
    """One writer per run folder: an exclusive, non-blocking flock on RUNDIR/train.lock.

    The kernel releases it when the process dies (even by kill -9), so a stale lock file never blocks.
    The file holds the holder's pid and host, for the message the second trainer prints.
    """

    def __init__(self, rundir: str):
        self.rundir, self.file = rundir, None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; one writer per folder is then up to the user
            return
        path = os.path.join(self.rundir, LOCK_NAME)
        try:
            os.makedirs(self.rundir, exist_ok=True)
            f = open(path, "a+")
        except OSError as exc:
            raise FastadaptError(f"--out {self.rundir}: cannot create the run folder ({exc.strerror}); "
                                 f"choose a writable --out") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read(200).strip() or "another process"
            f.close()
            raise FastadaptError(f"--out {self.rundir}: another trainer is writing this run folder ({holder}); "
                                 f"wait for it to end, or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self.file = f

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing drops the flock
            self.file = None


def remove_empty_run(rundir: str) -> None:
    """Remove a run folder this process created if it holds nothing but the lock file."""
    try:
        if os.listdir(rundir) == [LOCK_NAME]:
            os.unlink(os.path.join(rundir, LOCK_NAME))
            os.rmdir(rundir)
    except OSError:
        pass  # someone else's now; leaving an empty folder is harmless (it can be reused)


def remove_temp_files(rundir: str) -> None:
    """Temp files of writes cut short by kill -9 (the holder of the lock is the only writer)."""
    for name in os.listdir(rundir):
        if name.endswith(".tmp") or name == "curves.tmp.png":
            try:
                os.unlink(os.path.join(rundir, name))
            except OSError:
                pass  # not ours to fight over; it is ignored anyway


def read_metrics(rundir: str) -> list:
    """The rows of RUNDIR/metrics.jsonl; damaged ones are left out (see _metric_rows)."""
    return _metric_rows(rundir)[0]


def _metric_rows(rundir: str) -> tuple:
    """(rows, how many lines were left out): a row is a JSON object with an integer iteration and numbers
    for values, as the trainer writes them; anything else (a line cut by a kill, an edit) is damage."""
    path = os.path.join(rundir, "metrics.jsonl")
    if not os.path.exists(path):
        return [], 0
    rows, dropped = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # the tail of a write cut by a kill: not damage, and no row to keep
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):  # JSON or UTF-8 damage
                row = None
            if isinstance(row, dict) and type(row.get("iteration")) is int and row["iteration"] >= 0 \
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row.values()):
                rows.append(row)
            else:
                dropped += 1
    return rows, dropped


def truncate_metrics(rundir: str, iteration: int) -> None:
    """On resume, drop metrics logged after the checkpoint we resume from, and any damaged rows."""
    rows, dropped = _metric_rows(rundir)
    path = os.path.join(rundir, "metrics.jsonl")
    if dropped:
        warn(f"{path}: left out {dropped} damaged line(s) (not a metrics row); the curves lack them")
    rows = [r for r in rows if r["iteration"] <= iteration]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def optimizer_state_to_numpy(optimizer) -> dict:
    """A torch optimiser's state_dict with tensors as numpy arrays (for save_checkpoint)."""
    import torch

    state = optimizer.state_dict()
    return {"param_groups": state["param_groups"],
            "state": {i: {k: (v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v))
                          for k, v in s.items()} for i, s in state["state"].items()}}


def load_optimizer_state(optimizer, saved: dict, device, path: str = "checkpoint", fix: str = DAMAGED_FIX) -> None:
    """Load ``saved`` (load_checkpoint's, already checked on its own) into ``optimizer``: it must have
    the optimiser's groups, with each setting of the kind the optimiser has (a number stays a number)."""
    import torch

    def kind(value):  # JSON gives lists for tuples (Adam's betas)
        return "number" if _number(value) else "list" if isinstance(value, (list, tuple)) else type(value).__name__

    mine = optimizer.state_dict()["param_groups"]
    for a, b in zip(mine, saved["param_groups"]):
        # settings one torch version lacks are filled in by torch; a shared one must keep its kind
        wrong = [k for k in set(a) & set(b) - {"params"} if kind(a[k]) != kind(b[k])]
        if wrong or len(a["params"]) != len(b["params"]):
            what = f"setting {wrong[0][:40]} is {b[wrong[0]]!r:.40}" if wrong else "a group of another size"
            raise FastadaptError(f"{path}: damaged checkpoint (optimiser {what}); {fix}")
    if len(mine) != len(saved["param_groups"]):
        raise FastadaptError(f"{path}: damaged checkpoint ({len(saved['param_groups'])} optimiser groups, "
                             f"not {len(mine)}); {fix}")
    state = {int(i): {k: torch.from_numpy(np.array(v)).to(device if k != "step" else "cpu")
                      for k, v in s.items()} for i, s in saved["state"].items()}
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
