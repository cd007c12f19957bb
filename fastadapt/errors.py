"""User-facing errors and warnings.

Errors: the CLI prints a ``FastadaptError`` as one line and exits non-zero, without a traceback.
Parameters: a message names the parameter it is about as ``{name}`` and lists it,
``FastadaptError("{steps} must be >= 0", "steps")``: ``str()`` reads "steps must be >= 0" (a Python
caller's word), the CLI renders it with its flag, "--steps must be >= 0" (``render``). One message, two
namings; warnings work the same way (``warn``).
Warnings: ``warn`` issues a ``FastadaptWarning`` through Python's ``warnings`` module, so an app can
silence or capture them (``warnings.filterwarnings("ignore", category=fastadapt.FastadaptWarning)``,
``warnings.catch_warnings(record=True)``, ``logging.captureWarnings(True)``); the CLI prints each one
as a single line ``warning: ...`` on stderr (``cli_warnings``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from typing import Callable

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class _Named:
    """A message that may name parameters as ``{name}``: ``args`` is (message, *parameters)."""

    def render(self, name: Callable[[str], str] = str) -> str:
        """The message with each listed parameter ``{p}`` written as ``name(p)`` (default: ``p`` itself).

        >>> fastadapt.FastadaptError("{steps} must be >= 0", "steps").render(lambda p: "--" + p)
        '--steps must be >= 0'
        """
        text, *parameters = self.args or ("",)
        text = str(text)
        for parameter in parameters:
            text = text.replace("{" + parameter + "}", name(parameter))
        return text

    def __str__(self) -> str:
        return self.render()


class FastadaptError(_Named, Exception):
    """A mistake in the user's input (a path, a parameter, a file) with a message that names it and the fix.

    >>> import fastadapt
    >>> try:
    ...     fastadapt.load("missing.fadapt")
    ... except fastadapt.FastadaptError as error:
    ...     print(error)
    missing.fadapt: no such model file; pass a .fadapt bundle made by 'fastadapt export' or 'fastadapt adapt'
    >>> print(fastadapt.FastadaptError("{steps} must be >= 0, got -1", "steps"))
    steps must be >= 0, got -1
    """


class FastadaptWarning(_Named, UserWarning):
    """Something worth knowing that does not stop the work: a skipped image, a rejected adaptation step,
    pictures unlike the model's training data. Silence them with
    ``warnings.filterwarnings("ignore", category=fastadapt.FastadaptWarning)``.

    >>> import warnings, numpy as np, fastadapt
    >>> black = np.zeros((28, 28), np.uint8)  # the shipped model expects dark strokes on a light background
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always", fastadapt.FastadaptWarning)
    ...     answer = fastadapt.load().adapt("examples/shots").predict(black)
    >>> [str(w.message)[:40] for w in caught]
    ['1 of 1 image(s) look like light strokes ']
    """


def warn(message: str, *parameters: str) -> None:
    """Issue ``message`` as a ``FastadaptWarning`` (naming ``parameters`` as ``FastadaptError`` does),
    attributed to the first line outside fastadapt that led to it (Python >= 3.12; before, to the line in
    fastadapt that warns)."""
    warning = FastadaptWarning(message, *parameters)
    if sys.version_info >= (3, 12):
        warnings.warn(warning, skip_file_prefixes=(_PACKAGE,))
    else:
        warnings.warn(warning, stacklevel=2)


def _show_as_line(message, category, filename, lineno, file=None, line=None, name: Callable[[str], str] = str) -> None:
    from .manifest import printable  # here: manifest imports this module

    stream = file if file is not None else sys.stderr
    if issubclass(category, FastadaptWarning):
        # escaped: a file name from an untrusted folder must not move the cursor or recolour the terminal
        text = f"warning: {printable(message.render(name) if isinstance(message, _Named) else message)}\n"
    else:
        text = warnings.formatwarning(message, category, filename, lineno, line)
    try:
        stream.write(text)
    except OSError:  # stderr closed: nothing useful left to do with a warning
        pass


@contextlib.contextmanager
def cli_warnings(name: Callable[[str], str] = str):
    """Within: every FastadaptWarning is printed (even repeats) as one line ``warning: ...`` on stderr, its
    parameters written as ``name(parameter)`` (the CLI passes its flag for each)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", FastadaptWarning)
        warnings.showwarning = functools.partial(_show_as_line, name=name)
        yield
