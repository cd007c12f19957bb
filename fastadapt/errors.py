"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


class FastadaptError(Exception):
    """A mistake in the user's input (a path, a flag, a file) with a message that names it and the fix."""


def warn(message: str) -> None:
    """One-line warning on stderr (kept here so library and CLI warn the same way)."""
    import sys

    print(f"warning: {message}", file=sys.stderr)
