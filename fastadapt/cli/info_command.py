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


def _signatures(bundle) -> list:
    """[{"key", "valid"}] for each signature the bundle carries, each verified whatever the trusted keys (as
    the text's 'signature' row); a damaged signature member is one entry {"key": None, "valid": False}."""
    from .. import signing

    if bundle.signatures is None or bundle.manifest_bytes is None:
        return []
    try:
        found = signing.parse_signatures(bundle.signatures, "bundle")
    except FastadaptError:
        return [{"key": None, "valid": False}]
    message = signing.bundle_message(bundle.manifest_bytes)
    return [{"key": key, "valid": signing.verify(bytes.fromhex(key), message, signature)} for key, signature in found]


@app.command(rich_help_panel="On the device")
def info(
    model: Optional[Path] = typer.Argument(None, help="A .fadapt bundle (meta or adapted) or a built-in model's "
                                           "name (characters, photos). Default: the shipped characters model, whose "
                                           "model card this prints.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON instead, with "
                                 '"signatures": [{"key", "valid"}] added (what the text shows as \'signature\'; '
                                 "[] when unsigned)."),
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
        document = {**_finite(bundle.manifest), "signatures": _signatures(bundle)}
        print(json.dumps(document, indent=2))  # JSON escapes control characters itself
        return
    print(describe_bundle(bundle))
