"""From a TrainConfig to the pieces of a run: data samplers, preprocessing, model, inner-loop recipe."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.sampler import Task, TaskSampler
from ..data.sinusoid import RegressionTask, SinusoidSampler
from ..data.sources import default_protocol, load_splits
from ..errors import FastadaptError
from ..images import Preprocess, to_float
from ..models import ModelSpec, build_model
from ..models.networks import NORMS
from .algorithms import ALGORITHMS, Batch
from .inner_loop import HEAD_INITS, InnerLoop
from .run import TrainConfig, check_limits


def check_config(c: TrainConfig) -> None:
    """Reject contradictory or impossible flag combinations before any work starts."""
    if c.algorithm not in ALGORITHMS:
        raise FastadaptError(f"--algorithm must be one of {', '.join(ALGORITHMS)}, got '{c.algorithm}'")
    check_limits(c)  # every field's type and range (run.LIMITS); what follows are combinations
    if c.iterations == 0 and not c.pretrain_epochs:  # 0 with pre-training: the transfer-learning baseline
        raise FastadaptError("--iterations must be at least 1 (0 only with --pretrain-epochs)")
    if not c.regression and c.stop_at > 100:
        raise FastadaptError(f"--stop-at is a validation accuracy in percent (0-100), got {c.stop_at}")
    if c.pretrain_epochs and c.regression:
        raise FastadaptError("--pretrain-epochs needs classes to pre-train on; it does not apply to --data sinusoid")
    if c.norm not in NORMS:
        raise FastadaptError(f"--norm must be one of {', '.join(NORMS)}, got '{c.norm}'")
    if c.head_init not in HEAD_INITS:
        raise FastadaptError(f"--head-init must be zero or prototype, got '{c.head_init}'")
    if c.channels not in (1, 3):
        raise FastadaptError(f"--channels must be 1 (grayscale) or 3 (RGB), got {c.channels}")
    if c.protocol == "all":
        raise FastadaptError("--protocol all is for evaluation only (every class a test class); "
                             "train with --protocol split, lake or vinyals")
    if c.regression:
        if c.protocol not in ("auto", "split"):
            raise FastadaptError(f"--protocol {c.protocol} does not apply to --data sinusoid; drop --protocol")
        if c.algorithm == "anil":
            raise FastadaptError("--algorithm anil needs a classification dataset (its head is per-class); "
                                 "use maml, fomaml or reptile with --data sinusoid")
        if c.head_init not in ("zero", "learned"):
            raise FastadaptError("--head-init prototype needs classes; --data sinusoid uses a learned head")
    else:
        if c.head_init == "learned":
            raise FastadaptError("--head-init learned fixes the number of classes; use zero or prototype for "
                                 "classification so any number of classes works")
        if c.ways < 2:
            raise FastadaptError(f"--ways must be at least 2, got {c.ways}")
    if c.device not in ("auto", "cpu", "cuda"):
        raise FastadaptError(f"--device must be auto, cpu or cuda, got '{c.device}'")
    if c.device == "cuda" and not torch.cuda.is_available():
        raise FastadaptError("--device cuda: no CUDA GPU is visible to torch here; use --device cpu or auto")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def recipe_of(c: TrainConfig) -> InnerLoop:
    if c.regression:
        return InnerLoop(steps=c.inner_steps, lr=c.inner_lr, adapt="all", loss="mse", head_init="learned")
    return InnerLoop(steps=c.inner_steps, lr=c.inner_lr, adapt="head" if c.algorithm == "anil" else "all",
                     loss="cross_entropy", head_init=c.head_init)


def model_spec_of(c: TrainConfig) -> ModelSpec:
    if c.regression:
        return ModelSpec(name="mlp", in_features=1, hidden=(40, 40), norm="none")
    return ModelSpec(name="conv4", channels=c.channels, image_size=c.image_size, width=c.width, norm=c.norm)


def preprocess_of(c: TrainConfig) -> Preprocess | None:
    if c.regression:
        return None
    return Preprocess(size=c.image_size, channels=c.channels, invert=c.invert, fit=c.fit)


def init_meta_params(model, c: TrainConfig, device) -> dict:
    """Fresh meta-parameters (seeded): the body's, plus a learned head for regression."""
    torch.manual_seed(c.seed)
    fresh = build_model(model_spec_of(c))
    params = {k: v.detach().clone() for k, v in fresh.named_parameters()}
    if c.regression:
        head = torch.nn.Linear(fresh.feature_dim, 1)
        params["head.weight"], params["head.bias"] = head.weight.detach().clone(), head.bias.detach().clone()
    return {k: v.to(device).requires_grad_() for k, v in params.items()}


@dataclass
class Samplers:
    train: object
    val: object
    preprocess: Preprocess | None


def make_samplers(c: TrainConfig) -> Samplers:
    if c.regression:
        return Samplers(SinusoidSampler(c.shots, c.query, c.seed), SinusoidSampler(c.shots, 100, c.seed + 1), None)
    spec = preprocess_of(c)
    splits = load_splits(c.data, c.protocol, c.seed, c.val_classes, c.rotations, spec)
    if len(splits.val) < c.ways:
        raise FastadaptError(f"--ways {c.ways} is more than the {len(splits.val)} validation classes; "
                             f"raise --val-classes or lower --ways")
    train = TaskSampler(splits.train, c.ways, c.shots, c.query, c.seed, where="training classes")
    val = TaskSampler(splits.val, c.ways, c.shots, c.query, c.seed + 1, where="validation classes")
    return Samplers(train, val, spec)


def to_batch(task, preprocess: Preprocess | None, device, ways: int) -> Batch:
    """A sampled task (uint8 images or regression arrays) -> tensors on the training device."""
    if isinstance(task, RegressionTask):
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        return Batch(t(task.support_x), t(task.support_y), t(task.query_x), t(task.query_y), 1)
    assert isinstance(task, Task)
    x = lambda a: torch.from_numpy(to_float(a, preprocess)).to(device)  # noqa: E731
    y = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return Batch(x(task.support_x), y(task.support_y), x(task.query_x), y(task.query_y), ways)


def describe_data(c: TrainConfig) -> str:
    if c.regression:
        return "sinusoid regression tasks"
    return f"{c.data} (protocol {default_protocol(c.data) if c.protocol == 'auto' else c.protocol})"
