"""Writing user-visible output files safely: all or nothing, never over what should not be replaced."""

from __future__ import annotations

import os
import tempfile

from .errors import FastadaptError


def write_atomic(path: str, data: bytes) -> None:
    """Write all of ``data`` or nothing: a temp file in the same folder, then an atomic rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise FastadaptError(f"{path}: is a folder; give a file name to write")
    if not os.path.isdir(folder):
        raise FastadaptError(f"{path}: folder {folder} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions of a new file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
