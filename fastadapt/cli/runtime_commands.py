"""Device-side commands: adapt, predict, info (torch-free: numpy, pillow, onnxruntime)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import FastadaptError, warn
from ..progress import lazy_reporter, stderr_console
from . import app, check_out

SHOTS_HELP = ("Folder with one subfolder per class, holding that class's example images (the folder name "
              "is the label): SHOTS/cat/1.png, SHOTS/dog/1.jpg ... At least 2 classes; any number of images "
              "per class, unbalanced is fine.")


@app.command(rich_help_panel="On the device")
def adapt(
    shots: Path = typer.Option(..., "--shots", help=SHOTS_HELP, show_default=False),
    out: Path = typer.Option(..., "--out", help="Where to write the adapted model (.fadapt). Written only "
                                                "when adaptation succeeds, atomically.", show_default=False),
    model: Optional[Path] = typer.Option(None, "--model", help="The meta-trained bundle to start from "
                                         "(made by 'fastadapt export'). Default: the model shipped with fastadapt."),
    steps: Optional[int] = typer.Option(None, "--steps", min=0, help="SGD steps on the shots. Default: the "
                                        "number the model was meta-trained for (see 'fastadapt info')."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Inner-loop learning rate. Default: the meta-trained "
                                       "value. Changing steps or lr leaves the recipe the model was trained for."),
) -> None:
    """Teach a meta-trained model your classes from a few images each, and save the adapted model.

    Runs exactly the inner loop the model was meta-trained for (head initialisation, then --steps SGD steps at --lr on all the shots) through ONNX Runtime; no torch needed. Prints the classes, the shots per class and the time taken.

    Example: fastadapt adapt --shots my_shots/ --out mine.fadapt && fastadapt predict --model mine.fadapt photo.png
    """
    from ..runtime import Model, load

    check_out(out)
    loaded = load(model)
    if not isinstance(loaded, Model):
        loaded.adapt()  # raises the explanation (already adapted; pass the meta model)
    reporter = lazy_reporter("adapting")
    try:
        adapted = loaded.adapt(shots, steps=steps, lr=lr, progress=reporter)
    finally:
        reporter.close()
    adapted.save(str(out))
    info = adapted.manifest["adaptation"]
    counts = info["shots_per_class"]
    print(f"adapted {os.path.basename(str(loaded.path))} to {len(counts)} classes "
          f"({sum(counts.values())} images, {info['steps']} steps at lr {info['lr']:g}) in {info['seconds']:.2f} s")
    width = max(len(c) for c in counts)
    for name, n in counts.items():
        print(f"  {name:<{width}}  {n} shot{'s' if n != 1 else ''}")
    if info["losses"]:
        print(f"support loss {info['losses'][0]:.4f} -> {info['losses'][-1]:.4f}")
    print(f"wrote {out}")


def _expand(inputs: List[Path]) -> list:
    from ..images import is_image_name

    paths = []
    for item in inputs:
        if item.is_dir():
            found = sorted(str(p) for p in item.rglob("*") if p.is_file() and is_image_name(p.name)
                           and not any(part.startswith(".") for part in p.relative_to(item).parts))
            if not found:
                raise FastadaptError(f"{item}: folder has no images (.png, .jpg, ...); pass image files or a folder of them")
            paths += found
        elif item.exists():
            paths.append(str(item))
        else:
            raise FastadaptError(f"{item}: no such image file or folder")
    return paths


@app.command(rich_help_panel="On the device")
def predict(
    images: List[Path] = typer.Argument(..., help="Image files, or folders searched recursively for images.",
                                        show_default=False),
    model: Path = typer.Option(..., "--model", help="An adapted model made by 'fastadapt adapt'.",
                               show_default=False),
    top: int = typer.Option(1, "--top", min=1, help="Show the N most likely classes for each image."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image per line: "
                                 '{"path", "label", "probability", "top": [{"label", "probability"}]}.'),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Also draw a contact sheet PNG: every image with "
                                         "its predicted label and probability."),
) -> None:
    """Classify images with an adapted model.

    Each image is predicted on its own (the answer never depends on the other images given). Unreadable files are skipped with a warning.

    Example: fastadapt predict --model mine.fadapt photos/ --top 3 --json > predictions.jsonl
    """
    from ..images import to_float, to_uint8
    from ..runtime import load

    loaded = load(model)
    if sheet is not None:
        check_out(sheet, "--sheet", "predictions.png")
    paths = _expand(images)
    if loaded.kind != "adapted":
        loaded.predict(paths)  # raises: adapt first
    arrays, kept = [], []
    for p in paths:
        try:
            arrays.append(to_uint8(p, loaded.preprocess))
            kept.append(p)
        except FastadaptError as exc:
            warn(f"{exc}; skipped")
    if not kept:
        raise FastadaptError(f"{paths[0]}{' and the others' if len(paths) > 1 else ''}: no readable image to predict")
    import numpy as np

    probabilities = loaded.probabilities(to_float(np.stack(arrays), loaded.preprocess))
    results = loaded.predictions(probabilities, top)
    for path, result in zip(kept, results):
        if as_json:
            print(json.dumps({"path": path, **result.to_dict()}))
        else:
            line = f"{path}\t{result.label}\t{100 * result.probability:.1f}%"
            if len(result.top) > 1:
                line += "\t(" + ", ".join(f"{lab} {100 * p:.1f}%" for lab, p in result.top[1:]) + ")"
            print(line)
    if sheet is not None:
        from .sheet import contact_sheet

        contact_sheet(kept, results, str(sheet))
        print(f"wrote {sheet}", file=sys.stderr if as_json else sys.stdout)


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
