"""Progress display for long work (rich), on stderr so stdout stays clean for --json output."""

from __future__ import annotations

import os
import sys
import time

# Width for stderr when it is not a terminal (a log file, CI, a pipe) and COLUMNS is unset: rich would
# assume 80 and cut the status text; progress lines are only as wide as their content anyway.
LOG_WIDTH = 240


def _interactive() -> bool:
    return sys.stderr.isatty() if hasattr(sys.stderr, "isatty") else False


def stderr_console():
    from rich.console import Console

    interactive = _interactive()
    width = None if interactive or os.environ.get("COLUMNS") else LOG_WIDTH
    return Console(stderr=True, width=width)


def progress_bar(quiet: bool = False):
    """A bar with counts, elapsed/remaining time and a free-text status field (``status=``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[status]}"), disable=quiet,
                    console=stderr_console())


def lazy_reporter(label: str, after_s: float = 1.0):
    """A ``progress(done, total)`` callback that shows a bar only once the work will last > after_s seconds,
    and only on a terminal: the bar is transient, so in a log or a pipe it would leave only blank lines."""
    state = {"start": time.perf_counter(), "bar": None, "task": None, "shown": _interactive()}

    def report(done: int, total: int) -> None:
        elapsed = time.perf_counter() - state["start"]
        if state["shown"] and state["bar"] is None and 0 < done < total and elapsed / done * total > after_s:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            state["bar"] = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                    transient=True, console=stderr_console())
            state["bar"].start()
            state["task"] = state["bar"].add_task(label, total=total)
        if state["bar"] is not None:
            state["bar"].update(state["task"], completed=done)
            if done >= total:
                state["bar"].stop()

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].stop()

    report.close = close
    return report
