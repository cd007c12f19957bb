"""``fastadapt info``: describe a bundle (torch-free); the text is the library's (runtime/describe.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import FastadaptError
from ..manifest import printable
from . import app


def _finite(value):
    """``value`` with NaN and infinities (which JSON cannot hold) as null, so --json prints valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


@app.command(rich_help_panel="On the device")
def info(
    model: Optional[Path] = typer.Argument(None, help="A .fadapt bundle (meta or adapted) or a built-in model's "
                                           "name (characters, photos). Default: the shipped characters model, whose "
                                           "model card this prints.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON instead."),
    # Annotated, so that a direct call info(path, False) gets None here, not Typer's option object
    model_option: Annotated[Optional[Path], typer.Option("--model", help="The same as the argument, as 'adapt' and "
                            "'evaluate' name a model: e.g. --model photos.", show_default=False)] = None,
) -> None:
    """Describe a bundle: kind, architecture, preprocessing, inner-loop recipe, classes, provenance, evaluation.

    The bundle is fully verified (format version, manifest fields and SHA-256 of every member) before
    anything is shown; text from the bundle is printed with control characters escaped.
    """
    from ..bundle import read_bundle
    from ..runtime.describe import describe_bundle
    from ..runtime.loading import model_path

    if model is not None and model_option is not None and model != model_option:
        raise FastadaptError(f"info got two models, '{printable(model)}' and --model '{printable(model_option)}'; "
                             f"name one")
    bundle = read_bundle(model_path(model if model is not None else model_option))
    if as_json:
        print(json.dumps(_finite(bundle.manifest), indent=2))  # JSON escapes control characters itself
        return
    print(describe_bundle(bundle))
