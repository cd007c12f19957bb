"""From a TrainConfig to the pieces of a run: data samplers, preprocessing, model, inner-loop recipe."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.sampler import Task, TaskSampler
from ..data.sinusoid import RegressionTask, SinusoidSampler
from ..data.sources import DEFAULT_VAL_CLASSES, PROTOCOLS, check_data, default_protocol, load_splits
from ..errors import FastadaptError, warn
from ..images import Preprocess, to_float
from ..models import ModelSpec, build_model
from ..models.networks import ARCHS, NORMS
from .algorithms import ALGORITHMS, TaskTensors
from .augment import AUGMENTS, augment
from .inner_loop import HEAD, HEAD_INITS, LEARNED_LRS, InnerLoop, initial_rates
from .run import TrainConfig, check_limits


def check_config(c: TrainConfig, here: bool = True) -> None:
    """Reject contradictory or impossible flag combinations before any work starts. ``here``: also that this
    machine can run it (a run folder's config.json is checked without: it may come from a GPU machine)."""
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
    if c.arch not in ARCHS:
        raise FastadaptError(f"--arch must be one of {', '.join(ARCHS)}, got '{c.arch}'")
    if c.head_init not in HEAD_INITS:
        raise FastadaptError(f"--head-init must be zero or prototype, got '{c.head_init}'")
    if c.head_scale != 1 and c.head_init != "prototype":
        raise FastadaptError(f"--head-scale scales the prototype head; add --head-init prototype or drop --head-scale "
                             f"(got {c.head_scale:g} with --head-init {c.head_init})")
    if c.augment not in AUGMENTS:
        raise FastadaptError(f"--augment must be one of {', '.join(AUGMENTS)}, got '{c.augment}'")
    if c.pretrain_schedule not in ("constant", "cosine"):
        raise FastadaptError(f"--pretrain-schedule must be constant or cosine, got '{c.pretrain_schedule}'")
    if c.meta_lr_schedule not in ("constant", "cosine"):
        raise FastadaptError(f"--meta-lr-schedule must be constant or cosine, got '{c.meta_lr_schedule}'")
    if c.algorithm == "reptile" and (c.learn_inner_lr or c.meta_lr_schedule != "constant" or c.multi_step_loss):
        raise FastadaptError("--algorithm reptile has its own schedule (its outer step anneals to 0), no "
                             "gradient for inner rates and no query loss per step; drop --learn-inner-lr / "
                             "--meta-lr-schedule / --multi-step-loss, or use maml, fomaml or anil")
    if c.regression and c.arch != "conv4":
        raise FastadaptError("--arch picks an image network; --data sinusoid trains the MAML regression MLP: drop --arch")
    if c.regression and c.augment != "none":
        raise FastadaptError("--augment distorts images; it does not apply to --data sinusoid")
    if c.channels not in (1, 3):
        raise FastadaptError(f"--channels must be 1 (grayscale) or 3 (RGB), got {c.channels}")
    if c.protocol not in PROTOCOLS:
        raise FastadaptError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got '{c.protocol}'")
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
    if c.device not in ("auto", "cpu", "cuda"):
        raise FastadaptError(f"--device must be auto, cpu or cuda, got '{c.device}'")
    if here and c.device == "cuda" and not torch.cuda.is_available():
        raise FastadaptError("--device cuda: no CUDA GPU is visible to torch here; use --device cpu or auto")
    if here:
        check_data(c.data)  # a missing path or a FIFO fails now, before the run folder and its lock exist


# Image settings the sinusoid MLP and its samplers never read, and the values that mean "not set": the field
# default, and older defaults that run folders still hold (norm "layer", and "stretch" before --fit existed)
IMAGE_ONLY = {"norm": ("instance", "layer"), "width": (64,), "image_size": (28,), "channels": (1,),
              "rotations": (True,), "invert": (True,), "fit": ("pad", "stretch"), "val_classes": (DEFAULT_VAL_CLASSES,)}
PRETRAIN_ONLY = ("pretrain_lr", "pretrain_schedule", "pretrain_smoothing")


def check_effect(c: TrainConfig) -> None:
    """Flags that would be recorded and do nothing: refused (a warning for the harmless --tf32). Only for a new
    run: run folders saved before these checks still read (evaluate, export) and resume (their flags are fixed)."""
    # as typed: a boolean at False is --no-rotations / --no-invert
    flag = lambda k: ("--no-" if getattr(c, k) is False else "--") + k.replace("_", "-")  # noqa: E731
    if c.multi_step_loss and c.inner_steps == 1:  # trainer: no step weights with a single step
        raise FastadaptError("--multi-step-loss weighs the query loss after each inner step and --inner-steps 1 "
                             "has one; drop --multi-step-loss or raise --inner-steps")
    unused = [flag(k) for k in PRETRAIN_ONLY if not c.pretrain_epochs and getattr(c, k) != getattr(TrainConfig, k)]
    if unused:
        fix = "" if c.regression else " or add --pretrain-epochs E"
        raise FastadaptError(f"pre-training runs only with --pretrain-epochs, so {' / '.join(unused)} would do "
                             f"nothing: drop {'them' if len(unused) > 1 else 'it'}{fix}")
    if c.regression:
        for k, unset in IMAGE_ONLY.items():
            if getattr(c, k) not in unset:
                raise FastadaptError(f"{flag(k)} configures the image models and data; --data sinusoid trains the "
                                     f"MAML regression MLP: drop {flag(k)}")
    if c.tf32 and (c.device == "cpu" or c.device == "auto" and not torch.cuda.is_available()):
        warn("--tf32 only changes CUDA convolutions; this run trains on the CPU, where it has no effect")


def batched_path(c: TrainConfig, device) -> tuple:
    """(batched, why): whether each meta-batch is one vectorised computation (``meta_gradient(vectorize=
    True)``) or a per-task loop, and the reason, for the log line at the start of a run.

    Automatic (``c.batched`` None): batched on CUDA, where the per-task loop leaves the GPU waiting on
    kernel launches; the loop on a CPU, where it is faster (algorithms.meta_gradient).
    """
    if c.batched is not None:
        return c.batched, "batched tasks (--batched)" if c.batched else "per-task loop (--no-batched)"
    if torch.device(device).type == "cuda":
        return True, "batched tasks (automatic on CUDA: one computation per meta-batch; --no-batched for the loop)"
    threads = torch.get_num_threads()
    return False, (f"per-task loop on {threads} thread{'s' if threads > 1 else ''} (automatic on a CPU, where it "
                   f"is faster than batching; --batched forces batching)")


def resolve_device(name: str, tf32: bool = False) -> torch.device:
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)
    if device.type == "cuda":
        cuda_precision(tf32)
    return device


def cuda_precision(tf32: bool) -> None:
    """True float32 on CUDA unless ``tf32`` (--tf32). torch lets cuDNN convolutions use TF32 (10-bit mantissa)
    by default, and which kernels use it differs between the batched and the per-task path (measured on an
    H200: batched 3.5e-4 relative off the float64 result, the loop 1e-6), so results would depend on the
    path. TF32 changes numerics, so it is opt-in; on an H200 the batched trainer ran 1.0-1.6x faster with
    it (two runs on separate machine starts)."""
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # matrix products: float32 always (not measured with TF32)


def recipe_of(c: TrainConfig) -> InnerLoop:
    if c.regression:
        return InnerLoop(steps=c.inner_steps, lr=c.inner_lr, adapt="all", loss="mse", head_init="learned")
    return InnerLoop(steps=c.inner_steps, lr=c.inner_lr, adapt="head" if c.algorithm == "anil" else "all",
                     loss="cross_entropy", head_init=c.head_init, head_scale=c.head_scale)


def model_spec_of(c: TrainConfig) -> ModelSpec:
    if c.regression:
        return ModelSpec(name="mlp", in_features=1, hidden=(40, 40), norm="none")
    return ModelSpec(name=c.arch, channels=c.channels, image_size=c.image_size, width=c.width, norm=c.norm)


def preprocess_of(c: TrainConfig) -> Preprocess | None:
    if c.regression:
        return None
    return Preprocess(size=c.image_size, channels=c.channels, invert=c.invert, fit=c.fit)


def init_meta_params(model, c: TrainConfig, device) -> dict:
    """Fresh meta-parameters (seeded): the body's, plus a learned head for regression, plus the inner
    rates (every one at --inner-lr) with --learn-inner-lr."""
    torch.manual_seed(c.seed)
    fresh = build_model(model_spec_of(c))
    params = {k: v.detach().clone() for k, v in fresh.named_parameters()}
    if c.regression:
        head = torch.nn.Linear(fresh.feature_dim, 1)
        params["head.weight"], params["head.bias"] = head.weight.detach().clone(), head.bias.detach().clone()
    if c.learn_inner_lr:
        adapted = recipe_of(c).adapted_names({**params, **dict.fromkeys(HEAD)})
        params[LEARNED_LRS] = initial_rates(c.inner_steps, len(adapted), c.inner_lr, next(iter(params.values())))
    return {k: v.to(device).requires_grad_() for k, v in params.items()}


@dataclass
class Samplers:
    train: object
    val: object
    preprocess: Preprocess | None
    split: dict | None = None  # the class names of each part ("train", "val", "test"; no rotated copies)


def make_samplers(c: TrainConfig) -> Samplers:
    if c.regression:
        return Samplers(SinusoidSampler(c.shots, c.query, c.seed), SinusoidSampler(c.shots, 100, c.seed + 1), None)
    spec = preprocess_of(c)
    # the split leaves every part at least --ways classes, or says how many classes --ways needs
    splits = load_splits(c.data, c.protocol, c.seed, c.val_classes, c.rotations, spec, ways=c.ways)
    train = TaskSampler(splits.train, c.ways, c.shots, c.query, c.seed, where="training classes")
    val = TaskSampler(splits.val, c.ways, c.shots, c.query, c.seed + 1, where="validation classes")
    base = splits.train.names[:len(splits.train) // 4] if c.rotations else splits.train.names  # rotations follow
    return Samplers(train, val, spec, {"train": list(base), "val": list(splits.val.names),
                                       "test": list(splits.test.names)})


def to_tensors(task, preprocess: Preprocess | None, device, ways: int) -> TaskTensors:
    """A sampled task (uint8 images or regression arrays) -> tensors on the training device."""
    if isinstance(task, RegressionTask):
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        return TaskTensors(t(task.support_x), t(task.support_y), t(task.query_x), t(task.query_y), 1)
    assert isinstance(task, Task)
    x = lambda a: torch.from_numpy(to_float(a, preprocess)).to(device)  # noqa: E731
    y = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return TaskTensors(x(task.support_x), y(task.support_y), x(task.query_x), y(task.query_y), ways)


class DeviceTasks:
    """A TaskSampler's tasks, a batch of them at a time, assembled where the training runs.

    On a GPU the sampler's images are held there once as uint8 and a batch of tasks is gathered with
    one index and normalised there. On a CPU (or when the images would take over a quarter of the GPU's
    free memory) they stay on the host, gathered and normalised with numpy (``to_float``, single-threaded:
    torch's threads only slow this small element-wise work down on a busy CPU) and copied over in one go.

    Task ``i`` is ``sampler.choose(i)``'s images, exactly the images and labels of ``sampler.task(i)``
    and normalised with the same float32 operations as ``to_tensors``, so the task stream stays a pure
    function of (seed, task index) whichever way it is built.
    """

    def __init__(self, sampler: TaskSampler, preprocess: Preprocess, device, augment_kind: str = "none"):
        self.sampler, self.preprocess, self.device = sampler, preprocess, torch.device(device)
        self.augment_kind = augment_kind
        images = sampler.data.images
        self.first = np.cumsum([0] + [len(x) for x in images[:-1]])  # each class's first row in the copy
        flat = np.concatenate(images)
        self.on_device = self.device.type != "cpu" and _fits(flat.nbytes, self.device)
        self.images = torch.from_numpy(flat).to(self.device) if self.on_device else flat
        as_tensor = lambda v: torch.tensor(v, dtype=torch.float32, device=self.device).view(-1, 1, 1)  # noqa: E731
        self.mean, self.std = as_tensor(preprocess.mean), as_tensor(preprocess.std)
        labels = torch.arange(sampler.ways, device=self.device)
        self.support_y = labels.repeat_interleave(sampler.shots)
        self.query_y = labels.repeat_interleave(sampler.query)

    def tasks(self, indices) -> list:
        """Tasks ``indices`` of the sampler as TaskTensors on the device (views of one gathered tensor)."""
        s, n = self.sampler, len(indices)
        rows = np.stack([self.first[classes][:, None] + picks for classes, picks in map(s.choose, indices)])
        # every task's support rows (class by class), then every task's query rows: both halves are views
        rows = np.concatenate([rows[:, :, :s.shots].reshape(-1), rows[:, :, s.shots:].reshape(-1)])
        if self.on_device:
            x = self.images.index_select(0, torch.from_numpy(rows).to(self.device))
            x = ((x.float() / 255.0) - self.mean) / self.std
        else:
            x = torch.from_numpy(to_float(self.images[rows], self.preprocess)).to(self.device)
        split = n * s.ways * s.shots
        support = x[:split].view(n, s.ways * s.shots, *x.shape[1:])
        query = x[split:].view(n, s.ways * s.query, *x.shape[1:])
        if self.augment_kind != "none":  # each task's distortions drawn from (seed, task index): resumable
            support, query = (torch.stack([augment(part[b], self.augment_kind, [s.seed, 9, int(i), half],
                                                   self.preprocess.mean, self.preprocess.std)
                                           for b, i in enumerate(indices)]) for half, part in enumerate((support, query)))
        return [TaskTensors(support[b], self.support_y, query[b], self.query_y, s.ways) for b in range(n)]


def _fits(nbytes: int, device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= free // 4


def task_stream(c: TrainConfig, samplers: Samplers, device):
    """The training tasks: a function from task indices to a list of TaskTensors on ``device``."""
    if c.regression:
        return lambda indices: [to_tensors(samplers.train.task(i), None, device, 1) for i in indices]
    return DeviceTasks(samplers.train, samplers.preprocess, device, c.augment).tasks


def describe_data(c: TrainConfig) -> str:
    if c.regression:
        return "sinusoid regression tasks"
    return f"{c.data} (protocol {default_protocol(c.data) if c.protocol == 'auto' else c.protocol})"
