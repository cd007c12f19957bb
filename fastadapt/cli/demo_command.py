"""``fastadapt demo``: a shipped model learns a few classes from the example pictures shipped with it.

The characters model (the default) learns 8 hand-drawn shapes; a colour model (``--model photos``)
learns 6 photos (crops of public-domain / CC0 photos, scripts/make_photo_examples.py)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import FastadaptError
from ..manifest import printable
from . import app, check_out

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EXAMPLES = ASSETS / "examples"  # drawings, for grayscale models
PHOTO_EXAMPLES = ASSETS / "photo_examples"  # photos, for colour models


def _images(folder: Path) -> list:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg"))


def _trained_shots(manifest: dict) -> int:
    """The shots per class of the model's training tasks (provenance), within the demo's 1..5; else 1."""
    provenance = manifest.get("provenance") if isinstance(manifest.get("provenance"), dict) else {}
    config = provenance.get("config") if isinstance(provenance.get("config"), dict) else provenance
    shots = config.get("shots")
    return min(max(shots, 1), 5) if isinstance(shots, int) and not isinstance(shots, bool) else 1


@app.command(rich_help_panel="On the device")
def demo(
    shots: Optional[int] = typer.Option(None, "--shots", min=1, max=5, help="Pictures per class to learn from (1-5). "
                                        "\\[default: as many as the model was meta-trained with, at most 5: 1 for "
                                        "characters, 5 for photos]", show_default=False),
    model: Optional[Path] = typer.Option(None, "--model", help="A meta-trained bundle or a built-in model: "
                                         "characters (the default: 8 drawn shapes) or photos (6 photos)."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Also write a contact sheet PNG of the predictions."),
) -> None:
    """Teach a model new classes from --shots pictures each, then classify new pictures of them.

    The default (characters) model learns 8 hand-drawn shapes and classifies 40 new drawings (fastadapt/assets/
    examples, the same as examples/ in a checkout, made by this project's own drawing code); a colour model
    such as --model photos learns 6 photos from crops of them and classifies 30 other crops (fastadapt/assets/
    photo_examples: public-domain and CC0 photos). Uses only the installed package. Prints each prediction,
    the accuracy and the adaptation time.

    Example: fastadapt demo --shots 5 --sheet demo.png;  fastadapt demo --model photos
    """
    from rich.console import Console
    from rich.table import Table

    from ..runtime import load

    if sheet is not None:
        check_out(sheet, "--sheet", "demo.png", inputs=[model, EXAMPLES, PHOTO_EXAMPLES], suffix=".png")
    loaded = load(model)
    shots = shots or _trained_shots(loaded.manifest)
    photos = loaded.preprocess.channels == 3
    examples, kind = (PHOTO_EXAMPLES, ("photo", "photos")) if photos else (EXAMPLES, ("shape", "drawings"))
    shot_root, query_root = examples / "shots", examples / "queries"
    if not shot_root.is_dir():
        raise FastadaptError(f"{printable(examples)}: the example {kind[1]} are missing from this install; "
                             f"reinstall fastadapt")
    support = {d.name: _images(d)[:shots] for d in sorted(shot_root.iterdir()) if d.is_dir()}
    start = time.perf_counter()
    adapted = loaded.adapt(support)
    adapt_seconds = time.perf_counter() - start
    queries = _images(query_root)
    truths = [p.parent.name for p in queries]
    start = time.perf_counter()
    predictions = adapted.predict([str(p) for p in queries], top=1)
    predict_ms = 1000 * (time.perf_counter() - start) / len(queries)

    console = Console()
    table = Table(title=f"{len(support)} {kind[0]}s learned from {shots} picture(s) each; {len(queries)} new pictures")
    for column in ("picture", f"true {kind[0]}", "predicted", "probability", ""):
        table.add_column(column)
    for path, truth, pred in zip(queries, truths, predictions):
        ok = pred.label == truth
        table.add_row(path.name, truth, pred.label, f"{100 * pred.probability:.1f}%",
                      "[green]✓[/green]" if ok else "[red]✗[/red]")
    console.print(table)
    correct = sum(p.label == t for p, t in zip(predictions, truths))
    steps = adapted.manifest["adaptation"]["steps"]
    console.print(f"accuracy {correct}/{len(queries)} = {100 * correct / len(queries):.1f}%  |  adaptation "
                  f"({steps} SGD step{'' if steps == 1 else 's'} on {shots * len(support)} images, incl. reading them): {adapt_seconds:.2f} s  |  "
                  f"prediction: {predict_ms:.2f} ms per image")
    # plain print, not Rich: a file name is no markup ('[/x].fadapt' broke it), and printable keeps escapes out
    print(f"model: {printable(os.path.basename(loaded.path or ''))}  (fastadapt info {printable(loaded.path)} for its "
          f"model card)")
    if sheet is not None:
        from .sheet import contact_sheet

        contact_sheet([str(p) for p in queries], predictions, str(sheet))
        print(f"wrote {printable(sheet)}", file=sys.stderr)  # stdout holds only the results
