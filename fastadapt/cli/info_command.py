"""``fastadapt info``: describe a bundle (torch-free)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from . import app


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return " ".join(_fmt(v) for v in value) if len(value) <= 8 else f"{len(value)} items"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


@app.command(rich_help_panel="On the device")
def info(
    model: Optional[Path] = typer.Argument(None, help="A .fadapt bundle (meta or adapted). Default: the shipped "
                                           "model, whose model card this prints.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON instead."),
) -> None:
    """Describe a bundle: kind, architecture, preprocessing, inner-loop recipe, classes, provenance, evaluation.

    The bundle is fully verified (format version and SHA-256 of every member) before anything is shown.
    """
    from ..bundle import read_bundle
    from ..runtime.loading import default_model_path

    model = model if model is not None else Path(default_model_path())

    bundle = read_bundle(str(model))
    m = bundle.manifest
    if as_json:
        print(json.dumps(m, indent=2))
        return
    size = os.path.getsize(model)
    count = sum(int(v.size) for v in bundle.params.values())
    print(f"{model}  ({m.get('kind', 'meta')} bundle, format {m.get('format_version')}, {size / 1e6:.2f} MB, "
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
        classes = m.get("classes", [])
        shown = ", ".join(classes[:20]) + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
        rows.append(("classes", f"{len(classes)}: {shown}"))
        a = m.get("adaptation") or {}
        if a:
            rows.append(("adapted", f"{a.get('steps')} steps at lr {a.get('lr')} on "
                                    f"{sum((a.get('shots_per_class') or {}).values())} images from "
                                    f"{(a.get('from') or {}).get('path')} ({a.get('created')})"))
    for key, value in (m.get("provenance") or {}).items():
        rows.append((f"provenance.{key}", value))
    check = m.get("verification")
    if isinstance(check, dict) and "max_abs_diff" in check:
        rows.append(("verification", f"onnxruntime vs torch: max |difference| {check['max_abs_diff']:.1e} after "
                                     f"{check.get('steps')} SGD steps on a sample task (at export)"))
    for name, value in m.items():
        if name not in {"format", "format_version", "kind", "architecture", "preprocess", "inner_loop", "classes",
                        "adaptation", "provenance", "evaluation", "parameters", "members", "verification"} \
                and value is not None:
            rows.append((name, value))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {_fmt(value) if not isinstance(value, str) else value}")
    evaluations = m.get("evaluation") or []
    if isinstance(evaluations, dict):
        evaluations = [evaluations]
    if evaluations:
        print("  evaluation")
    for e in evaluations:
        if "accuracy_pct" in e:
            what = ", ".join(f"{k} {e[k]}" for k in ("ways", "shots", "query", "steps", "tasks", "data", "protocol")
                             if k in e and e[k] is not None)
            if "evaluated_with" in e:
                what += f", with {e['evaluated_with']}"
            if "adapt_ms_median" in e:
                what += f", adaptation {e['adapt_ms_median']} ms/task"
            print(f"    {e['accuracy_pct']:.2f}% ± {e.get('ci95_pct', float('nan')):.2f}  ({what})")
        else:
            print(f"    {_fmt({k: v for k, v in e.items() if k != 'per_task_accuracy'})}")
