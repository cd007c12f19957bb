"""A standalone ONNX model from an adapted bundle, for onnxruntime anywhere (web, mobile, C++), no fastadapt.

    adapted.export_onnx("model.onnx")      # or: fastadapt export ADAPTED.fadapt --format onnx --out model.onnx

writes two files:
  model.onnx             the bundle's forward graph with the adapted weights inside (initializers):
                         input  "images" float32 (B, C, H, W), preprocessed as the recipe says
                         outputs "probabilities" float32 (B, N), softmax over the classes in recipe order,
                                 "features" float32 (B, D), "logits" float32 (B, N) (the softmax's input)
                         (the class names, the recipe and its unknown rule are also in the model's metadata_props)
  model.preprocess.json  the preprocessing recipe (RECIPE_FORMAT), the class names and the numbers that
                         ``predict(..., unknown=True)`` uses ("unknown": score, threshold, scales)

Before writing, the file runs in onnxruntime on the bundle's stored shots and on fixed random images,
and its probabilities must agree with ``AdaptedModel.probabilities`` (``probabilities_agree``: the rule of
``agrees`` on the logits, carried through the softmax), and its logits under ``agrees``; otherwise nothing is written. Building the graph needs the ``onnx`` package
(fastadapt[train]); it is imported only here, so the runtime stays onnx-free.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .errors import FastadaptError
from .images import DRAFT_ABOVE_PIXELS, DRAFT_MARGIN, to_float
from .manifest import printable
from .onnx_wire import stamp_ir_version
from .outputs import check_inputs, probe_folder, refuse_unwritable, write_all

RECIPE_FORMAT = "fastadapt-onnx-preprocess"
# The one float32 agreement rule: export verification (meta_train.verification), the parity tests and
# this module's ONNX export all use it.
VERIFY_TOL = 1e-4
VERIFY_RANDOM = 8  # fixed random images checked besides the stored shots
VERIFY_SHOTS = 64  # at most this many stored shots checked


def agrees(value, reference, tol: float = VERIFY_TOL) -> bool:
    """The one float32 agreement rule of export verification and the parity tests.

    |value - reference| <= tol * max(1, max|reference|): float32 rounding errors scale with the size of
    what is computed (prototype logits are differences of terms ~|features|^2, so an absolute bound fails
    on some CPUs' kernel choices while a relative one holds); below size 1 the bound is absolute.
    tol = 1e-4 is ~840 float32 ulps: room for the summation-order differences of correct kernels
    (measured <= 4e-5 relative between torch and onnxruntime on Intel AVX-512/AMX), while a real error
    (a wrong gradient term, a dropped tie rule) moves values by far more.
    """
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    return float(np.abs(value - reference).max()) <= tol * max(1.0, float(np.abs(reference).max()))


def probabilities_agree(got, expected, logits, tol: float = VERIFY_TOL) -> bool:
    """Whether softmax probabilities ``got`` agree with ``expected`` = softmax(``logits``) under ``agrees``'s rule
    applied to the logits, where the rounding happens.

    Logits that differ by at most d_i = tol * max(1, max_j |z_ij|) (``agrees`` on image i's logits) move each
    probability by a factor within exp(+-2 d_i) (p_j' / p_j = exp(dz_j) / sum_k p_k exp(dz_k)), so
    |got_ij - expected_ij| <= expm1(2 d_i) * expected_ij, plus the softmax's own float32 rounding (a few
    ulps of values <= 1). A bound on the probabilities alone would be an absolute 1e-4, which two correct
    kernels exceed when the logits are large (off-distribution images give logits ~430 on characters).
    """
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    drift = tol * np.maximum(1.0, np.abs(np.asarray(logits, np.float64)).max(axis=1, keepdims=True))
    allowed = np.expm1(2.0 * drift) * expected + 8 * float(np.finfo(np.float32).eps)
    return bool(np.all(np.abs(got - expected) <= allowed))


def _recipe_path(onnx_path: str) -> str:
    """model.onnx -> model.preprocess.json (beside it)."""
    root, ext = os.path.splitext(onnx_path)
    return (root if ext.lower() == ".onnx" else onnx_path) + ".preprocess.json"


def _refuse_recipe_folder(path: str, flag: str | None = None) -> None:
    """Refuse a folder where the recipe beside ``path`` goes. Its name follows from ``path``, so the fix is to
    remove the folder or name the model otherwise (refuse_unwritable's advice, a file inside it, would not do)."""
    recipe_file = _recipe_path(path)
    if os.path.isdir(recipe_file) and not os.path.islink(recipe_file):
        given = f"{flag} {printable(path)}" if flag else printable(path)
        raise FastadaptError(f"{given}: the recipe file {printable(recipe_file)} (written beside "
                             f"{flag or 'the model'}) is a folder; remove it or choose another {flag or 'path'}")


def _named(adapted) -> str:
    """The bundle, as messages name it."""
    return printable(adapted.path or "model")


def recipe(adapted, onnx_name: str) -> dict:
    """How to turn an image into the model's input, and what its outputs mean: exact enough to reimplement
    outside Python (the README's prepare() is the same in Pillow)."""
    spec = adapted.preprocess
    side, margin = spec.size, DRAFT_MARGIN
    return {
        "format": RECIPE_FORMAT, "version": 1, "model": onnx_name,
        "input": {"name": "images", "dtype": "float32", "layout": "NCHW",
                  "shape": ["batch", spec.channels, spec.size, spec.size]},
        "outputs": {"probabilities": "float32 (batch, classes): softmax of logits, in the order of 'classes'",
                    "features": "float32 (batch, feature_dim): the embedding the head classifies" +
                    (" (the network's features, then the colour histogram times the colour scale)"
                     if adapted.manifest.get("colour") else ""),
                    "logits": "float32 (batch, classes): what the softmax is taken of (for the unknown score)"},
        "classes": list(adapted.classes),
        "steps": [
            "decode; for a picture of more than reduce_above_pixels pixels, JPEGs are decoded reduced (Pillow's "
            f"JpegImageFile.draft(None, ({margin * side}, {margin * side})): libjpeg DCT scaling by s, the largest "
            f"of 8, 4, 2, 1 not above min(width // {margin * side}, height // {margin * side}), to ceil(width / s) "
            "x ceil(height / s)); then apply the EXIF orientation",
            "8-bit pixels as they are; 16-bit: round(v / 257); float: v * 255 / max(1, largest value), clipped to "
            "0..255 and truncated; transparent pixels onto white, straight alpha: "
            "(c * a + 255 * (255 - a) + 127) // 255",
            "convert to 'L' (channels 1: Pillow's ITU-R 601 luma, (19595 R + 38470 G + 7471 B + 32768) >> 16) or "
            "'RGB' (channels 3)",
            f"if still more than reduce_above_pixels pixels: f = min(width, height) // {margin * side}; if f > 1, "
            "average f x f blocks (Pillow's Image.reduce; the last row and column average what is left), and do "
            "the fit below on the unreduced width and height with every box divided by f",
            "fit into size x size with Pillow's Lanczos (Image.resize(..., LANCZOS): Lanczos-3, its support "
            "stretched by the scale factor when shrinking, horizontal pass then vertical, each rounded to 0..255; "
            "not OpenCV's INTER_LANCZOS4). 'crop': the centre square m = min(w, h), box ((w - m) // 2, "
            "(h - m) // 2) to that + m; 'stretch' (and any square image): the whole image; 'pad': the whole image "
            "to (round(w * size / max(w, h)), round(h * size / max(w, h))) (round half to even, at least 1), "
            "pasted at ((size - that) // 2) on a square of the median of the outermost rows and columns (per "
            "channel, corners counted twice, rounded half to even)",
            "if invert: 255 - pixel",
            "the uint8 pixels / 255, then (x - mean[c]) / std[c], float32, channels first",
        ],
        "size": spec.size, "channels": spec.channels, "color": "L" if spec.channels == 1 else "RGB",
        "fit": spec.fit, "resize": "lanczos", "invert": spec.invert, "mean": list(spec.mean), "std": list(spec.std),
        "reduce_above_pixels": DRAFT_ABOVE_PIXELS, "reduce_margin": DRAFT_MARGIN,
        "unknown": _unknown_rule(adapted),
    }


def _unknown_rule(adapted) -> dict:
    """What ``predict(..., unknown=True)`` computes, from the model's outputs (runtime/unknown.py)."""
    from .runtime import unknown
    from .runtime.head import head_scale_of

    rule = {"score": adapted.unknown_score, "threshold": adapted.unknown_threshold}
    if adapted.unknown_score != unknown.NEAREST_PROTOTYPE:
        return {**rule, "formula": "score = max(probabilities); unknown when score < threshold (none calibrated: "
                                   "choose one)"}
    head_scale = head_scale_of(adapted.manifest)
    return {**rule, "head_scale": head_scale,
            "prototype_scale": unknown.prototype_scale(adapted.params, head_scale),  # unrounded, as predict uses it
            "formula": "score = (max(logits) / head_scale - sum(features ** 2)) / prototype_scale, in float64; "
                       "unknown when not score >= threshold"}


def _build_onnx(adapted, described: dict) -> bytes:
    """The forward graph with the adapted parameters as initializers and a softmax on the logits."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise FastadaptError('the ONNX export needs the onnx package: pip install "fastadapt[train]" '
                             '(or pip install onnx)') from None
    model = onnx.load_from_string(adapted.bundle.forward_onnx)
    graph = model.graph
    weights = [i for i in graph.input if i.name != "images"]
    for given in weights:
        graph.initializer.append(numpy_helper.from_array(adapted.params[given.name], given.name))
        graph.input.remove(given)
    features = next((o for o in graph.output if o.name == "features"), None)
    if features is None:  # the runtime refuses such a bundle at load; a Bundle built by hand can still get here
        raise FastadaptError(f"{_named(adapted)}: forward.onnx has no 'features' output; the bundle does not follow "
                             f"the .fadapt contract, re-export it")
    if adapted.manifest.get("colour"):
        _add_colour(graph, adapted, helper, numpy_helper)
        features = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", None])
    graph.node.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="probabilities"))
    del graph.output[:]
    classes = len(adapted.classes)
    # logits last, so code written for the first two outputs is unchanged; the unknown score needs them
    graph.output.extend([helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["B", classes]), features,
                         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", classes])])
    for key, value in (("classes", json.dumps(adapted.classes)), ("preprocess", json.dumps(described)),
                       ("unknown", json.dumps(described["unknown"])), ("producer", "fastadapt")):
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    stamp_ir_version(model)  # readable by onnxruntime 1.17 (onnx_wire.IR_VERSION)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001  (onnx raises ValidationError and others)
        raise FastadaptError(f"{_named(adapted)}: the standalone ONNX graph does not check "
                             f"({str(exc).splitlines()[0][:200]}); re-export the bundle") from None
    return model.SerializeToString()


def _add_colour(graph, adapted, helper, numpy_helper) -> None:
    """The colour cue (runtime/colour.py) in ONNX: the histogram of the input, its head added to the logits,
    and "logits" and "features" made the joint ones (the joint head's logits, [network features, a h])."""
    from .manifest import COLOUR

    renamed = {"features": "network_features", "logits": "network_logits"}
    for node in graph.node:  # the network's own outputs keep flowing under new names
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.output[:] = [renamed.get(n, n) for n in node.output]
    spec, cue = adapted.preprocess, adapted.manifest["colour"]
    bins = int(cue["bins"])

    def const(name, value, dtype=np.float32):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    channel = lambda values: np.asarray(values, np.float32).reshape(1, -1, 1, 1)  # noqa: E731
    nodes = [("Mul", ["images", const("colour.std", channel(spec.std))], "colour.scaled"),
             ("Add", ["colour.scaled", const("colour.mean", channel(spec.mean))], "colour.pixels"),
             ("Clip", ["colour.pixels", const("colour.low", 0.0), const("colour.high", 1 - 1e-6)], "colour.clipped"),
             ("Mul", ["colour.clipped", const("colour.bins", float(bins))], "colour.binned"),
             ("Floor", ["colour.binned"], "colour.levels"),
             ("Mul", ["colour.levels", const("colour.place", channel([bins * bins, bins, 1]))], "colour.placed"),
             ("ReduceSum", ["colour.placed", const("colour.channel_axis", [1], np.int64)], "colour.codes"),
             ("Reshape", ["colour.codes", const("colour.flat", [0, -1], np.int64)], "colour.code_rows"),
             ("Cast", ["colour.code_rows"], "colour.indices"),
             ("OneHot", ["colour.indices", const("colour.depth", [bins ** 3], np.int64),
                         const("colour.values", [0.0, 1.0])], "colour.onehot"),
             ("ReduceMean", ["colour.onehot", const("colour.pixel_axis", [1], np.int64)], "colour.shares"),
             ("Sqrt", ["colour.shares"], "colour.histogram"),
             ("Mul", ["colour.histogram", const("colour.scale", float(cue["scale"]))], "colour.features"),
             ("MatMul", ["colour.features", const("colour.rows", adapted.params[COLOUR[0]].T)], "colour.products"),
             ("Add", ["colour.products", const("colour.offsets", adapted.params[COLOUR[1]])], "colour.logits"),
             ("Add", ["network_logits", "colour.logits"], "logits"),
             ("Concat", ["network_features", "colour.features"], "features")]
    attributes = {"ReduceSum": {"keepdims": 0}, "ReduceMean": {"keepdims": 0}, "Cast": {"to": 7},  # 7: int64
                  "OneHot": {"axis": -1}, "Concat": {"axis": 1}}
    for op, inputs, output in nodes:
        graph.node.append(helper.make_node(op, inputs, [output], name=output, **attributes.get(op, {})))


def _check(adapted, data: bytes) -> dict:
    """The standalone graph's probabilities (and the logits the unknown score reads) agree with AdaptedModel's, on
    stored shots and random images -> {"images": how many were compared, "max_abs_diff": the largest difference}."""
    from .runtime.adaptation import softmax
    from .runtime.sessions import make_session

    spec = adapted.preprocess
    images = np.random.default_rng(0).integers(0, 256, (VERIFY_RANDOM, spec.channels, spec.size, spec.size),
                                               dtype=np.uint8)
    if adapted.bundle.shots is not None:
        images = np.concatenate([adapted.bundle.shots["images"][:VERIFY_SHOTS], images])
    x = to_float(images, spec)
    logits = adapted._outputs(x)[0]  # first: it names a bundle whose graph takes other images than it makes
    expected = softmax(logits)
    session = make_session(data, "standalone model.onnx")
    got, got_logits = session.run(["probabilities", "logits"], {"images": x})
    if got.shape != expected.shape or not probabilities_agree(got, expected, logits) or \
            got_logits.shape != logits.shape or not agrees(got_logits, logits):
        difference = float(np.abs(got - expected).max()) if got.shape == expected.shape else got.shape
        raise FastadaptError(f"{_named(adapted)}: the standalone ONNX model disagrees with fastadapt's "
                             f"predictions (max |difference| {difference}); nothing was written, please report it")
    return {"images": len(x), "max_abs_diff": float(np.abs(got - expected).max())}


def export_onnx(adapted, path, recipe_file=None) -> dict:
    """Write ``path`` (the ONNX model) and ``recipe_file`` (default: beside it, .preprocess.json): both or neither."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise FastadaptError(f"export_onnx needs a file name such as 'model.onnx', got {printable(repr(path))}")
    path = os.fspath(path)
    if recipe_file is None:
        recipe_file = _recipe_path(path)
        _refuse_recipe_folder(path)
    recipe_file = os.fspath(recipe_file)
    for out, example in ((path, "model.onnx"), (recipe_file, "model.preprocess.json")):
        refuse_unwritable(out, example=example)
        probe_folder(out)  # before the minutes of building and checking, not after
        check_inputs(out, [adapted.path])
    if os.path.realpath(path) == os.path.realpath(recipe_file):
        raise FastadaptError(f"{printable(path)}: the model and its preprocessing recipe need two different files")
    described = recipe(adapted, os.path.basename(path))
    data = _build_onnx(adapted, described)
    described["verification"] = _check(adapted, data)
    # the small recipe first: write_all keeps the old contents of all but the last file in memory
    write_all({recipe_file: (json.dumps(described, indent=2) + "\n").encode(), path: data})
    return described


def export_command(source: str, out: str, fmt: str, sign=None) -> None:
    """``fastadapt export ADAPTED.fadapt --format onnx --out model.onnx``."""
    from .cli import check_out
    from .runtime import load

    if fmt not in ("fadapt", "onnx"):
        raise FastadaptError(f"--format must be fadapt or onnx, got '{printable(fmt)}'")
    if fmt == "fadapt":
        raise FastadaptError(f"{printable(source)}: is a file; 'fastadapt export' makes a bundle from a run folder, or "
                             f"with --format onnx a standalone ONNX model from an adapted bundle")
    if sign is not None:
        raise FastadaptError("--sign signs .fadapt bundles; an ONNX file carries no fastadapt signature (drop --sign)")
    check_out(out, "--out", "model.onnx", inputs=[source], suffix=".onnx")
    _refuse_recipe_folder(out, "--out")
    model = load(source)
    if model.kind != "adapted":
        raise FastadaptError(f"{printable(source)}: is a meta model with no classes; adapt it first "
                             f"('fastadapt adapt --model {printable(source)} --shots DIR --out adapted.fadapt'), "
                             f"then export the adapted bundle")
    described = export_onnx(model, out)
    check = described["verification"]
    print(f"wrote {printable(out)} ({os.path.getsize(out) / 1e6:.2f} MB, {len(model.classes)} classes) and "
          f"{printable(_recipe_path(out))}; probabilities agree with 'fastadapt predict' on {check['images']} images "
          f"(max |difference| {check['max_abs_diff']:.1e})")
