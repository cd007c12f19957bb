"""``fastadapt demo``: the shipped default model learns 8 hand-drawn shapes from a few drawings each."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import FastadaptError
from . import app, check_out

EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"


def _images(folder: Path) -> list:
    return sorted(p for p in folder.rglob("*.png"))


@app.command(rich_help_panel="On the device")
def demo(
    shots: int = typer.Option(1, "--shots", min=1, max=5, help="Drawings per shape to learn from (1-5)."),
    model: Optional[Path] = typer.Option(None, "--model", help="A meta-trained bundle. Default: the shipped model."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Also write a contact sheet PNG of the predictions."),
) -> None:
    """Teach the default model 8 hand-drawn shapes from --shots drawings each, then classify 40 new drawings.

    Uses only the installed package: the example drawings ship inside it (fastadapt/assets/examples, the
    same as examples/ in a checkout), made by this project's own drawing code. Prints each prediction, the
    accuracy and the adaptation time.

    Example: fastadapt demo --shots 5 --sheet demo.png
    """
    from rich.console import Console
    from rich.table import Table

    from ..runtime import load

    if sheet is not None:
        check_out(sheet, "--sheet", "demo.png", inputs=[model, EXAMPLES], suffix=".png")
    shot_root, query_root = EXAMPLES / "shots", EXAMPLES / "queries"
    if not shot_root.is_dir():
        raise FastadaptError(f"{EXAMPLES}: the example drawings are missing from this install; reinstall fastadapt")
    loaded = load(model)
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
    table = Table(title=f"{len(support)} shapes learned from {shots} drawing(s) each; {len(queries)} new drawings")
    for column in ("drawing", "true shape", "predicted", "probability", ""):
        table.add_column(column)
    for path, truth, pred in zip(queries, truths, predictions):
        ok = pred.label == truth
        table.add_row(path.name, truth, pred.label, f"{100 * pred.probability:.1f}%",
                      "[green]✓[/green]" if ok else "[red]✗[/red]")
    console.print(table)
    correct = sum(p.label == t for p, t in zip(predictions, truths))
    steps = adapted.manifest["adaptation"]["steps"]
    console.print(f"accuracy {correct}/{len(queries)} = {100 * correct / len(queries):.1f}%  |  adaptation "
                  f"({steps} SGD steps on {shots * len(support)} images, incl. reading them): {adapt_seconds:.2f} s  |  "
                  f"prediction: {predict_ms:.2f} ms per image")
    console.print(f"model: {os.path.basename(loaded.path or '')}  (fastadapt info {loaded.path} for its model card)")
    if sheet is not None:
        from .sheet import contact_sheet

        contact_sheet([str(p) for p in queries], predictions, str(sheet))
        Console(stderr=True).print(f"wrote {sheet}")  # stdout holds only the results
