"""Validation of a bundle's manifest: every field the runtime uses, by type and range, before any use.

A manifest comes from a file anyone may have crafted, so ``validate_manifest`` checks what the runtime
reads (kind, preprocess, inner_loop, parameters, members, classes, and the few free-form fields that
``fastadapt info`` and ``evaluate`` format) and bounds the rest (size, nesting). Limits come from the
format, not from the machine: a bundle that passes cannot make the runtime allocate without bound or
loop for ever. Keys this version does not know are allowed (newer exporters may add some), except inside
``preprocess`` and ``inner_loop``: those define the device's arithmetic, so a key there that this version
would ignore could change the answers, and is refused as needing a newer fastadapt.

``printable`` makes any string from a bundle safe to print on a terminal (no escape sequences).

Torch-free: part of the on-device runtime.
"""

from __future__ import annotations

import math
import re
import unicodedata

from .errors import FastadaptError

FORMAT = "fastadapt-bundle"
FORMAT_VERSION = 3  # the newest this fastadapt reads; 2 adds inner_loop.head_scale, 3 the colour cue
MEMBERS = ("forward.onnx", "step.onnx", "params.npz")
# adapted bundles that can add or remove classes: both, or neither (see bundle.py)
OPTIONAL_MEMBERS = ("meta_params.npz", "shots.npz")
HEAD = ("head.weight", "head.bias")
COLOUR = ("colour.weight", "colour.bias")  # an adapted model's colour head (runtime/colour.py), outside the graphs
COLOUR_BINS = (2, 4, 8, 16)  # levels per channel a colour head may use
MAX_COLOUR_SCALE = 1e6  # a = w sqrt(feature spacing / colour spacing): tens for the photos model

# Limits. Each is far above what a real bundle needs and low enough that a crafted one stays cheap.
MAX_MANIFEST_BYTES = 1 << 20  # 1 MiB; the shipped default's manifest is 5 KB
MAX_DEPTH = 32  # JSON nesting; the exporter writes 4 levels
MAX_IMAGE_SIZE = 1024  # preprocess.size; memory per image grows with its square (Conv4 papers use 28..84)
MIN_IMAGE_SIZE = 8  # as images.Preprocess
MAX_STEPS = 1000  # inner_loop.steps; meta-trained recipes use 1..10, each step is a full pass of the graph
MAX_LR = 1e6  # inner_loop.lr: finite and positive; beyond this, nothing sensible was meta-trained
MAX_HEAD_SCALE = 1e6  # inner_loop.head_scale: finite and positive (the prototype head's temperature)
MIN_HEAD_SCALE = 1e-6  # the photos model's is 0.1; far below, float32 distances and scores underflow
MAX_NORMALISATION = 1e3  # |preprocess.mean| and preprocess.std, of pixels in [0, 1]: beyond, float32 overflows
MIN_STD = 1e-3  # preprocess.std: images are divided by it (the shipped models' are 0.2-0.5)
MAX_PARAMETERS = 1000  # tensors; a Conv4 has 16 + head
MAX_NAME_CHARS = 256  # a parameter name
MAX_CLASSES = 10_000  # adapted bundles: head rows
MAX_LABEL_CHARS = 256  # a class name
MAX_FEATURE_DIM = 1 << 20  # architecture.feature_dim (Conv4: 64 at 28x28, 1600 at 84x84)
FITS = ("pad", "stretch", "crop")  # preprocess.fit (images.Preprocess), when present
RESIZES = ("lanczos",)  # preprocess.resize: the one filter images.py implements
# Every key these sections have held in any format version (images.Preprocess.to_dict; InnerLoop.to_dict with
# the exporter's "adapted" and "learned_lrs"): anything else is a newer writer's, which would change the answers.
PREPROCESS_KEYS = ("size", "channels", "invert", "mean", "std", "fit", "resize")
INNER_LOOP_KEYS = ("steps", "lr", "adapt", "loss", "head_init", "head_scale", "adapted", "learned_lrs")
NEWER = "a newer fastadapt may read it ('pip install -U fastadapt')"
HEAD_INITS = ("zero", "prototype", "learned")
KINDS = ("meta", "adapted")
# model_card: {section: text}. The shipped default's sections, in the order 'fastadapt info' prints them
# first; others are allowed (and printed after them).
CARD_SECTIONS = ("intended_use", "not_for", "data", "training", "evaluation", "limitations")
MAX_CARD_SECTIONS = 32
MAX_CARD_CHARS = 8000  # one section's text

_HEX64 = re.compile(r"[0-9a-f]{64}")


class _Invalid(Exception):
    """One field's problem; turned into a FastadaptError naming the bundle."""


def printable(text) -> str:
    """``text`` (or str(text)) with control and invisible formatting characters escaped (\\x1b, \\n, \\u202e),
    so a string from a bundle cannot move the cursor, recolour or rewrite the terminal."""
    text = text if isinstance(text, str) else str(text)
    out = []
    for char in text:
        # Cc: C0/C1 controls (ESC, CR, ...); Cf: invisible format characters such as bidi overrides
        # (ZWJ excepted: it joins emoji); Zl/Zp: line and paragraph separators; Cs: lone surrogates.
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs") and char != "\u200d":
            code = ord(char)
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char) or
                       (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"))
        else:
            out.append(char)
    return "".join(out)


def _show(value) -> str:
    """A short, printable rendering of a bad value for an error message."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001  (a value from JSON always has a repr; be safe anyway)
        text = f"<{type(value).__name__}>"
    text = printable(text)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite int or float (not bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _need(ok: bool, field: str, what: str, value) -> None:
    if not ok:
        raise _Invalid(f"manifest field {field} must be {what}, got {_show(value)}")


def _depth(value, limit: int) -> int:
    """Nesting depth of a JSON value, stopping once it passes ``limit``."""
    stack, deepest = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _optional_dict(manifest: dict, key: str) -> dict:
    value = manifest.get(key)
    _need(value is None or isinstance(value, dict), key, "an object or null", value)
    return value or {}


def format_version_of(manifest: dict) -> int:
    """The lowest format version that describes ``manifest``: 1 unless it uses a version-2 field (a prototype
    head scale other than 1) or a version-3 one (the colour cue, which an older runtime would silently
    leave out of its predictions), so that bundles which need nothing new stay readable by older runtimes."""
    if manifest.get("colour"):
        return 3
    return 2 if (manifest.get("inner_loop") or {}).get("head_scale", 1.0) != 1 else 1


def _check_version(manifest: dict) -> None:
    _need(manifest.get("format") == FORMAT, "format", f"'{FORMAT}' (this is not a fastadapt bundle)",
          manifest.get("format"))
    version = manifest.get("format_version")
    _need(_is_int(version) and version >= 1, "format_version", "a whole number >= 1", version)
    if version > FORMAT_VERSION:
        raise FastadaptError(f"bundle format version {version} is newer than this fastadapt reads "
                             f"({FORMAT_VERSION}); upgrade with 'pip install -U fastadapt'")


def _refuse_unknown_keys(section: dict, field: str, known: tuple) -> None:
    """A key this version would silently ignore in a section that decides the device's answers."""
    for key in section:
        if key not in known:
            raise FastadaptError(f"manifest field {field} holds {_show(key)}, which this fastadapt does not know; {NEWER}")


def _check_preprocess(manifest: dict) -> None:
    pre = manifest.get("preprocess")
    _need(isinstance(pre, dict), "preprocess", "an object", pre)
    _refuse_unknown_keys(pre, "preprocess", PREPROCESS_KEYS)
    size, channels = pre.get("size"), pre.get("channels")
    _need(_is_int(size) and MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE, "preprocess.size",
          f"a whole number {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}", size)
    _need(channels in (1, 3) and _is_int(channels), "preprocess.channels", "1 or 3", channels)
    _need(isinstance(pre.get("invert"), bool), "preprocess.invert", "true or false", pre.get("invert"))
    for key in ("mean", "std"):
        values = pre.get(key)
        _need(isinstance(values, list) and len(values) in (1, channels) and all(map(_is_number, values)),
              f"preprocess.{key}", f"a list of 1 or {channels} finite numbers", values)
    _need(all(abs(v) <= MAX_NORMALISATION for v in pre["mean"]), "preprocess.mean",
          f"numbers in [-{MAX_NORMALISATION:g}, {MAX_NORMALISATION:g}] (pixels are in [0, 1])", pre["mean"])
    _need(all(MIN_STD <= v <= MAX_NORMALISATION for v in pre["std"]), "preprocess.std",
          f"numbers in [{MIN_STD:g}, {MAX_NORMALISATION:g}] (images are divided by it)", pre["std"])
    if "fit" in pre:
        _need(pre["fit"] in FITS and isinstance(pre["fit"], str), "preprocess.fit", " or ".join(FITS), pre["fit"])
    if "resize" in pre and (not isinstance(pre["resize"], str) or pre["resize"] not in RESIZES):
        raise FastadaptError(f"manifest field preprocess.resize must be {' or '.join(RESIZES)} (the filter this "
                             f"fastadapt implements), got {_show(pre['resize'])}; {NEWER}")
    arch = manifest.get("architecture") or {}
    # the graph's input shape is fixed at export: a preprocess that disagrees would only fail later
    for key, arch_key in (("size", "image_size"), ("channels", "channels")):
        if arch.get("name", "conv4") in ("conv4", "resnet12") and arch_key in arch:
            _need(arch[arch_key] == pre[key], f"preprocess.{key}", f"architecture.{arch_key} ({_show(arch[arch_key])})",
                  pre[key])


def _check_parameters(manifest: dict) -> list:
    names = manifest.get("parameters")
    _unique_names(names, "parameters", 1, MAX_PARAMETERS, MAX_NAME_CHARS)
    members = manifest.get("members")
    _need(isinstance(members, dict), "members", "an object {member: sha256}", members)
    optional = [name for name in OPTIONAL_MEMBERS if name in members]
    for name in MEMBERS + tuple(optional):
        _need(isinstance(members.get(name), str) and _HEX64.fullmatch(members[name]) is not None,
              f"members.{name}", "a SHA-256 in hex", members.get(name))
    if optional:
        _need(len(optional) == len(OPTIONAL_MEMBERS) and manifest.get("kind") == "adapted", "members",
              f"to list {' and '.join(OPTIONAL_MEMBERS)} together, in adapted bundles only", sorted(members))
    return names


def _check_inner_loop(manifest: dict, names: list) -> None:
    loop = manifest.get("inner_loop")
    _need(isinstance(loop, dict), "inner_loop", "an object", loop)
    _refuse_unknown_keys(loop, "inner_loop", INNER_LOOP_KEYS)
    steps, lr = loop.get("steps"), loop.get("lr")
    _need(_is_int(steps) and 0 <= steps <= MAX_STEPS, "inner_loop.steps", f"a whole number 0..{MAX_STEPS}", steps)
    _need(_is_number(lr) and 0 < lr <= MAX_LR, "inner_loop.lr", f"a finite number in (0, {MAX_LR:g}]", lr)
    head_init = loop.get("head_init", "zero")
    if head_init not in HEAD_INITS or not isinstance(head_init, str):
        raise _Invalid(f"manifest field inner_loop.head_init must be one of {', '.join(HEAD_INITS)}, got "
                       f"{_show(head_init)} (a newer fastadapt may know it: 'pip install -U fastadapt')")
    head_scale = loop.get("head_scale", 1.0)
    _need(_is_number(head_scale) and MIN_HEAD_SCALE <= head_scale <= MAX_HEAD_SCALE
          and (head_scale == 1 or head_init == "prototype"), "inner_loop.head_scale",
          f"a number in [{MIN_HEAD_SCALE:g}, {MAX_HEAD_SCALE:g}], and 1 unless head_init is 'prototype'",
          head_scale)
    for key, allowed in (("adapt", ("all", "head")), ("loss", ("cross_entropy", "mse"))):
        if key in loop:
            _need(isinstance(loop[key], str) and loop[key] in allowed, f"inner_loop.{key}", " or ".join(allowed),
                  loop[key])
    adapted = loop.get("adapted")
    known = set(names) | set(HEAD)  # zero/prototype heads are built on the device, so not among the parameters
    _need(isinstance(adapted, list) and len(adapted) <= len(known), "inner_loop.adapted", "a list of parameter names",
          adapted if not isinstance(adapted, list) else f"{len(adapted)} items")
    for name in adapted:
        _need(isinstance(name, str) and name in known, "inner_loop.adapted", "names from 'parameters'", name)
    if "learned_lrs" in loop:  # meta-learned inner rates: one row per step, one rate per adapted tensor
        rates = loop["learned_lrs"]
        _need(isinstance(rates, list) and 1 <= len(rates) <= MAX_STEPS, "inner_loop.learned_lrs",
              f"a list of 1..{MAX_STEPS} rows", rates if not isinstance(rates, list) else f"{len(rates)} rows")
        for row in rates:
            _need(isinstance(row, list) and len(row) == len(adapted) and
                  all(_is_number(x) and abs(x) <= MAX_LR for x in row), "inner_loop.learned_lrs",
                  f"rows of {len(adapted)} finite numbers (one per adapted parameter) of at most {MAX_LR:g}",
                  row if not isinstance(row, list) else f"a row of {len(row)}")
    if head_init == "learned" or manifest.get("kind") == "adapted":
        _need(all(h in names for h in HEAD), "parameters", "to include head.weight and head.bias (head_init "
              f"'{head_init}', kind '{manifest.get('kind')}')", [n for n in names if n.startswith("head")])


def _check_classes(manifest: dict) -> None:
    classes = manifest.get("classes")
    if manifest.get("kind") != "adapted":
        _need(classes is None or isinstance(classes, list), "classes", "null or a list", classes)
        return
    _unique_names(classes, "classes", 2, MAX_CLASSES, MAX_LABEL_CHARS)


def _unique_names(names, field: str, low: int, high: int, max_chars: int) -> None:
    """A list of ``low``..``high`` distinct non-empty strings of at most ``max_chars`` characters."""
    _need(isinstance(names, list) and low <= len(names) <= high, field, f"a list of {low}..{high} names",
          names if not isinstance(names, list) else f"{len(names)} items")
    seen = set()
    for name in names:
        _need(isinstance(name, str) and 0 < len(name) <= max_chars, field, f"names of 1..{max_chars} characters", name)
        _need(name not in seen, field, "unique names", name)
        seen.add(name)


EVALUATION_NUMBERS = ("accuracy_pct", "ci95_pct", "adapt_ms_median")  # of an evaluation record, when present


def valid_evaluation(row: dict) -> bool:
    """Whether an evaluation record's numbers are ones a manifest accepts (finite numbers or null)."""
    return all(row.get(key) is None or _is_number(row[key]) for key in EVALUATION_NUMBERS)


def _check_free_form(manifest: dict) -> None:
    """Fields that are mostly free-form but read by info, evaluate or the CLI: the types they rely on."""
    arch = _optional_dict(manifest, "architecture")
    if "feature_dim" in arch and arch["feature_dim"] is not None:
        _need(_is_int(arch["feature_dim"]) and 1 <= arch["feature_dim"] <= MAX_FEATURE_DIM,
              "architecture.feature_dim", f"a whole number 1..{MAX_FEATURE_DIM}", arch["feature_dim"])
    provenance = _optional_dict(manifest, "provenance")
    config = provenance.get("config") if isinstance(provenance.get("config"), dict) else provenance
    for key in ("seed", "val_classes"):  # evaluate re-creates the training split from them
        if key in config:
            _need(_is_int(config[key]) and 0 <= config[key] < 2**32, f"provenance.config.{key}",
                  "a whole number 0..2**32-1", config[key])
    evaluation = manifest.get("evaluation")
    rows = [evaluation] if isinstance(evaluation, dict) else evaluation
    _need(rows is None or isinstance(rows, list) and all(isinstance(r, dict) for r in rows), "evaluation",
          "a list of objects", evaluation)
    for row in rows or ():
        for key in EVALUATION_NUMBERS:
            if row.get(key) is not None:
                _need(_is_number(row[key]), f"evaluation.{key}", "a finite number", row[key])
    verification = _optional_dict(manifest, "verification")
    if "max_abs_diff" in verification:
        _need(_is_number(verification["max_abs_diff"]), "verification.max_abs_diff", "a finite number",
              verification["max_abs_diff"])
    adaptation = _optional_dict(manifest, "adaptation")
    for key in ("from", "shots_per_class"):
        _need(adaptation.get(key) is None or isinstance(adaptation[key], dict), f"adaptation.{key}",
              "an object or null", adaptation.get(key))
    counts = adaptation.get("shots_per_class") or {}
    _need(all(_is_int(n) and n >= 0 for n in counts.values()), "adaptation.shots_per_class",
          "whole numbers", list(counts.values())[:3])
    card = _optional_dict(manifest, "model_card")
    _need(len(card) <= MAX_CARD_SECTIONS, "model_card", f"at most {MAX_CARD_SECTIONS} sections", f"{len(card)} sections")
    for key, text in card.items():
        _need(0 < len(key) <= 64, "model_card", "section names of 1..64 characters", key)
        _need(isinstance(text, str) and len(text) <= MAX_CARD_CHARS, f"model_card.{printable(key)}",
              f"a text of at most {MAX_CARD_CHARS} characters", text)
    unknown = _optional_dict(manifest, "unknown")
    if unknown.get("threshold") is not None:
        _need(_is_number(unknown["threshold"]), "unknown.threshold", "a finite number", unknown["threshold"])


REEXPORT = "the bundle is damaged or was not made by 'fastadapt export'/'fastadapt adapt', re-export it"


def _check_unknown_calibration(manifest: dict) -> None:
    """manifest["unknown_calibration"]: {"threshold": the nearest-prototype score threshold for "unknown"} that
    adaptation stores in adapted models instead of the default (runtime/unknown.py); other keys describe it."""
    calibration = manifest.get("unknown_calibration")
    if calibration is None:
        return
    _need(isinstance(calibration, dict), "unknown_calibration", "an object", calibration)
    _need(_is_number(calibration.get("threshold")), "unknown_calibration.threshold", "a finite number",
          calibration.get("threshold"))


def _check_colour(manifest: dict, names: list) -> None:
    """manifest["colour"] (adapted models only): {"bins": levels per channel, "scale": a}; see runtime/colour.py."""
    cue = manifest.get("colour")
    if cue is None:
        _need(not any(name in names for name in COLOUR), "parameters", f"no colour head ({', '.join(COLOUR)}) "
              f"without a 'colour' entry", [name for name in names if name in COLOUR])
        return
    _need(isinstance(cue, dict) and manifest.get("kind") == "adapted", "colour", "an object, in adapted bundles only",
          cue if not isinstance(cue, dict) else manifest.get("kind"))
    bins, scale = cue.get("bins"), cue.get("scale")
    # powers of two share no factor with 255, so no uint8 pixel lands on a bin edge (runtime/colour.py)
    _need(bins in COLOUR_BINS and _is_int(bins), "colour.bins", " or ".join(map(str, COLOUR_BINS)), bins)
    _need(_is_number(scale) and 0 < scale <= MAX_COLOUR_SCALE, "colour.scale", f"a number in (0, {MAX_COLOUR_SCALE:g}]",
          scale)
    _need((manifest.get("preprocess") or {}).get("channels") == 3, "colour", "only in 3-channel models",
          (manifest.get("preprocess") or {}).get("channels"))
    _need(all(name in names for name in COLOUR), "parameters", f"to list {' and '.join(COLOUR)} (the colour head)",
          f"{len(names)} names")


def validate_manifest(manifest, where: str, fix: str = REEXPORT) -> dict:
    """``manifest`` if every field the runtime uses has the right type and range, else a one-line
    FastadaptError naming ``where`` (the bundle), the field and ``fix``."""
    try:
        if not isinstance(manifest, dict):
            raise _Invalid(f"manifest.json must hold an object, got {type(manifest).__name__}")
        if _depth(manifest, MAX_DEPTH) > MAX_DEPTH:
            raise _Invalid(f"manifest.json is nested deeper than {MAX_DEPTH} levels")
        _check_version(manifest)
        kind = manifest.get("kind", "meta")
        _need(isinstance(kind, str), "kind", "'meta' or 'adapted'", kind)
        if kind not in KINDS:
            raise FastadaptError(f"unknown bundle kind {_show(kind)}; a newer fastadapt may read it "
                                 f"('pip install -U fastadapt')")
        _check_free_form(manifest)
        _check_preprocess(manifest)
        names = _check_parameters(manifest)
        _check_inner_loop(manifest, names)
        _check_classes(manifest)
        _check_colour(manifest, names)
        _check_unknown_calibration(manifest)
    except _Invalid as exc:
        raise FastadaptError(f"{printable(where)}: {exc}; {fix}") from None
    except FastadaptError as exc:
        raise FastadaptError(f"{printable(where)}: {exc}") from None
    return manifest
