"""The ``fastadapt`` command line (Typer). Training commands import torch lazily, inside the command."""

from __future__ import annotations

import os
import signal
import sys
import threading

import typer

from .. import __version__
from ..errors import FastadaptError, cli_warnings
from ..manifest import printable
from ..outputs import check_inputs, probe_folder, refuse_unwritable

app = typer.Typer(
    name="fastadapt",
    help="Few-shot adaptation on the edge: meta-train a model once (train, evaluate, export), then teach "
         "it new classes from a handful of images on the device (adapt, predict), without torch. Results go to "
         "stdout; progress, warnings and errors to stderr.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        print(f"fastadapt {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Options of fastadapt itself (the app's help text is the one given to typer.Typer above)."""


def check_out(out, flag: str = "--out", example: str = "adapted.fadapt", inputs=(), suffix: str | None = None) -> None:
    """Fail fast, before any work, when an output file cannot or must not be written where the user asked.

    ``inputs``: the paths this command reads (files or folders; None entries are skipped): the output
    may not be one of them or lie inside one. ``suffix``: the only file name ending accepted (e.g. ".png").
    The rules themselves live in fastadapt.outputs (write_atomic applies them again when writing).
    """
    out = os.fspath(out)
    refuse_unwritable(out, flag, example)
    probe_folder(out, flag)
    if suffix is not None and not out.lower().endswith(suffix):
        stem = os.path.splitext(out)[0]
        raise FastadaptError(f"{flag} {printable(out)}: {flag} writes {suffix[1:].upper()} only; name the file with "
                             f"{suffix}, e.g. {printable(stem + suffix)}")
    check_inputs(out, inputs, flag)


from . import demo_command, info_command, runtime_commands, sign_command, train_commands  # noqa: E402,F401  (register commands)


def _terminate(signum, frame):
    # SIGTERM (kill, systemd, a scheduler) unwinds like Ctrl-C, so every finally/except cleanup runs:
    # write_atomic removes its temp file, the trainer releases its run folder lock
    raise SystemExit(128 + signum)


# The library names parameters ("{steps} must be ...", errors.py); the CLI names the flag that sets each one:
# --name-with-dashes, except where the flag is spelled otherwise.
FLAGS = {"unknown": "--unknown-threshold", "trusted_keys": "--trusted-key"}


def flag(parameter: str) -> str:
    """The command-line flag that sets the library's ``parameter``."""
    return FLAGS.get(parameter, "--" + parameter.replace("_", "-"))


# Click's errors (the parser's: a flag's type or range, an unknown or missing flag), found by name because
# Typer ships Click inside itself in newer versions (typer._click) and depends on it in older ones.
_CLICK_ERRORS = {c.__name__: c for c in typer.BadParameter.__mro__}
_CLICK_ERROR, _USAGE_ERROR = _CLICK_ERRORS["ClickException"], _CLICK_ERRORS["UsageError"]


def _show_click_error(exc) -> None:
    """A Click error as one line on stderr: its message and, for a parser error, where the flags are explained."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `fastadapt`: its help (Typer's rich help is printed
        if exc.format_message().strip():             # already, as the error was made)
            exc.show()
        return
    ctx = getattr(exc, "ctx", None)
    see = f" (see '{ctx.command_path if ctx is not None else 'fastadapt'} --help')" if isinstance(exc, _USAGE_ERROR) else ""
    print(f"error: {printable(exc.format_message())}{see}", file=sys.stderr)


class _StdoutFailed(Exception):
    """Writing the results to stdout failed; the OSError is its ``__cause__``. Not an OSError itself, so
    that Typer, which turns a broken pipe into a bare exit 1, lets it through to ``main``."""


class _Stdout:
    """sys.stdout while a command runs: the same stream, whose write failures come out as _StdoutFailed,
    so that ``main`` can tell them from any other OSError."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise _StdoutFailed() from exc

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise _StdoutFailed() from exc

    def __getattr__(self, name):  # encoding, isatty, fileno, ...: the stream's own
        return getattr(self._stream, name)


BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a tool that its reader stopped (| head)


def _stdout_failed(error: OSError, stdout) -> None:
    """Exit for a stdout that cannot take the results: quietly with BROKEN_PIPE_EXIT when the reader has gone
    (as Unix tools do), else one error line and exit 2."""
    try:  # what is still buffered goes to /dev/null at exit, not to a second error (or Python's "Exception ignored")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no file descriptor (an in-memory stream)
        pass
    if isinstance(error, BrokenPipeError):
        sys.exit(BROKEN_PIPE_EXIT)
    print(f"error: cannot write the results to standard output ({error.strerror or error})", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2, never a traceback."""
    if sys.stderr is None:  # stderr closed (2>&-): print(file=None) would put errors among the results
        sys.stderr = open(os.devnull, "w")
    if sys.stdout is None:  # stdout closed (>&-): every command prints its results there
        print("error: standard output is closed, and fastadapt prints its results there; redirect it "
              "instead (> results.txt, or > /dev/null to discard them)", file=sys.stderr)
        sys.exit(2)
    for stream in (sys.stdout, sys.stderr):  # a label or file name the terminal's encoding lacks: \u2605, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    stdout, sys.stdout = sys.stdout, _Stdout(sys.stdout)
    main_thread = threading.current_thread() is threading.main_thread()  # handlers can only be set there
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        with cli_warnings(flag):  # library warnings (FastadaptWarning) print as one line "warning: ..." on stderr
            # not standalone: parser errors come here as exceptions (one line below), --help and typer.Exit
            # as a returned exit code, Ctrl-C as Abort
            code = app(standalone_mode=False)
        sys.stdout.flush()  # the last results: a full disk or a closed pipe fails here, not at exit
        if isinstance(code, int) and not isinstance(code, bool) and code:
            sys.exit(code)
    except _StdoutFailed as exc:
        _stdout_failed(exc.__cause__, stdout)
    except FastadaptError as exc:
        rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""  # under torchrun
        print(f"error: {rank}{printable(exc.render(flag))}", file=sys.stderr)  # escaped, as results are
        sys.exit(2)
    except _CLICK_ERROR as exc:
        _show_click_error(exc)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        sys.stdout = stdout
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
