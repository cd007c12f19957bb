"""``fastadapt info``: describe a bundle (torch-free)."""

from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path
from typing import Optional

import typer

from ..errors import FastadaptError
from ..manifest import printable
from . import app


MAX_SHOWN = 2000  # characters of one free-form value (provenance, evaluation) on one line
CARD_WIDTH = 100  # model card text is wrapped to this many columns


def _card(card: dict) -> list:
    """The model card's lines: its known sections first (manifest.CARD_SECTIONS), each wrapped and indented."""
    from ..manifest import CARD_SECTIONS

    lines = ["  model card"]
    for key in sorted(card, key=lambda k: (CARD_SECTIONS.index(k) if k in CARD_SECTIONS else len(CARD_SECTIONS))):
        title = printable(key).replace("_", " ")
        lines += textwrap.wrap(printable(card[key]), CARD_WIDTH, initial_indent=f"    {title}: ",
                               subsequent_indent="      ") or [f"    {title}:"]
    return lines


def _fmt(value, depth: int = 0) -> str:
    """One line for a JSON value from the manifest, escaped for the terminal and cut to MAX_SHOWN."""
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = " ".join(_fmt(v, depth + 1) for v in value) if len(value) <= 8 else f"{len(value)} items"
    elif isinstance(value, dict):
        text = ", ".join(f"{printable(k)}={_fmt(v, depth + 1)}" for k, v in list(value.items())[:40]) if depth < 4 \
            else f"{{{len(value)} keys}}"
    else:
        text = printable(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def _finite(value):
    """``value`` with NaN and infinities (which JSON cannot hold) as null, so --json prints valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _number(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


def _signature(path: str, bundle) -> str | None:
    """'signed by KEY (valid)' lines for the signature member, verified here whatever the trusted keys."""
    import zipfile

    from .. import signing

    if bundle.signed_by:
        return f"verified: signed by trusted key {bundle.signed_by}"
    with zipfile.ZipFile(path) as archive:
        if signing.SIGNATURES not in archive.namelist():
            return None
        info = archive.getinfo(signing.SIGNATURES)
        if info.file_size > 64 * 1024:
            return "malformed signature member"
        data, manifest = archive.read(info), archive.read("manifest.json")
    try:
        found = signing.parse_signatures(data, path)
    except FastadaptError:
        return "malformed signature member"
    message = signing.bundle_message(manifest)
    return "; ".join(f"{key} ({'valid' if signing.verify(bytes.fromhex(key), message, sig) else 'INVALID'})"
                     for key, sig in found) or None


@app.command(rich_help_panel="On the device")
def info(
    model: Optional[Path] = typer.Argument(None, help="A .fadapt bundle (meta or adapted). Default: the shipped "
                                           "model, whose model card this prints.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON instead."),
) -> None:
    """Describe a bundle: kind, architecture, preprocessing, inner-loop recipe, classes, provenance, evaluation.

    The bundle is fully verified (format version, manifest fields and SHA-256 of every member) before
    anything is shown; text from the bundle is printed with control characters escaped.
    """
    from ..bundle import read_bundle
    from ..runtime.loading import default_model_path

    model = model if model is not None else Path(default_model_path())

    bundle = read_bundle(str(model))
    m = bundle.manifest
    if as_json:
        print(json.dumps(_finite(m), indent=2))  # JSON escapes control characters itself
        return
    size = os.path.getsize(model)
    count = sum(int(v.size) for v in bundle.params.values())
    print(f"{printable(model)}  ({m.get('kind', 'meta')} bundle, format {m.get('format_version')}, {size / 1e6:.2f} MB, "
          f"{count:,} parameters)")
    arch = dict(m.get("architecture") or {})
    if arch.get("name") == "conv4":
        arch.pop("hidden", None), arch.pop("in_features", None)  # MLP-only fields
    recipe = dict(m.get("inner_loop") or {})
    adapted = recipe.pop("adapted", None)
    if isinstance(adapted, list):
        recipe["adapted"] = f"{len(adapted)} tensors" if recipe.get("adapt") == "all" else " ".join(adapted)
    rows = [("architecture", arch), ("preprocess", m.get("preprocess")), ("inner loop", recipe)]
    if m.get("kind") == "adapted":
        classes = m.get("classes") or []
        shown = ", ".join(classes[:20]) + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
        rows.append(("classes", f"{len(classes)}: {shown}"))
        a = m.get("adaptation") or {}
        if a:
            rows.append(("adapted", f"{_fmt(a.get('steps'))} steps at lr {_fmt(a.get('lr'))} on "
                                    f"{sum((a.get('shots_per_class') or {}).values())} images from "
                                    f"{_fmt((a.get('from') or {}).get('path'))}"
                                    + ("" if "shots.npz" in (m.get("members") or {}) else
                                       " (keeps no shots: classes cannot be added or removed)")))
    for key, value in (m.get("provenance") or {}).items():
        rows.append((f"provenance.{key}", value))
    check = m.get("verification")
    if isinstance(check, dict) and "max_abs_diff" in check:
        rows.append(("verification", f"onnxruntime vs torch: max |difference| {_number(check['max_abs_diff'], '.1e')} "
                                     f"after {_fmt(check.get('steps'))} SGD steps on a sample task (at export)"))
    signature = _signature(str(model), bundle)
    if signature:
        rows.append(("signature", signature))
    for name, value in m.items():
        if name not in {"format", "format_version", "kind", "architecture", "preprocess", "inner_loop", "classes",
                        "adaptation", "provenance", "evaluation", "parameters", "members", "verification",
                        "model_card"} \
                and value is not None:
            rows.append((name, value))
    rows = [(printable(key)[:60], value) for key, value in rows]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {_fmt(value)}")
    if m.get("model_card"):
        print("\n".join(_card(m["model_card"])))
    evaluations = m.get("evaluation") or []
    if isinstance(evaluations, dict):
        evaluations = [evaluations]
    if evaluations:
        print("  evaluation")
    for e in evaluations[:50]:
        if e.get("accuracy_pct") is not None:
            what = ", ".join(f"{k} {_fmt(e[k])}" for k in ("ways", "shots", "query", "steps", "tasks", "data", "protocol")
                             if k in e and e[k] is not None)
            if "evaluated_with" in e:
                what += f", with {_fmt(e['evaluated_with'])}"
            if e.get("safeguard") is True:
                what += ", safeguarded"
            if "adapt_ms_median" in e:
                what += f", adaptation {_fmt(e['adapt_ms_median'])} ms/task"
            print(f"    {_number(e['accuracy_pct'], '.2f')}% ± {_number(e.get('ci95_pct'), '.2f')}  ({what})")
        else:
            print(f"    {_fmt({k: v for k, v in e.items() if k != 'per_task_accuracy'})}")
    if len(evaluations) > 50:
        print(f"    ... ({len(evaluations)} in all)")
