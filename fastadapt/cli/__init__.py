"""The ``fastadapt`` command line (Typer). Training commands import torch lazily, inside the command."""

from __future__ import annotations

import os
import signal
import sys
import threading

import typer

from ..errors import FastadaptError
from ..outputs import check_inputs, refuse_unwritable

app = typer.Typer(
    name="fastadapt",
    help="Few-shot adaptation on the edge: meta-train a model once (train, evaluate, export), then teach "
         "it new classes from a handful of images on the device (adapt, predict), without torch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def check_out(out, flag: str = "--out", example: str = "adapted.fadapt", inputs=(), suffix: str | None = None) -> None:
    """Fail fast, before any work, when an output file cannot or must not be written where the user asked.

    ``inputs``: the paths this command reads (files or folders; None entries are skipped): the output
    may not be one of them or lie inside one. ``suffix``: the only file name ending accepted (e.g. ".png").
    The rules themselves live in fastadapt.outputs (write_atomic applies them again when writing).
    """
    refuse_unwritable(os.fspath(out), flag, example)
    if suffix is not None and not os.fspath(out).lower().endswith(suffix):
        stem = os.path.splitext(os.fspath(out))[0]
        raise FastadaptError(f"{flag} {out}: {flag} writes {suffix[1:].upper()} only; name the file with "
                             f"{suffix}, e.g. {stem}{suffix}")
    check_inputs(out, inputs, flag)


from . import demo_command, info_command, runtime_commands, sign_command, train_commands  # noqa: E402,F401  (register commands)


def _terminate(signum, frame):
    # SIGTERM (kill, systemd, a scheduler) unwinds like Ctrl-C, so every finally/except cleanup runs:
    # write_atomic removes its temp file, the trainer releases its run folder lock
    raise SystemExit(128 + signum)


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2, never a traceback."""
    main_thread = threading.current_thread() is threading.main_thread()  # handlers can only be set there
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        app()
    except FastadaptError as exc:
        rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""  # under torchrun
        print(f"error: {rank}{exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
