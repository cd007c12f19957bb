"""A run directory: its config, its checkpoints (npz + JSON, never pickle) and its metrics.

RUNDIR/
  config.json      every flag of the run (+ the command line), written once at the start
  last.npz         latest checkpoint: meta-parameters, optimiser state, progress (JSON)
  best.npz         the checkpoint with the best validation score
  metrics.jsonl    one JSON object per logged iteration / validation
  curves.png       training and validation curves
Checkpoints are written to a temp file and renamed, so a kill never leaves a half-written one.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ..outputs import write_atomic
from ..errors import FastadaptError


@dataclass
class TrainConfig:
    data: str = "synthetic"
    protocol: str = "auto"
    algorithm: str = "maml"
    ways: int = 5
    shots: int = 1
    query: int = 15
    inner_steps: int = 3
    inner_lr: float = 0.4
    eval_inner_steps: int = 0  # 0: same as inner_steps
    meta_batch: int = 16
    meta_lr: float = 1e-3
    iterations: int = 1000
    seed: int = 0
    device: str = "auto"
    head_init: str = "zero"
    norm: str = "instance"
    width: int = 64
    image_size: int = 28
    channels: int = 1
    val_every: int = 100
    val_tasks: int = 100
    val_classes: int = 100
    checkpoint_every: int = 25
    rotations: bool = True
    invert: bool = True  # dark strokes on a light background (Omniglot, sketches); False for photos
    pretrain_epochs: int = 0
    pretrain_lr: float = 1e-3
    stop_at: float = 0.0  # stop once validation accuracy (%) reaches it (regression: MSE falls to it); 0 = never
    max_minutes: float = 0.0  # stop after this much meta-training wall time; 0 = no limit
    init_from: str = ""  # a run folder (its best.npz) or a checkpoint .npz to start the meta-parameters from
    command: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def test_steps(self) -> int:
        return self.eval_inner_steps or self.inner_steps

    @property
    def regression(self) -> bool:
        return self.data == "sinusoid"


# Flags that may differ when resuming (they do not change what is being trained).
RESUMABLE = {"iterations", "device", "val_every", "val_tasks", "checkpoint_every", "command", "stop_at", "max_minutes"}


def config_path(rundir: str) -> str:
    return os.path.join(rundir, "config.json")


def read_config(rundir: str) -> TrainConfig:
    path = config_path(rundir)
    if not os.path.isdir(rundir):
        raise FastadaptError(f"{rundir}: no such run folder; pass the --out folder of a 'fastadapt train' run")
    if not os.path.exists(path):
        raise FastadaptError(f"{rundir}: not a training run (no config.json)")
    try:
        with open(path) as f:
            return TrainConfig.from_dict(json.load(f))
    except (json.JSONDecodeError, TypeError) as exc:
        raise FastadaptError(f"{path}: unreadable run config ({exc})") from None


def write_json(path: str, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


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


def load_checkpoint(path: str) -> Checkpoint:
    if not os.path.exists(path):
        raise FastadaptError(f"{path}: no checkpoint yet; the run has not saved one (train longer)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            params = {k: npz[f"param/{k}"] for k in meta["param_names"]}
            state = {}
            for key in npz.files:
                if key.startswith("opt/"):
                    _, index, name = key.split("/", 2)
                    state.setdefault(int(index), {})[name] = npz[key]
    except (OSError, ValueError, KeyError) as exc:
        raise FastadaptError(f"{path}: unreadable checkpoint ({exc}); use the other checkpoint of the run") from None
    optimizer = {"state": state, "param_groups": meta["optimizer_groups"]} if "optimizer_groups" in meta else None
    return Checkpoint(params, optimizer, meta["progress"])


def read_metrics(rundir: str) -> list:
    path = os.path.join(rundir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a kill: everything after it is lost anyway
    return rows


def truncate_metrics(rundir: str, iteration: int) -> None:
    """On resume, drop metrics logged after the checkpoint we resume from."""
    rows = [r for r in read_metrics(rundir) if r.get("iteration", 0) <= iteration]
    write_atomic(os.path.join(rundir, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in rows).encode())


def optimizer_state_to_numpy(optimizer) -> dict:
    """A torch optimiser's state_dict with tensors as numpy arrays (for save_checkpoint)."""
    import torch

    state = optimizer.state_dict()
    return {"param_groups": state["param_groups"],
            "state": {i: {k: (v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v))
                          for k, v in s.items()} for i, s in state["state"].items()}}


def load_optimizer_state(optimizer, saved: dict, device) -> None:
    import torch

    state = {int(i): {k: torch.from_numpy(np.array(v)).to(device if k != "step" else "cpu")
                      for k, v in s.items()} for i, s in saved["state"].items()}
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
