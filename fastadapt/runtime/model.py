"""``Model`` (a meta-initialisation that can learn new classes) and ``AdaptedModel`` (one that has).

    model = fastadapt.load("omniglot.fadapt")          # kind "meta"
    adapted = model.adapt("shots/")                    # k SGD steps through step.onnx
    adapted.predict("query.png").label                 # -> "cat"
    adapted.save("cats-vs-dogs.fadapt")                # kind "adapted", reload with fastadapt.load
    adapted.add_classes({"bird": ["b1.png"]})          # re-adapts on the kept shots and the new ones
    adapted.export_onnx("model.onnx")                  # one ONNX file for any onnxruntime (standalone.py)

Both are immutable after construction, so one ``AdaptedModel`` may serve ``predict`` from many
threads at once (onnxruntime sessions are thread-safe).
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import tempfile
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

import numpy as np

from ..bundle import Bundle, save_bundle
from ..errors import FastadaptError, FastadaptWarning, warn
from ..images import Preprocess, is_image_source, polarity_warning, to_float, to_uint8
from ..manifest import MAX_LR, MAX_STEPS, printable  # the bounds of a bundle's recipe: a typo such as 10**12 would never end
from .adaptation import check_finite, check_zero_head, choose_steps, run_steps, softmax
from . import colour as colour_cue
from .head import head_scale_of, init_head, support_features
from .describe import describe_bundle, model_card
from .sessions import Graphs
from .shots import Shots, _folder_classes, dict_classes, load_shots, refuse_stacked_array
from . import unknown as unknown_detection

# Images per forward call when predicting: one, so that an image's answer is bit-for-bit the same whatever
# else is predicted with it (onnxruntime picks kernels by batch size: batches of 2..64 moved logits by up
# to 1.8e-4 against one image alone). Batching did not make prediction faster per image on 2 cores.
PREDICT_CHUNK = 1
TOP = 3  # predict's default number of classes in Prediction.top (fastadapt predict --top has the same)
LOW_LOO_ACCURACY = 0.5  # steps="auto": below this leave-one-shot-out accuracy, warn that the shots are unusual


def _good_for(model) -> str:
    """What the model is for, in a few words: the first sentence of its model card's intended use (the
    shipped models carry one), else its training data and input size."""
    intended = (model._manifest.get("model_card") or {}).get("intended_use")
    if isinstance(intended, str) and intended.strip():
        first = intended.strip().split(". ")[0].rstrip(".")
        if first[:1].isupper() and not first[1:2].isupper():  # "Handwritten ..." -> "handwritten ..." (not "MNIST")
            first = first[0].lower() + first[1:]
        return f"{first} (its model card: 'fastadapt info')"
    spec = model.preprocess
    data = (model._manifest.get("provenance") or {}).get("data")
    return (f"images like its training data{f' ({data})' if isinstance(data, str) else ''}, seen as "
            f"{spec.size}x{spec.size} {'grayscale' if spec.channels == 1 else 'colour'} (see 'fastadapt info')")


def _loss(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def _stored_colour_mode(info: dict) -> str:
    """The colour mode an adapted model was adapted with (adaptation["colour"]["mode"]); "auto" if unreadable."""
    stored = info.get("colour")
    mode = stored.get("mode") if isinstance(stored, dict) else None
    return mode if mode in colour_cue.MODES else "auto"


def _meta_source(adaptation: dict) -> tuple:
    """(CLI --model value, load() argument, note) naming the meta model an adapted one came from: a built-in's
    name when its parameters are the shipped model's (the bundle records the file's name only, and a built-in's
    file is inside the package), else that file name. A file named like the built-in in the current folder
    would be read for that name (loading.model_path), so then the shipped file's path, and a note saying why."""
    from ..bundle import read_bundle
    from .loading import ASSETS, BUILT_IN  # here: loading imports this module

    source = adaptation.get("from") if isinstance(adaptation.get("from"), dict) else {}
    path, sha = source.get("path"), source.get("params_sha256")
    for name, file in BUILT_IN.items():
        if path == file and sha:
            try:
                if read_bundle(os.path.join(ASSETS, file)).manifest.get("members", {}).get("params.npz") == sha:
                    if not os.path.isfile(name):
                        return name, f'"{name}"', ""
                    shipped = printable(os.path.join(ASSETS, file))
                    return (shipped, "" if name == "characters" else f"'{shipped}'",  # load() is always the default
                            f" (not '{printable(name)}': the file of that name in this folder would be read instead)")
            except FastadaptError:  # the shipped file is missing or damaged: name the file
                pass
    path = printable(path or "META.fadapt")
    return path, f"'{path}'", ""


def _steps_argument(steps, recipe_steps: int) -> int | str:
    """``steps`` as given by the API or the CLI (a string there) -> an int in 0..MAX_STEPS, or "auto"."""
    if steps is None:
        return recipe_steps
    if isinstance(steps, str):
        text = steps.strip().lower()
        if text == "auto":
            return "auto"
        if not (text.isascii() and text.isdigit()):  # "²".isdigit() is true, and int() refuses it
            raise FastadaptError(f"{{steps}} must be a whole number >= 0 or 'auto', got '{steps}'", "steps")
        steps = int(text)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise FastadaptError(f"{{steps}} must be a whole number >= 0 or 'auto', got {steps!r}", "steps")
    if not 0 <= steps <= MAX_STEPS:
        raise FastadaptError(f"{{steps}} must be between 0 and {MAX_STEPS} (the recipe is {recipe_steps}), got {steps}",
                             "steps")
    return int(steps)


def _lr_argument(lr, recipe_lr) -> float:
    """``lr`` as given (any real number type, numpy's included) -> a positive finite float."""
    value = recipe_lr if lr is None else lr
    if isinstance(value, (bool, str)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 < _as_float(value) <= MAX_LR:
        raise FastadaptError(f"{{lr}} must be a positive number up to {MAX_LR:g}, got {value!r:.40}"
                             + ("" if lr is not None else " from the model's manifest; re-export it"), "lr")
    return float(value)


def _as_float(value) -> float:
    """A real number as a float; NaN when it has none (10**400 overflows)."""
    try:
        return float(value)
    except OverflowError:
        return math.nan


def _check_progress(progress) -> None:
    """A ``progress`` that cannot be called as progress(done, total) is refused before any work (else its
    TypeError would come after the whole adaptation)."""
    if progress is None:
        return
    if not callable(progress):
        raise FastadaptError(f"{{progress}} must be a function progress(done, total), got {progress!r:.60}", "progress")
    try:
        signature = inspect.signature(progress)
    except (TypeError, ValueError):  # some builtins have none: called as given
        return
    try:
        signature.bind(0, 0)
    except TypeError:
        name = getattr(progress, "__name__", type(progress).__name__)
        raise FastadaptError(f"{{progress}} is called as progress(done, total), but {printable(name)}{signature} "
                             f"cannot take those two arguments; give it two parameters", "progress") from None


def _array_labels(labels, ways: int, count: int) -> np.ndarray:
    """adapt_arrays' labels -> int64 (count,), each in 0..ways-1 and every class given an image."""
    if count == 0:
        raise FastadaptError("adapt_arrays: got no images; give at least one image per class")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.ndim != 1:  # 0.9 would silently become class 0
        raise FastadaptError(f"adapt_arrays: labels must be whole numbers 0..{ways - 1}, got {labels.dtype} "
                             f"values of shape {labels.shape}; give one label per image")
    if len(labels) != count:
        raise FastadaptError(f"adapt_arrays: got {count} images but {len(labels)} labels; give one label per image")
    if labels.min() < 0 or labels.max() >= ways:
        raise FastadaptError(f"adapt_arrays: labels must be 0..{ways - 1} (one per class), got "
                             f"{labels.min() if labels.min() < 0 else labels.max()}")
    empty = np.flatnonzero(np.bincount(labels, minlength=ways) == 0)
    if len(empty):
        raise FastadaptError(f"adapt_arrays: class {int(empty[0])} has no images (no label {int(empty[0])}); give "
                             f"every class at least one image")
    return np.ascontiguousarray(labels, dtype=np.int64)


def _check_top(top) -> int:
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise FastadaptError(f"{{top}} must be a whole number >= 1, got {top!r}", "top")
    return int(top)


@dataclass(frozen=True)
class Prediction:
    """The answer for one image: the closest class, its probability, the ``top`` most likely classes,
    whether the image was rejected as none of the classes (``unknown``) and its in-set ``score``.

    >>> p = fastadapt.load().adapt("examples/shots").predict("examples/queries/star/star_1.png", top=2)
    >>> p.label, p["label"], len(p.top), p.unknown
    ('star', 'star', 2, False)
    """

    label: str  # the closest class, also when unknown
    probability: float
    top: tuple = ()  # ((label, probability), ...), most likely first; a tuple, so a Prediction is hashable
    unknown: bool = False  # rejected as none of the classes (only when predict(..., unknown=...) asks)
    score: float | None = None  # in-set score, higher = more likely one of the classes (see runtime/unknown.py)

    def to_dict(self) -> dict:
        """The prediction as plain JSON types: {"label", "probability", "top": [{"label", "probability"}],
        "unknown", "score"} (what ``fastadapt predict --json`` prints per image).

        >>> answer = fastadapt.load().adapt("examples/shots").predict("examples/queries/star/star_1.png")
        >>> sorted(answer.to_dict())
        ['label', 'probability', 'score', 'top', 'unknown']
        """
        return {"label": self.label, "probability": self.probability,
                "top": [{"label": label, "probability": p} for label, p in self.top],
                "unknown": self.unknown, "score": self.score}

    def __getitem__(self, key):  # dict-style access: prediction["label"]
        return self.to_dict()[key]


def _preprocessed(images, preprocess: Preprocess, what: str) -> np.ndarray:
    """Images given already preprocessed (``adapt_arrays``, ``scores``) -> float32 (B, C, H, W) of the
    model's shape, all finite; else one line naming what was wrong (onnxruntime's own would name graph
    internals, and NaN would come back as NaN probabilities)."""
    shape = (preprocess.channels, preprocess.size, preprocess.size)
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[1:] != shape \
            or images.dtype.kind not in "fiu":
        got = f"shape {images.shape}, {images.dtype}" if isinstance(images, np.ndarray) else type(images).__name__
        raise FastadaptError(f"{what} takes preprocessed images, a float32 array (B, {', '.join(map(str, shape))}) "
                             f"made by fastadapt.images.to_float; got {got}")
    images = np.ascontiguousarray(images, dtype=np.float32)
    if not np.isfinite(images).all():
        raise FastadaptError(f"{what}: the images hold NaN or inf values")
    return images


class _NoClasses(FastadaptError, AttributeError):
    """A meta model's ``classes``: the user's mistake (a FastadaptError), and for attribute lookups such as
    hasattr an attribute it does not have."""


def _read_only(array) -> np.ndarray:
    """A float32 view of ``array`` that cannot be written (the bundle's own array keeps its flags)."""
    view = np.ascontiguousarray(array, dtype=np.float32).view()
    view.setflags(write=False)
    return view


def _where(bundle: Bundle) -> str:
    return printable(bundle.path or "model")  # a file name may hold terminal escapes


def _is_batch(images) -> bool:
    """One image (path, bytes, binary file object, PIL image, HxW[xC] array) or a batch (a list/tuple of
    them, an NxCxHxW array)."""
    if isinstance(images, np.ndarray):
        return images.ndim == 4
    if is_image_source(images):
        return False
    if isinstance(images, (list, tuple)):
        return True
    raise FastadaptError(f"predict takes an image (a path, image bytes, a binary file object, a PIL image or a "
                         f"numpy array) or a list of them, "
                         f"got {type(images).__name__}")


class _Loaded:
    """What meta and adapted models share: the bundle, its manifest, preprocessing and recipe, its card."""

    def __init__(self, bundle: Bundle, graphs: Graphs | None = None):
        self.bundle = bundle
        self.path = bundle.path
        self._manifest = bundle.manifest  # given out only as a copy (``manifest``): what save writes is what predicts
        try:
            self.preprocess = Preprocess.from_dict(bundle.manifest["preprocess"])
            self.recipe = dict(bundle.manifest["inner_loop"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FastadaptError(f"{_where(bundle)}: manifest lacks a valid {exc} entry; re-export the bundle") from None
        self.graphs = graphs or Graphs(bundle.forward_onnx, bundle.step_onnx, _where(bundle))
        self.graphs.expect_images((self.preprocess.channels, self.preprocess.size, self.preprocess.size))
        # read-only, so that an app cannot change the answers of a model other threads predict with
        self.params = MappingProxyType({k: _read_only(v) for k, v in bundle.params.items()})

    @property
    def _name(self) -> str:
        """How messages name this model: its file (escaped for the terminal), or 'this model'."""
        return printable(self.path or "this model")

    @property
    def adaptation(self) -> dict:
        """What adaptation did (manifest["adaptation"]): steps kept, their lrs, loss before/after, ...;
        {} for a meta model.

        >>> adapted = fastadapt.load().adapt("examples/shots")
        >>> adapted.adaptation["steps"], adapted.adaptation["shots_per_class"]["star"]
        (3, 5)
        """
        return copy.deepcopy(self._manifest.get("adaptation") or {})

    @property
    def manifest(self) -> dict:
        """The bundle's manifest (format, preprocessing, inner-loop recipe, model card, ...), as a copy:
        changing it changes nothing in the model.

        >>> fastadapt.load().manifest["kind"]
        'meta'
        """
        return copy.deepcopy(self._manifest)

    @property
    def kind(self) -> str:
        """"meta" (a meta-initialisation: ``adapt`` it) or "adapted" (it knows its classes: ``predict``).

        >>> fastadapt.load().kind
        'meta'
        """
        return self._manifest.get("kind", "meta")

    def model_card(self) -> dict:
        """The model card the bundle carries, {section: text}: intended use, not for, data, training,
        evaluation, limitations (in that order; {} when it has none). Adapted models inherit their meta
        model's card.

        >>> list(fastadapt.load().model_card())[:2]
        ['intended_use', 'not_for']
        """
        return model_card(self._manifest)

    def describe(self) -> str:
        """What ``fastadapt info`` prints: kind, architecture, preprocessing, recipe, classes, provenance,
        model card and evaluations, one line each.

        >>> print(fastadapt.load().describe())  # doctest: +ELLIPSIS
        /.../default.fadapt  (meta bundle, format 1, 0.46 MB, 111,936 parameters)
        ...
          model card
            intended use: Handwritten characters, symbols, sketches and icons: ...
        """
        return describe_bundle(self.bundle)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path or '<in memory>'!r})"

    def __reduce__(self):
        """Pickling (multiprocessing, copy.deepcopy): onnxruntime sessions cannot be pickled, so the model
        travels as the bytes of the bundle its own ``save`` writes, read back and verified as a file is on
        the other side (loading._rebuild)."""
        from .loading import _rebuild  # here: loading imports this module

        with tempfile.TemporaryDirectory(prefix="fastadapt-") as folder:
            path = os.path.join(folder, "model.fadapt")
            self.save(path)
            with open(path, "rb") as file:
                data = file.read()
        return _rebuild, (data, self.path, getattr(self, "seconds", None))


class Model(_Loaded):
    """A meta-trained bundle (``fastadapt.load`` of kind "meta"): ``adapt`` it to your classes, then predict
    with the result.

    >>> model = fastadapt.load()          # the shipped default; or fastadapt.load("my_model.fadapt")
    >>> model.kind, model.recipe["steps"]
    ('meta', 3)
    """

    def adapt(self, shots, steps: int | str | None = None, lr: float | None = None,
              progress: Callable[[int, int], None] | None = None, safeguard: bool = True,
              colour: str = "auto") -> "AdaptedModel":
        """Learn the classes in ``shots`` with the inner loop the model was meta-trained for.

        shots     a folder with one subfolder of images per class, or a dict {label: [images]} (paths,
                  image bytes, binary file objects, PIL images or numpy arrays); >= 2 classes, any number
                  of images each
        steps, lr override the manifest's inner-loop recipe (the meta-trained values are best);
                  steps="auto" picks 0..recipe steps by leave-one-shot-out on the shots (>= 2 per class)
        progress  called as progress(done_steps, total_steps) after each SGD step, and last always with
                  done == total (also when a step is rejected or no step is kept; not called for 0 steps)
        safeguard when a step raises the support loss, keep the start (0 steps) and warn; unbalanced shots
                  use the class-balanced loss. False runs the plain recipe. Both give the recipe's
                  result, bit for bit, when the shots are balanced and no step raises the loss.
        colour    colour models (3 channels, prototype head): "auto" adds a colour histogram to the
                  features when leave-one-shot-out on the shots says it helps (>= 2 shots per class;
                  runtime/colour.py); "off" never. Grey models ignore it.

        >>> adapted = fastadapt.load().adapt("examples/shots", steps="auto")
        >>> adapted.kind, len(adapted.classes)
        ('adapted', 8)
        """
        self._check_arguments(steps, lr, safeguard, colour, progress)  # before decoding the shots: a typo costs nothing
        data = load_shots(shots, self.preprocess)
        return self.adapt_arrays(to_float(data.images, self.preprocess), data.labels, data.classes,
                                 steps=steps, lr=lr, progress=progress, shots=data, safeguard=safeguard,
                                 colour=colour)

    def adapt_arrays(self, images: np.ndarray, labels: np.ndarray, classes: list, steps: int | str | None = None,
                     lr: float | None = None, progress: Callable[[int, int], None] | None = None,
                     shots: Shots | None = None, safeguard: bool = True, quiet: bool = False,
                     colour: str = "auto") -> "AdaptedModel":
        """``adapt`` on already preprocessed float32 images (B, C, H, W) and int labels 0..N-1 naming
        ``classes`` (for evaluations and benchmarks: no image decoding).

        ``quiet``: no warning (it is still stored as adaptation["warning"]). ``shots``: the decoded support
        set (``adapt`` passes it), kept in the adapted bundle so classes can be added later; without it the
        adapted model keeps no shots.

        >>> from fastadapt.images import to_float
        >>> model = fastadapt.load()
        >>> size = model.preprocess.size  # the model sees size x size pixels
        >>> images = to_float(np.random.default_rng(0).integers(0, 256, (4, 1, size, size), dtype=np.uint8),
        ...                   model.preprocess)
        >>> model.adapt_arrays(images, np.array([0, 0, 1, 1]), ["a", "b"], quiet=True).classes
        ['a', 'b']
        """
        steps, colour = self._check_arguments(steps, lr, safeguard, colour, progress)
        recipe_steps = int(self.recipe["steps"])
        reported = "learned" if lr is None and "learned_lrs" in self.recipe else float(_lr_argument(lr, self.recipe["lr"]))
        lr = self._rates(lr)
        if isinstance(classes, (str, bytes)) or not isinstance(classes, (list, tuple, np.ndarray)):
            # a str would be split into one class per character
            raise FastadaptError(f"adapt_arrays: classes must be a list of class names, got {type(classes).__name__}")
        ways = len(classes)
        if ways < 2:
            raise FastadaptError(f"adaptation needs at least 2 classes, got {ways}")
        images = _preprocessed(images, self.preprocess, "adapt_arrays")
        labels = _array_labels(labels, ways, len(images))  # before onnxruntime, which would print its own error
        if len({str(c) for c in classes}) < ways:
            raise FastadaptError(f"adapt_arrays: class names must be distinct, got {[str(c) for c in classes]}"[:300])
        start = time.perf_counter()
        auto = None
        zero_head = self.recipe.get("head_init", "zero") == "zero"
        if steps == "auto":
            steps, auto = choose_steps(self.graphs, lambda x, y: self._init_head(x, y, ways), images, labels,
                                       ways, recipe_steps, lr, bool(safeguard), zero_head)
            if "note" in auto and not quiet:  # it could not choose: say so, not only in adaptation["auto"]
                warn(f"{auto['note']} (give every class 2 or more shots, or leave {{steps}} out)", "steps")
        # the shots' features, once: the prototype head and the colour cue both start from them
        features = support_features(self._manifest, self.params, self.graphs, images) \
            if self.recipe.get("head_init") == "prototype" else None
        trajectory = run_steps(self.graphs, images, labels, self._init_head(images, labels, ways, features), steps, lr,
                               safeguard=bool(safeguard), progress=progress, keep_kept_steps=zero_head)
        check_finite(trajectory, lr)
        if zero_head:
            check_zero_head(trajectory, steps, lr)
        params, cue, colour_report = self._colour_head(trajectory.params, images, features, labels, ways, colour)
        seconds = time.perf_counter() - start
        counts = shots.counts if shots is not None else np.bincount(labels, minlength=ways).tolist()
        # nothing from the clock: the same shots give the same bundle, byte for byte (the time taken is
        # AdaptedModel.seconds, in memory only)
        info = {**trajectory.report(steps, safeguard), "lr": reported, "classes": len(classes),
                "shots_per_class": {c: int(n) for c, n in zip(classes, counts)},
                "from": {"path": os.path.basename(self.path) if self.path else None,
                         "params_sha256": self._manifest.get("members", {}).get("params.npz")}}
        if auto is not None:
            info["auto"] = auto
        if colour_report is not None:
            info["colour"] = colour_report
        if shots is not None and shots.skipped:
            info["skipped"] = list(shots.skipped)
        warning = self._unlike_training_data(info)  # may name the parameter lr
        if warning:
            info["warning"] = str(FastadaptWarning(warning, "lr"))  # stored as a Python caller reads it
            if not quiet:
                warn(warning, "lr")
        manifest = dict(self._manifest)
        manifest.update(kind="adapted", classes=[str(c) for c in classes], adaptation=info,
                        unknown=unknown_detection.describe(self._manifest, params))
        if cue:
            manifest["colour"] = cue
        # the shots (uint8, as preprocessed) and this meta-initialisation travel with the adapted bundle, so
        # classes can later be added or removed without the user's images (AdaptedModel.update_classes)
        kept = {"images": shots.images, "labels": shots.labels} if shots is not None else None
        bundle = Bundle(manifest, self.bundle.forward_onnx, self.bundle.step_onnx, params, None,
                        meta_params=self.params if kept else None, shots=kept)
        return AdaptedModel(bundle, self.graphs, seconds=round(seconds, 4))

    def _check_arguments(self, steps, lr, safeguard, colour, progress=None) -> tuple:
        """Refuse a bad steps, lr, safeguard, colour or progress in one line -> (steps as an int or "auto", colour)."""
        if not isinstance(safeguard, (bool, np.bool_)):
            raise FastadaptError(f"{{safeguard}} must be True or False, got {safeguard!r}", "safeguard")
        if isinstance(colour, (bool, np.bool_)):  # only the two documented words: True/False read as neither
            raise FastadaptError(f"{{colour}} must be 'auto' or 'off', got {bool(colour)!r} (for {bool(colour)!r} "
                                 f"pass {'auto' if colour else 'off'!r})", "colour")
        colour = colour_cue.check_mode(colour)
        _check_progress(progress)
        steps = _steps_argument(steps, int(self.recipe["steps"]))
        self._rates(lr)
        return steps, colour

    def _rates(self, lr):
        """The step rate(s): ``lr`` (checked) or the manifest's. A bundle with learned rates (a (steps,
        tensors) matrix; its step graph takes one rate per adapted tensor) uses them unless ``lr`` is given,
        which then becomes one row of that rate for every tensor and step."""
        learned = self.recipe.get("learned_lrs")
        if learned is None:
            return _lr_argument(lr, self.recipe["lr"])
        if lr is None:
            return np.asarray(learned, dtype=np.float32)
        return np.full((1, len(learned[0])), _lr_argument(lr, self.recipe["lr"]), dtype=np.float32)

    def _colour_head(self, params: dict, images: np.ndarray, features: np.ndarray | None, labels: np.ndarray,
                     ways: int, mode: str) -> tuple:
        """(params, manifest["colour"] or None, adaptation["colour"] or None): the adapted parameters with the
        colour head added when ``mode`` is "auto" and leave-one-shot-out chooses a colour weight."""
        if self.preprocess.channels != 3 or self.recipe.get("head_init") != "prototype":
            return params, None, None
        if mode == "off":
            return params, None, {"mode": "off"}
        colours = colour_cue.histograms(images, self.preprocess)
        scale, report = colour_cue.choose_scale(features, colours, labels, ways)
        report = {"mode": mode, **report}
        if scale == 0:
            return params, None, report
        head = colour_cue.colour_head(colours, labels, ways, scale, head_scale_of(self._manifest))
        return {**params, **head}, {"bins": colour_cue.BINS, "scale": scale}, report

    def _init_head(self, images: np.ndarray, labels: np.ndarray, ways: int, features: np.ndarray | None = None) -> dict:
        return init_head(self._manifest, self.params, self.graphs, images, labels, ways, _where(self.bundle), features)

    def _unlike_training_data(self, info: dict) -> str | None:
        """One warning when the shots look unlike the model's training data, naming what it is good for."""
        reasons = []
        if info["rejected"]:
            r = info["rejected_step"]
            kept = (f"keeps its first {info['steps']} step(s)" if info["steps"] else
                    "keeps its start (no step: the head initialised from the shots)")
            reasons.append(f"SGD step {r['step']} of {info['steps_requested']} raised the support loss "
                           f"({_loss(r['loss_before'])} -> {_loss(r['loss_after'])}), so the model {kept}")
            if info["lr"] != "learned" and info["lr"] != float(self.recipe["lr"]):
                reasons.append(f"({{lr}} {info['lr']:g} is not the meta-trained {float(self.recipe['lr']):g}: "
                               f"try without {{lr}})")
        auto = info.get("auto") or {}
        accuracy = auto.get("best_accuracy")
        if accuracy is not None and accuracy < LOW_LOO_ACCURACY:
            reasons.append(f"leave-one-shot-out accuracy on the shots is only {100 * accuracy:.0f}%")
        if not reasons:
            return None
        return (f"{'; '.join(reasons)}: the shots may be unlike the images this model was trained for. It is "
                f"good for {_good_for(self)}; for other images, meta-train your own model (README: 'Meta-train "
                f"your own')")

    def predict(self, images, top: int = TOP, unknown: bool | float | None = None,
                skip_unreadable: bool = False) -> Prediction | list[Prediction | None]:
        """A meta model has no classes to predict: this raises an error that says to ``adapt`` it first.

        >>> fastadapt.load().predict("examples/queries/star/star_1.png")
        Traceback (most recent call last):
        fastadapt.errors.FastadaptError: ...: is a meta model with no classes yet; adapt it first: ...
        """
        raise self._not_adapted()

    def _not_adapted(self) -> FastadaptError:
        """What an adapted model's method says on a meta model (rather than an AttributeError)."""
        return FastadaptError(f"{self._name}: is a meta model with no classes yet; adapt it first: "
                              f"'fastadapt adapt --model {printable(self.path or 'MODEL.fadapt')} --shots DIR --out "
                              f"adapted.fadapt' (Python: model.adapt('DIR'))")

    @property
    def classes(self) -> list:
        """A meta model has no classes yet: this raises a FastadaptError that says to ``adapt`` it first, which
        is also an AttributeError, so ``hasattr`` and ``getattr(model, "classes", None)`` still work.

        >>> hasattr(fastadapt.load(), "classes")
        False
        """
        error = self._not_adapted()
        raise _NoClasses(*error.args)

    def add_classes(self, shots, *args, **kwargs) -> "AdaptedModel":
        """A meta model has no classes to add to: this raises an error that says to ``adapt`` it first (with
        all the classes).

        >>> fastadapt.load().add_classes("examples/shots")
        Traceback (most recent call last):
        fastadapt.errors.FastadaptError: ...: is a meta model with no classes yet; adapt it first: ...
        """
        raise self._not_adapted()

    def remove_classes(self, labels, *args, **kwargs) -> "AdaptedModel":
        """A meta model has no classes to remove: this raises an error that says to ``adapt`` it first.

        >>> fastadapt.load().remove_classes(["star"])
        Traceback (most recent call last):
        fastadapt.errors.FastadaptError: ...: is a meta model with no classes yet; adapt it first: ...
        """
        raise self._not_adapted()

    def update_classes(self, add=None, remove=(), *args, **kwargs) -> "AdaptedModel":
        """A meta model has no classes to change: this raises an error that says to ``adapt`` it first.

        >>> fastadapt.load().update_classes(remove=["star"])
        Traceback (most recent call last):
        fastadapt.errors.FastadaptError: ...: is a meta model with no classes yet; adapt it first: ...
        """
        raise self._not_adapted()

    def scores(self, images) -> tuple:
        """A meta model has no classes to score: this raises an error that says to ``adapt`` it first.

        >>> fastadapt.load().scores(np.zeros((1, 1, 32, 32), np.float32))
        Traceback (most recent call last):
        fastadapt.errors.FastadaptError: ...: is a meta model with no classes yet; adapt it first: ...
        """
        raise self._not_adapted()

    def probabilities(self, images) -> np.ndarray:
        """A meta model has no classes to give probabilities of: this raises an error that says to ``adapt``
        it first.

        >>> fastadapt.load().probabilities(np.zeros((1, 1, 32, 32), np.float32))
        Traceback (most recent call last):
        fastadapt.errors.FastadaptError: ...: is a meta model with no classes yet; adapt it first: ...
        """
        raise self._not_adapted()

    def export_onnx(self, path, recipe=None) -> dict:
        """A meta model has no classes to export a classifier for: this raises an error that says to ``adapt``
        it first.

        >>> fastadapt.load().export_onnx("model.onnx")
        Traceback (most recent call last):
        fastadapt.errors.FastadaptError: ...: is a meta model with no classes yet; adapt it first: ...
        """
        raise self._not_adapted()

    def save(self, path: str | os.PathLike) -> None:
        """Write the meta bundle (unchanged) to ``path`` atomically.

        >>> fastadapt.load().save("copy.fadapt")
        """
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise FastadaptError(f"save needs a file name such as 'model.fadapt', got {path!r}")
        save_bundle(path, Bundle(dict(self._manifest), self.bundle.forward_onnx, self.bundle.step_onnx,
                                 self.params, None))


class AdaptedModel(_Loaded):
    """A model that knows its classes (``Model.adapt``, or ``fastadapt.load`` of kind "adapted"): ``predict``
    images, ``save`` it as an adapted bundle, add or remove classes, export it as one ONNX file.

    >>> adapted = fastadapt.load().adapt("examples/shots")
    >>> adapted.classes[:3]
    ['arrow', 'circle', 'cross']
    """

    def __init__(self, bundle: Bundle, graphs: Graphs | None = None, seconds: float | None = None):
        super().__init__(bundle, graphs)
        self.seconds = seconds  # how long adaptation took (None for a loaded bundle: not stored, see adapt_arrays)
        self._classes = tuple(str(c) for c in self._manifest.get("classes") or [])  # given out as a copy: classes
        rows = self.params.get("head.weight", np.zeros((0, 0))).shape[0]
        if len(self._classes) < 2 or rows != len(self._classes):
            raise FastadaptError(f"{_where(bundle)}: adapted bundle has {len(self._classes)} class names for "
                                 f"{rows} head rows; re-run 'fastadapt adapt'")
        if not all(np.isfinite(v).all() for v in self.params.values()):
            raise FastadaptError(f"{_where(bundle)}: the adapted weights hold NaN/inf values (a diverged "
                                 f"adaptation); re-run 'fastadapt adapt' without --lr")
        stored = self._manifest.get("unknown") if isinstance(self._manifest.get("unknown"), dict) else {}
        described = unknown_detection.describe(self._manifest, self.params)
        self.unknown_score = described["score"]
        self.unknown_threshold = stored.get("threshold", described["threshold"])
        self._head_scale = head_scale_of(self._manifest)
        self._colour = self._manifest.get("colour")
        self._scale = unknown_detection.prototype_scale(self.params, self._head_scale) \
            if self.unknown_score == unknown_detection.NEAREST_PROTOTYPE else 1.0

    @property
    def classes(self) -> list:
        """The class labels, in the order of the head's rows, as a new list each time (an app that sorts
        or edits it changes nothing in the model).

        >>> fastadapt.load().adapt("examples/shots").classes[:3]
        ['arrow', 'circle', 'cross']
        """
        return list(self._classes)

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (B, N), in-set scores (B,)) for preprocessed float32 images (B, C, H, W).

        Each image runs through the forward graph on its own (PREDICT_CHUNK), so its numbers never depend
        on the other images. Score: higher = more likely one of the classes (runtime/unknown.py).

        >>> from fastadapt.images import to_float, to_uint8
        >>> adapted = fastadapt.load().adapt("examples/shots")
        >>> x = to_float(to_uint8("examples/queries/star/star_1.png", adapted.preprocess)[None], adapted.preprocess)
        >>> probabilities, scores = adapted.scores(x)
        >>> probabilities.shape, scores.shape
        ((1, 8), (1,))
        """
        images = _preprocessed(images, self.preprocess, "scores")
        probabilities, scores = [], []
        for i in range(0, len(images), PREDICT_CHUNK):
            logits, features = self._outputs(images[i:i + PREDICT_CHUNK])
            p = softmax(logits)
            probabilities.append(p)
            scores.append(unknown_detection.scores(self.unknown_score, self._scale, logits, features, p,
                                                   self._head_scale))
        if not probabilities:
            return np.zeros((0, len(self._classes))), np.zeros((0,))
        return np.concatenate(probabilities), np.concatenate(scores)

    def _outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The logits (B, N) and features (B, D) of preprocessed images, colour cue included; finite or an error."""
        logits, features = self.graphs.forward(images, self.params)
        with np.errstate(over="ignore", invalid="ignore"):  # checked below, in one line rather than warnings
            logits, features = colour_cue.joint(logits, features, images, self.params, self._colour, self.preprocess)
        if not (np.isfinite(logits).all() and np.isfinite(features).all()):  # finite images in: a broken bundle
            raise FastadaptError(f"{self._name}: the model's outputs are not finite numbers (its "
                                 f"weights or preprocessing overflow float32); re-adapt it from a good meta model")
        return logits, features

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax probabilities (B, N) for preprocessed float32 images (B, C, H, W): ``scores(images)[0]``.

        >>> from fastadapt.images import to_float, to_uint8
        >>> adapted = fastadapt.load().adapt("examples/shots")
        >>> x = to_float(to_uint8("examples/queries/star/star_1.png", adapted.preprocess)[None], adapted.preprocess)
        >>> adapted.classes[int(adapted.probabilities(x).argmax())]
        'star'
        """
        return self.scores(images)[0]

    def predict(self, images, top: int = TOP, unknown: bool | float | None = None,
                skip_unreadable: bool = False) -> Prediction | list[Prediction | None] | None:
        """Predict one image -> a ``Prediction``; a list of them -> a list, in the same order.

        images    a path, image bytes, a binary file object, a PIL image or an HxW[xC] array, or a list
                  of them (or an NxCxHxW array). Each image's answer depends on that image alone.
        top       how many of the most likely classes ``Prediction.top`` lists (``fastadapt predict --top``
                  has the same default)
        unknown   None/False: always answer a class; True: mark images below the model's calibrated
                  threshold (manifest["unknown"]["threshold"]) as ``unknown``; a number: that threshold (refused
                  above every score the model gives: 0 for prototype scores, 1 for probabilities)
        skip_unreadable  True: an image that cannot be read is answered None, with a warning (all None when
                  none can be read); False: it is an error

        >>> adapted = fastadapt.load().adapt("examples/shots")
        >>> adapted.predict("examples/queries/star/star_1.png").label
        'star'
        >>> [p.label for p in adapted.predict(["examples/queries/circle/circle_1.png", b"not an image"],
        ...                                   skip_unreadable=True) if p is not None]
        ['circle']
        """
        threshold = self._threshold(unknown)
        top = _check_top(top)
        if not isinstance(skip_unreadable, (bool, np.bool_)):  # "no" would be true
            raise FastadaptError(f"{{skip_unreadable}} must be True or False, got {skip_unreadable!r:.40}",
                                 "skip_unreadable")
        batch = _is_batch(images)
        items = list(images) if batch else [images]
        if not items:
            return []
        if not (isinstance(images, np.ndarray) and batch):  # the rows of an N x C x H x W array are images
            for n, item in enumerate(items):
                refuse_stacked_array(item, self.preprocess.channels, f"image {n}" if batch else "predict")
        names = [os.fspath(i) if isinstance(i, (str, os.PathLike)) else f"image {n}" for n, i in enumerate(items)]
        arrays = {}  # index -> uint8 image, for the images that could be read
        for n, item in enumerate(items):
            if not is_image_source(item):
                raise FastadaptError(f"predict: an image must be a path, image bytes, a binary file object, a PIL "
                                     f"image or a numpy array, got {type(item).__name__}")
            try:
                arrays[n] = to_uint8(item, self.preprocess)
            except FastadaptError as exc:
                if not skip_unreadable:
                    raise
                warn(f"{exc}; skipped")
        if not arrays:  # none could be read: each is answered None, as the warnings said
            return [None] * len(items) if batch else None
        message = polarity_warning(list(arrays.values()), self.preprocess, [names[n] for n in arrays])
        if message:
            warn(message)
        probabilities, scores = self.scores(to_float(np.stack(list(arrays.values())), self.preprocess))
        answers = iter(self._predictions(probabilities, top, scores, threshold))
        results = [next(answers) if n in arrays else None for n in range(len(items))]
        return results if batch else results[0]

    def _threshold(self, unknown) -> float | None:
        """predict's ``unknown`` argument -> the score threshold to reject below, or None."""
        if isinstance(unknown, np.bool_):
            unknown = bool(unknown)
        if unknown is None or unknown is False:
            return None
        if unknown is True:
            if self.unknown_threshold is None:
                raise FastadaptError(f"{self._name}: has no calibrated unknown threshold (its head is "
                                     f"not a prototype head; the score is the top probability): pass a number as "
                                     f"{{unknown}}, e.g. 0.9", "unknown")
            return float(self.unknown_threshold)
        if isinstance(unknown, (int, float, np.integer, np.floating)) and math.isfinite(_as_float(unknown)):
            # above every score the model gives, a threshold marks every image unknown (e.g. 1 meant as True)
            highest = 0.0 if self.unknown_score == unknown_detection.NEAREST_PROTOTYPE else 1.0
            if float(unknown) > highest:
                raise FastadaptError(f"{{unknown}} {unknown!r:.40} would mark every image unknown: this model's scores "
                                     f"are at most {highest:g} ({self._score_words()}); pass True for the calibrated "
                                     f"threshold or a number up to {highest:g}", "unknown")
            return float(unknown)
        raise FastadaptError(f"{{unknown}} must be a finite number, got {unknown!r:.40} (the calibrated threshold: "
                             f"{self.unknown_threshold})", "unknown")

    def _score_words(self) -> str:
        if self.unknown_score == unknown_detection.NEAREST_PROTOTYPE:
            return f"minus the distance to the nearest class, calibrated threshold {self.unknown_threshold}"
        return "the top class probability"

    def _predictions(self, probabilities: np.ndarray, top: int, scores: np.ndarray,
                     threshold: float | None) -> list[Prediction]:
        """(B, N) probabilities and (B,) scores -> ``Prediction`` objects; with a ``threshold``, images scoring
        below it are ``unknown``."""
        k = min(top, len(self._classes))
        results = []
        for row, score in zip(probabilities, scores):
            order = np.argsort(-row, kind="stable")[:k]
            ranked = tuple((self._classes[j], float(row[j])) for j in order)
            rejected = threshold is not None and not float(score) >= threshold
            results.append(Prediction(ranked[0][0], ranked[0][1], ranked, rejected, float(score)))
        return results

    def save(self, path: str | os.PathLike) -> None:
        """Write an adapted bundle (kind "adapted", adapted parameters, class names, the shots it keeps)
        atomically; ``fastadapt.load(path)`` predicts right away.

        >>> fastadapt.load().adapt("examples/shots").save("shapes.fadapt")
        >>> fastadapt.load("shapes.fadapt").kind
        'adapted'
        """
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise FastadaptError(f"save needs a file name such as 'adapted.fadapt', got {path!r}")
        path = os.fspath(path)
        if os.path.isdir(path):
            raise FastadaptError(f"{path}: is a folder; give a file name such as {os.path.join(path, 'adapted.fadapt')}")
        # the classes predict answers with, whatever was done to the bundle object since
        bundle = Bundle({**self._manifest, "classes": list(self._classes)}, self.bundle.forward_onnx,
                        self.bundle.step_onnx, self.params, None, meta_params=self.bundle.meta_params,
                        shots=self.bundle.shots)
        save_bundle(path, bundle)

    def export_onnx(self, path: str | os.PathLike, recipe: str | os.PathLike | None = None) -> dict:
        """Write one self-contained ONNX file (these weights inside; input "images", preprocessed float32
        (B, C, H, W); outputs "probabilities" (B, N), "features" (B, D) and "logits" (B, N), the last for the
        unknown score: recipe["unknown"]) and its preprocessing recipe as
        JSON beside it (default: model.onnx -> model.preprocess.json). Verified against ``probabilities``
        before anything is written. Needs the ``onnx`` package. Returns the recipe. See standalone.py.

        >>> recipe = fastadapt.load().adapt("examples/shots").export_onnx("shapes.onnx")  # and shapes.preprocess.json
        >>> recipe["classes"][:2], recipe["input"]["shape"]
        (['arrow', 'circle'], ['batch', 1, 32, 32])
        """
        from ..standalone import export_onnx

        return export_onnx(self, path, recipe)

    def add_classes(self, shots, steps: int | str | None = None, lr: float | None = None,
                    progress: Callable[[int, int], None] | None = None, safeguard: bool | None = None,
                    colour: str | None = None) -> "AdaptedModel":
        """A new model that also knows the classes in ``shots`` (a folder of class folders or a dict
        {label: [images]}, one class is enough; an existing label gets the images added to its shots).

        It re-adapts from the meta-initialisation on the shots kept in this model and the new ones: the
        same model, bit for bit, as adapting the meta model on all the images at once with the new classes
        last (in another class order, the same up to float rounding). steps, lr, safeguard, colour: default
        to what this model was adapted with (see ``Model.adapt``).

        >>> adapted = fastadapt.load().adapt({"star": ["examples/shots/star/star_1.png"],
        ...                                   "circle": ["examples/shots/circle/circle_1.png"]})
        >>> adapted.add_classes({"arrow": ["examples/shots/arrow/arrow_1.png"]}).classes
        ['star', 'circle', 'arrow']
        """
        if shots is None:  # update_classes reads None as "add nothing": here it is a mistake
            raise FastadaptError("add_classes takes {shots}, a folder of class folders or a dict {label: [images]}, "
                                 "got None", "shots")
        return self.update_classes(add=shots, steps=steps, lr=lr, progress=progress, safeguard=safeguard,
                                   colour=colour)

    def remove_classes(self, labels: str | list[str], steps: int | str | None = None, lr: float | None = None,
                       progress: Callable[[int, int], None] | None = None, safeguard: bool | None = None,
                       colour: str | None = None) -> "AdaptedModel":
        """A new model without the classes ``labels`` (at least 2 classes must remain), re-adapted from the
        meta-initialisation on the kept shots of the others; see ``add_classes``.

        >>> fastadapt.load().adapt("examples/shots").remove_classes(["star"]).classes
        ['arrow', 'circle', 'cross', 'spiral', 'square', 'triangle', 'zigzag']
        """
        if labels is None:  # update_classes reads None as "remove nothing": here it is a mistake
            raise FastadaptError("remove_classes takes {labels}, a class label or a list of them, got None", "labels")
        return self.update_classes(remove=labels, steps=steps, lr=lr, progress=progress, safeguard=safeguard,
                                   colour=colour)

    def update_classes(self, add=None, remove: str | list[str] = (), steps: int | str | None = None,
                       lr: float | None = None, progress: Callable[[int, int], None] | None = None,
                       safeguard: bool | None = None, colour: str | None = None) -> "AdaptedModel":
        """``remove_classes(remove)`` and ``add_classes(add)`` in one re-adaptation (``colour``: see
        ``Model.adapt``; default: as this model was adapted).

        >>> adapted = fastadapt.load().adapt("examples/shots")
        >>> adapted.update_classes(add={"dot": ["examples/queries/circle/circle_1.png"]}, remove=["star"]).classes[-2:]
        ['zigzag', 'dot']
        """
        meta = self._meta_model()
        remove = () if remove is None else remove
        if not isinstance(remove, (str, list, tuple, set, frozenset)):
            raise FastadaptError(f"remove_classes takes a class label or a list of them, got {type(remove).__name__}")
        remove = [remove] if isinstance(remove, str) else [str(label) for label in remove]
        missing = [label for label in remove if label not in self._classes]
        if missing:
            raise FastadaptError(f"cannot remove class '{printable(missing[0])}': {self._name} has no "
                                 f"such class (it has {', '.join(map(printable, self._classes[:10]))}"
                                 f"{', ...' if len(self._classes) > 10 else ''})")
        stored = self.bundle.shots
        # the kept shots, class by class, as load_shots gives them; images in the form to_uint8 reads back
        # unchanged (same size, so no resize; un-inverted, so its inversion restores them bit for bit)
        classes = {}
        for index, label in enumerate(self._classes):
            if label not in remove:
                images = stored["images"][stored["labels"] == index]
                classes[label] = [255 - image if self.preprocess.invert else image for image in images]
        if add is not None:
            new = _folder_classes(os.fspath(add)) if isinstance(add, (str, os.PathLike)) else add
            if not isinstance(new, dict) or not new:
                raise FastadaptError(f"add_classes takes a folder of class folders or a dict {{label: [images]}}, "
                                     f"got {type(add).__name__ if not isinstance(add, dict) else 'an empty dict'}")
            for label, items in (dict_classes(new, self.preprocess.channels) if isinstance(add, dict) else new).items():
                classes[label] = classes.get(label, []) + items
        if len(classes) < 2:
            raise FastadaptError(f"removing {', '.join(map(printable, remove))} would leave {len(classes)} class; "
                                 f"a model needs at least 2")
        info = self.adaptation  # unset arguments: as this model was adapted
        recipe = dict(steps=steps if steps is not None else ("auto" if "auto" in info else info.get("steps_requested")),
                      lr=lr if lr is not None else (None if info.get("lr") == "learned" else info.get("lr")),
                      safeguard=safeguard if safeguard is not None else info.get("safeguard", True),
                      colour=colour if colour is not None else _stored_colour_mode(info))
        meta._check_arguments(**recipe, progress=progress)  # before decoding the shots
        data = load_shots(classes, self.preprocess, checked=True)  # dict_classes checked the new arrays above
        adapted = meta.adapt_arrays(to_float(data.images, self.preprocess), data.labels, data.classes, shots=data,
                                    progress=progress, **recipe)
        adapted._manifest["adaptation"]["from"] = info.get("from")  # the meta bundle, not the in-memory copy
        return adapted

    def _meta_model(self) -> Model:
        """The meta model this one was adapted from, rebuilt from the bundle's meta_params.npz."""
        if self.bundle.meta_params is None or self.bundle.shots is None:
            cli, python, note = _meta_source(self.adaptation)
            raise FastadaptError(f"{self._name}: keeps no shots to add or remove classes with (adapted "
                                 f"by an older fastadapt, or with adapt_arrays); adapt the meta model again with all "
                                 f"the images: fastadapt adapt --model {cli} --shots DIR --out ... "
                                 f"(Python: fastadapt.load({python}).adapt(...)){note}")
        manifest = {k: v for k, v in self._manifest.items() if k not in ("adaptation", "unknown", "colour")}
        manifest.update(kind="meta", classes=None, parameters=list(self.bundle.meta_params),
                        members={"params.npz": (self.adaptation.get("from") or {}).get("params_sha256")})
        bundle = Bundle(manifest, self.bundle.forward_onnx, self.bundle.step_onnx, self.bundle.meta_params, None)
        return Model(bundle, self.graphs)

    def adapt(self, shots=None, steps: int | str | None = None, lr: float | None = None,
              progress: Callable[[int, int], None] | None = None, safeguard: bool = True,
              colour: str = "auto") -> "AdaptedModel":
        """An adapted model cannot adapt again (adaptation starts from the meta-initialisation): this raises an
        error naming the meta bundle it came from; ``add_classes`` / ``remove_classes`` change its classes.

        >>> fastadapt.load().adapt("examples/shots").adapt("examples/shots")
        Traceback (most recent call last):
        fastadapt.errors.FastadaptError: this model: is already adapted ...
        """
        cli, python, note = _meta_source(self.adaptation)
        raise FastadaptError(f"{self._name}: is already adapted (classes: {', '.join(map(printable, self._classes[:5]))}"
                             f"{', ...' if len(self._classes) > 5 else ''}); adaptation starts from a meta model, "
                             f"so adapt the one it came from instead (--model {cli}; Python: fastadapt.load({python})"
                             f"){note}; "
                             f"to add or remove classes use add_classes / remove_classes (CLI: fastadapt adapt "
                             f"--model ADAPTED --add DIR)")
