"""Optional first stage: pre-train the body as an ordinary classifier over all training classes.

Meta-learning from a random initialisation is slow on a CPU; starting it from a body that already
separates the training classes (the "plain transfer-learning baseline") gets far better accuracy per
minute. The classifier head used here is thrown away: meta-training then learns the initialisation for
the inner loop the device runs, starting from this body. Each epoch is checkpointed to pretrain.npz.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..data.classes import ImageClasses
from ..images import Preprocess, to_float
from ..progress import progress_bar
from .augment import augment as distort
from .run import load_checkpoint, load_optimizer_state, optimizer_state_to_numpy, save_checkpoint


def pretrain_body(model, params: dict, classes: ImageClasses, preprocess: Preprocess, epochs: int, rundir: str,
                  seed: int, device, lr: float = 1e-3, batch_size: int = 128, resume: bool = False,
                  quiet: bool = False, augment: str = "none", smoothing: float = 0.0,
                  schedule: str = "constant") -> None:
    """Train ``params`` (the body, in place) with a temporary linear classifier for ``epochs`` epochs.

    ``augment``: augment.AUGMENTS, drawn per batch from (seed, epoch, batch); ``smoothing``: label
    smoothing of the cross-entropy; ``schedule``: "constant" lr or "cosine" (annealed to 0 over all epochs).
    """
    path = os.path.join(rundir, "pretrain.npz")
    images = np.concatenate(classes.images)
    labels = np.concatenate([np.full(len(x), i, np.int64) for i, x in enumerate(classes.images)])
    torch.manual_seed(seed)
    head = torch.nn.Linear(model.feature_dim, len(classes)).to(device)
    trained = {**params, "w": head.weight, "b": head.bias}
    optimizer = torch.optim.Adam(list(trained.values()), lr=lr)
    start, elapsed = 0, 0.0
    if resume and os.path.exists(path):
        ckpt = load_checkpoint(path)
        with torch.no_grad():
            for k, v in trained.items():
                v.copy_(torch.from_numpy(ckpt.params[k]))
        load_optimizer_state(optimizer, ckpt.optimizer_state, device, path)
        start, elapsed = ckpt.progress["epoch"], ckpt.progress.get("elapsed_seconds", 0.0)
    log = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    batches = -(-len(images) // batch_size)
    recipe = _Recipe(augment, smoothing, schedule, lr, epochs * batches)
    with progress_bar(quiet) as progress:
        bar = progress.add_task("pre-training", total=epochs * batches, completed=start * batches, status="")
        for epoch in range(start, epochs):
            elapsed = _epoch(model, params, trained, optimizer, images, labels, preprocess, batch_size, seed, epoch,
                             device, rundir, path, lambda status: progress.update(bar, advance=1, status=status), log,
                             elapsed, recipe)


class _Recipe:
    """How each pre-training batch is trained: its augmentation, loss and learning rate."""

    def __init__(self, augment: str, smoothing: float, schedule: str, lr: float, total_batches: int):
        self.augment, self.smoothing, self.schedule, self.lr, self.total = augment, smoothing, schedule, lr, total_batches

    def lr_at(self, batch: int) -> float:
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * batch / self.total))
        return self.lr


def _epoch(model, params, trained, optimizer, images, labels, preprocess, batch_size, seed, epoch, device, rundir,
           path, step, log, elapsed: float, recipe: _Recipe) -> float:
    """One shuffled pass over all training images, then a checkpoint and a metrics row.

    ``elapsed``: pre-training seconds before this epoch; returns it including this epoch."""
    t0 = time.time()
    order = np.random.default_rng([seed, 7, epoch]).permutation(len(images))
    total_loss, correct = 0.0, 0
    batches = -(-len(order) // batch_size)
    for b, i in enumerate(range(0, len(order), batch_size)):
        idx = order[i:i + batch_size]
        x = torch.from_numpy(to_float(images[idx], preprocess)).to(device)
        x = distort(x, recipe.augment, [seed, 8, epoch, b], preprocess.mean, preprocess.std)
        y = torch.from_numpy(labels[idx]).to(device)
        feats = functional_call(model, {k: trained[k] for k in params}, (x,))
        logits = F.linear(feats, trained["w"], trained["b"])
        loss = F.cross_entropy(logits, y, label_smoothing=recipe.smoothing)
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr_at(epoch * batches + b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(idx)
        correct += (logits.argmax(1) == y).sum().item()
        step(f"epoch {epoch + 1} loss {loss.item():.3f}")
    elapsed += time.time() - t0
    row = {"iteration": 0, "pretrain_epoch": epoch + 1, "pretrain_loss": round(total_loss / len(order), 4),
           "pretrain_accuracy": round(100 * correct / len(order), 2)}
    with open(os.path.join(rundir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    save_checkpoint(path, {k: v.detach().cpu().numpy() for k, v in trained.items()},
                    optimizer_state_to_numpy(optimizer), {"epoch": epoch + 1, "elapsed_seconds": round(elapsed, 1)})
    log(f"pre-training epoch {epoch + 1}: loss {row['pretrain_loss']}, train accuracy "
        f"{row['pretrain_accuracy']}% ({time.time() - t0:.0f} s)")
    return elapsed
