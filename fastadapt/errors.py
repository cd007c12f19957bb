"""User-facing errors and warnings.

Errors: the CLI prints a ``FastadaptError`` as one line and exits non-zero, without a traceback.
Warnings: ``warn`` issues a ``FastadaptWarning`` through Python's ``warnings`` module, so an app can
silence or capture them (``warnings.filterwarnings("ignore", category=fastadapt.FastadaptWarning)``,
``warnings.catch_warnings(record=True)``, ``logging.captureWarnings(True)``); the CLI prints each one
as a single line ``warning: ...`` on stderr (``cli_warnings``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class FastadaptError(Exception):
    """A mistake in the user's input (a path, a flag, a file) with a message that names it and the fix."""


class FastadaptWarning(UserWarning):
    """Something worth knowing that does not stop the work: a skipped image, a rejected adaptation step,
    pictures unlike the model's training data. Silence them with
    ``warnings.filterwarnings("ignore", category=fastadapt.FastadaptWarning)``."""


def warn(message: str) -> None:
    """Issue ``message`` as a ``FastadaptWarning``, attributed to the first line outside fastadapt that led to it
    (Python >= 3.12; before, to the line in fastadapt that warns)."""
    if sys.version_info >= (3, 12):
        warnings.warn(message, FastadaptWarning, skip_file_prefixes=(_PACKAGE,))
    else:
        warnings.warn(message, FastadaptWarning, stacklevel=2)


def _show_as_line(message, category, filename, lineno, file=None, line=None) -> None:
    stream = file if file is not None else sys.stderr
    if issubclass(category, FastadaptWarning):
        text = f"warning: {message}\n"
    else:
        text = warnings.formatwarning(message, category, filename, lineno, line)
    try:
        stream.write(text)
    except OSError:  # stderr closed: nothing useful left to do with a warning
        pass


@contextlib.contextmanager
def cli_warnings():
    """Within: every FastadaptWarning is printed (even repeats) as one line ``warning: ...`` on stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", FastadaptWarning)
        warnings.showwarning = _show_as_line
        yield
