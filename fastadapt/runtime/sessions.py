"""ONNX Runtime sessions for a bundle's two graphs (CPU provider), and how to call them.

The forward session is made when a bundle is loaded; the step session (larger, slower to
optimise) only when something adapts. Sessions are safe to call from several threads at once.

Threads: by default one per CPU core. Set ``FASTADAPT_THREADS=N`` to cap it, e.g. on a device that
shares its cores with other work. Prediction uses them inside each operator (onnxruntime's intra-op
threads); an SGD step instead runs chunks of the support set side by side, one thread each (see
``Graphs.step``), because a few dozen 28x28 images are too little work to split inside an operator.

Telemetry: official onnxruntime builds send usage events to Microsoft and keep a device identifier under
~/.cache unless ``ORT_DISABLE_TELEMETRY=1`` is set before onnxruntime starts. A device SDK should not do
that on its users' behalf, so fastadapt sets it (only if the program has not set it either way) before it
imports onnxruntime (``_onnxruntime``).
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import FastadaptError, warn
from ..manifest import printable
from ..onnx_wire import IR_VERSION, ir_version

# Most support images per step-graph call. Small chunks keep memory low (20-way 5-shot `fastadapt adapt`,
# 2 threads: peak RSS 190-210 MB with 8, 260-340 MB with 32; 160 MB with 32 on one thread) and were as
# fast or faster per image on 2 cores.
STEP_CHUNK = 8
# Most images per forward-graph call. The shots' features and the safeguard's last loss run over the whole
# support set: in one call, `fastadapt adapt` of 20-way 5-shot (32x32 default) peaked at 306-325 MB RSS; in
# calls of 32 images 284, of 16 239, of 8 222-236 (dev venv; 244 in the benchmarks' runtime-only venv), at the
# same speed and with the same losses.
FORWARD_CHUNK = 8


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_warned_threads = set()


def configured_threads() -> int:
    """FASTADAPT_THREADS (at most the CPU cores this process may use), else those cores."""
    cores = available_cores()
    value = os.environ.get("FASTADAPT_THREADS", "").strip()
    if not value:
        return cores
    try:
        threads = int(value)
    except ValueError:
        raise FastadaptError(f"FASTADAPT_THREADS must be a whole number >= 1, got '{value}'") from None
    if threads < 1:
        raise FastadaptError(f"FASTADAPT_THREADS must be a whole number >= 1, got '{value}'")
    if threads > cores:  # more threads than cores only adds contention (100000 hung thread creation)
        if value not in _warned_threads:
            _warned_threads.add(value)
            warn(f"FASTADAPT_THREADS={value} is more than the {cores} CPU core(s) available; using {cores}")
        return cores
    return threads


def _onnxruntime():
    """onnxruntime, imported with its telemetry off unless the program chose otherwise (module docstring)."""
    if "onnxruntime" not in sys.modules:  # once it is imported, the setting no longer counts
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    return onnxruntime


def _session_options(threads: int | None = None):
    """Options for a session with ``threads`` intra-op threads (default: ``configured_threads()``)."""
    ort = _onnxruntime()

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or configured_threads()
    options.inter_op_num_threads = 1  # the graphs are chains: parallelism lives inside the operators
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no optimiser chatter on the user's terminal
    # Idle worker threads sleep instead of spinning: on a device that shares its cores (and its
    # battery) spinning cost more than it saved in our measurements (2 busy cores, width-64 Conv4).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # No memory arena: it keeps the largest activations of every call reserved. Measured on 20-way
    # 5-shot adaptation: peak RSS 240 -> 155 MB, at the same speed.
    options.enable_cpu_mem_arena = False
    return options


def make_session(onnx_bytes: bytes, where: str, threads: int | None = None):
    ort = _onnxruntime()

    try:
        return ort.InferenceSession(onnx_bytes, _session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        stated = ir_version(onnx_bytes)
        if "ir version" in str(exc).lower() and stated is not None and stated > IR_VERSION:  # a newer exporter's
            raise FastadaptError(f"{printable(where)}: onnxruntime {ort.__version__} cannot load the graph, which is "
                                 f"ONNX IR version {stated} (fastadapt writes {IR_VERSION}); upgrade onnxruntime "
                                 f"(pip install -U onnxruntime) or re-export the bundle with this fastadapt") from None
        raise FastadaptError(f"{printable(where)}: onnxruntime cannot load the graph ({printable(first[:200])}); "
                             f"re-export the bundle with a matching fastadapt version") from None


# Subnormal floats (|x| < 1.2e-38) run 10-100x slower on x86 and change nothing a model can see. The
# photos model's SGD steps make them: 5-way 5-shot adaptation 0.66 s -> 0.17 s with them flushed to zero,
# the same losses. But flushing is a per-thread CPU mode, and onnxruntime's option for it sets that mode,
# once per process, on the thread that creates the process's first session; threads inherit it from the
# thread that starts them. Set on the caller's thread it would change the arithmetic of the whole host
# program (Hypothesis noticed). So a thread of our own creates that first session, and the step threads
# are started from it: only they flush. If the program made an onnxruntime session before fastadapt did,
# nothing flushes (the same results, slower).
_flush_lock = threading.Lock()
_flushing_starter = None  # one thread in flush-to-zero mode that starts the step threads


def _starter(onnx_bytes: bytes) -> ThreadPoolExecutor:
    global _flushing_starter
    with _flush_lock:
        if _flushing_starter is None:
            ort = _onnxruntime()

            def claim_flush_mode():
                options = _session_options(1)
                options.add_session_config_entry("session.set_denormal_as_zero", "1")
                try:
                    ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
                except Exception:  # a graph onnxruntime cannot load: make_session, next, says so in one line
                    pass

            _flushing_starter = ThreadPoolExecutor(1, thread_name_prefix="fastadapt-start")
            _flushing_starter.submit(claim_flush_mode).result()
        return _flushing_starter


def _forget_threads_in_child() -> None:
    """A forked child has none of its parent's threads: it starts its own (a submit to a dead pool waits forever)."""
    global _flush_lock, _flushing_starter
    _flush_lock, _flushing_starter = threading.Lock(), None


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_forget_threads_in_child)


def _step_threads(count: int, onnx_bytes: bytes) -> ThreadPoolExecutor:
    """``count`` threads for SGD steps, all started from the flushing starter thread (so they flush too)."""
    pool = ThreadPoolExecutor(count, thread_name_prefix="fastadapt-step")
    started = threading.Barrier(count)

    def start_all():  # each submit starts a thread while the others wait at the barrier
        for future in [pool.submit(started.wait) for _ in range(count)]:
            future.result()

    _starter(onnx_bytes).submit(start_all).result()
    return pool


def _shown(image_shape) -> str:
    """(1, 28, 28) -> "[batch, 1, 28, 28]"."""
    return f"[batch, {', '.join(map(str, image_shape))}]"


class Graphs:
    """The forward and step graphs of one bundle. ``forward`` and ``step`` take a parameter dict."""

    def __init__(self, forward_onnx: bytes, step_onnx: bytes, where: str):
        self.where = where
        self._step_onnx = step_onnx
        self._step = None
        self._pool = None
        self._pool_pid = None
        self._lock = threading.Lock()
        self.workers = configured_threads()
        _starter(forward_onnx)  # before this process's first session: see _starter
        self._forward = make_session(forward_onnx, f"{where} (forward.onnx)")
        self.forward_inputs = [i.name for i in self._forward.get_inputs()]
        self._check(self.forward_inputs[:1] == ["images"], "forward.onnx's first input is not 'images'")
        self.image_shape = self._image_shape("forward.onnx", self._forward)
        self._require_outputs("forward.onnx", self._forward, ["logits", "features"])

    def _check(self, ok: bool, what: str) -> None:
        if not ok:
            raise FastadaptError(f"{printable(self.where)}: {printable(what)}; the bundle does not follow the .fadapt "
                                 f"contract, re-export it")

    def expect_images(self, made: tuple) -> None:
        """At load: the manifest's preprocessing makes images of shape ``made`` (C, H, W); forward.onnx must take them
        (else onnxruntime's own error, naming graph internals, would come on first use)."""
        self._check(made == self.image_shape, f"forward.onnx takes images of shape {_shown(self.image_shape)}, the "
                                              f"manifest's preprocess makes {_shown(made)}")

    def _image_shape(self, graph: str, session) -> tuple:
        """(channels, size, size) of the graph's "images" input, which must be [batch, channels, size, size]: a
        symbolic batch (any number of images) and a fixed square image (see ``expect_images``)."""
        shape = session.get_inputs()[0].shape
        fits = (len(shape) == 4 and not isinstance(shape[0], int) and all(isinstance(d, int) for d in shape[1:])
                and shape[2] == shape[3])
        self._check(fits, f"{graph}'s 'images' input has shape {shape}, not [batch, channels, size, size]")
        return tuple(shape[1:])

    def _require_outputs(self, graph: str, session, names: list) -> None:
        outputs = [o.name for o in session.get_outputs()]
        missing = [name for name in names if name not in outputs]
        self._check(not missing, f"{graph} lacks the output(s) {', '.join(map(repr, missing))} (it has "
                                 f"{', '.join(map(repr, outputs)) or 'none'})")

    def feature_dim(self):
        """The feature width D from head.weight's declared shape (None when it is symbolic)."""
        for i in self._forward.get_inputs():
            if i.name == "head.weight" and len(i.shape) == 2 and isinstance(i.shape[1], int):
                return i.shape[1]
        return None

    def forward(self, images: np.ndarray, params: dict) -> tuple:
        """-> (logits (B, N), features (B, D)) as float32, FORWARD_CHUNK images per call."""
        feeds = {}
        for name in self.forward_inputs[1:]:
            if name not in params:
                self._check(False, f"forward.onnx needs parameter '{name}' that params.npz lacks")
            feeds[name] = params[name]
        images = np.ascontiguousarray(images, dtype=np.float32)
        outputs = [self._forward.run(["logits", "features"], {"images": images[i:i + FORWARD_CHUNK], **feeds})
                   for i in range(0, max(len(images), 1), FORWARD_CHUNK)]
        if len(outputs) == 1:
            return tuple(outputs[0])
        return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])

    @property
    def step_session(self):
        with self._lock:
            if self._step is None:
                # one intra-op thread: the parallelism is across chunks (see step)
                step = make_session(self._step_onnx, f"{self.where} (step.onnx)", threads=1)
                self._check_step(step)
                self.step_inputs = [i.name for i in step.get_inputs()]
                self.step_outputs = [o.name for o in step.get_outputs()]
                self.step_lr_shape = step.get_inputs()[2].shape  # []; [tensors] for learned rates
                self.updated = [name[4:] for name in self.step_outputs if name.startswith("new.")]
                self._step = step
            if self._pool_pid != os.getpid():  # first use, or a forked child (its parent's threads are gone)
                self._pool = _step_threads(self.workers, self._step_onnx)  # steps run there, even one chunk
                self._pool_pid = os.getpid()
            return self._step

    def _check_step(self, step) -> None:
        """The step graph takes what ``_step_once`` feeds it (images as forward.onnx does, labels, lr, parameters
        that forward.onnx takes too) and returns the loss and updated ("new.NAME") parameters of its inputs."""
        names = [i.name for i in step.get_inputs()]
        self._check(names[:3] == ["images", "labels", "lr"], "step.onnx's first inputs are not images, labels, lr")
        shape = self._image_shape("step.onnx", step)
        self._check(shape == self.image_shape,
                    f"step.onnx takes images of shape {_shown(shape)}, forward.onnx {_shown(self.image_shape)}")
        unknown = [name for name in names[3:] if name not in self.forward_inputs[1:]]
        self._check(not unknown, f"step.onnx takes inputs that forward.onnx does not: {unknown[:5]}")
        self._require_outputs("step.onnx", step, ["loss"])
        stray = [o.name for o in step.get_outputs()
                 if o.name != "loss" and not (o.name.startswith("new.") and o.name[4:] in names[3:])]
        self._check(not stray, f"step.onnx's outputs {stray[:5]} are neither 'loss' nor 'new.' + one of its inputs")

    def step(self, images: np.ndarray, labels: np.ndarray, lr: float, params: dict,
             class_balanced: bool = False) -> tuple:
        """One SGD step -> (loss, updated parameter dict). ``params`` is not modified.

        The support set runs in balanced chunks, several at once on ``self.workers`` threads, and
        never more than STEP_CHUNK images in one call, so memory stays that of a few chunks (20-way
        5-shot in one piece peaked at ~500 MB). It is the same step: the loss is a mean over images and
        each image's computation depends on that image alone (per-sample norm, the only kind export
        allows), so the gradient is the size-weighted mean of the chunks' gradients and
        p - lr * sum_c w_c g_c = sum_c w_c (p - lr * g_c), with w_c = n_c / B.

        ``class_balanced``: the loss is the mean over classes of each class's mean cross-entropy (equal to
        the plain mean when every class has as many images): chunks hold one class each and a chunk of
        n_c images of a class with n_k images weighs n_c / (n_k * classes).
        """
        session = self.step_session  # made (with the thread pool) on first use
        expected = self.step_lr_shape
        self._check(np.ndim(lr) == len(expected) and (not expected or not isinstance(expected[0], int)
                                                      or np.shape(lr)[0] == expected[0]),
                    f"step.onnx takes lr of shape {expected}, the manifest's inner_loop gives {list(np.shape(lr))} "
                    f"(learned_lrs rows must have one rate per adapted tensor)")
        n = len(images)
        if class_balanced:
            classes = np.unique(labels)
            parts, weights = [], []
            for k in classes:
                members = np.flatnonzero(labels == k)
                for part in np.array_split(members, -(-len(members) // STEP_CHUNK)):
                    parts.append(part)
                    weights.append(len(part) / (len(members) * len(classes)))
            return self._combine(session, images, labels, lr, params, parts, weights)
        chunks = -(-n // STEP_CHUNK)
        if self.workers > 1:  # a multiple of the threads, so none of them waits for a last odd chunk
            chunks = min(n, -(-chunks // self.workers) * self.workers)
        parts = np.array_split(np.arange(n), chunks)
        return self._combine(session, images, labels, lr, params, parts, [len(part) / n for part in parts])

    def _combine(self, session, images, labels, lr, params, parts: list, weights: list) -> tuple:
        """Run the step on each part (side by side) -> (sum_c w_c loss_c, sum_c w_c new_c)."""
        run = lambda part: self._step_once(session, images[part], labels[part], lr, params)  # noqa: E731
        results = list(self._pool.map(run, parts))
        loss, sums = 0.0, {}
        with np.errstate(all="ignore"):  # a diverging step (inf/NaN) is the caller's to judge, not a warning
            for weight, (part_loss, part_new) in zip(weights, results):  # a fixed order: independent of timing
                loss += weight * part_loss
                for name in self.updated:
                    sums[name] = sums.get(name, 0.0) + weight * part_new[name].astype(np.float64)
        return loss, {**params, **{k: v.astype(np.float32) for k, v in sums.items()}}

    def _step_once(self, session, images: np.ndarray, labels: np.ndarray, lr: float, params: dict) -> tuple:
        feeds = {"images": images, "labels": labels, "lr": np.asarray(lr, dtype=np.float32)}
        for name in self.step_inputs[3:]:
            feeds[name] = params[name]
        outputs = session.run(self.step_outputs, feeds)
        new = dict(params)
        loss = float("nan")
        for name, value in zip(self.step_outputs, outputs):
            if name == "loss":
                loss = float(value)
            elif name.startswith("new."):
                new[name[4:]] = value
        return loss, new
