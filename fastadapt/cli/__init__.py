"""The ``fastadapt`` command line (Typer). Training commands import torch lazily, inside the command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from ..errors import FastadaptError

app = typer.Typer(
    name="fastadapt",
    help="Few-shot adaptation on the edge: meta-train a model once (train, evaluate, export), then teach "
         "it new classes from a handful of images on the device (adapt, predict), without torch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def check_out(out, flag: str = "--out", example: str = "adapted.fadapt") -> None:
    """Fail fast, before any work, when an output file cannot be written where the user asked."""
    out = Path(out)
    folder = out.resolve().parent
    if out.is_dir():
        raise FastadaptError(f"{flag} {out}: is a folder; give a file name such as {out / example}")
    if not folder.is_dir():
        raise FastadaptError(f"{flag} {out}: folder {folder} does not exist; create it first")


from . import demo_command, info_command, runtime_commands, sign_command, train_commands  # noqa: E402,F401  (register commands)


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except FastadaptError as exc:
        rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""  # under torchrun
        print(f"error: {rank}{exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
