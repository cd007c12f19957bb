"""Writing user-visible output files safely: all or nothing, never over what should not be replaced.

The rules, shared by every command and by ``save()``:
  * only regular files are written or replaced: a device (/dev/null), FIFO or socket is refused,
    because replacing it with a file breaks the system (as root) or hangs;
  * a symbolic link is refused rather than replaced (replacing it would silently cut the link, and
    writing through it would silently change a file elsewhere): give the link's target instead;
  * an existing file keeps its permission bits (a 0600 file stays 0600), and its owner when root writes;
  * an output must not be, or lie inside, an input of the same command (``check_inputs``);
  * the data goes to a hidden temp file in the same folder and is renamed over the output, so a
    crash, a full disk or SIGTERM leaves either the old file or the new one, never half of one;
  * OSError (full disk, read-only folder, name too long) becomes one FastadaptError line.
"""

from __future__ import annotations

import os
import stat
import tempfile

from .errors import FastadaptError

KINDS = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO (named pipe)",
         stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def refuse_unwritable(path: str, flag: str | None = None, example: str = "out.fadapt") -> os.stat_result | None:
    """Refuse an output path that is a folder, a non-regular file or a symlink, or whose folder is missing.

    Returns the stat of the existing regular file (None when the file is new). ``flag`` prefixes messages.
    """
    where = f"{flag} {path}" if flag else path
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:  # ENAMETOOLONG, EACCES, ELOOP ...
        raise FastadaptError(f"{where}: cannot write there ({exc.strerror})") from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise FastadaptError(f"{where}: is a symbolic link (to {os.readlink(path)}); fastadapt does not replace links "
                             f"or write through them: give the target's path, or remove the link")
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise FastadaptError(f"{where}: is a folder; give a file name such as {os.path.join(path, example)}")
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise FastadaptError(f"{where}: is {kind}, not a regular file; fastadapt writes only regular files: "
                             f"give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FastadaptError(f"{where}: folder {folder} does not exist; create it first")
    return st


def check_inputs(out, inputs, flag: str | None = None) -> None:
    """Refuse an output that is one of ``inputs`` or lies inside an input folder (resolved paths, links followed)."""
    where = f"{flag} {out}" if flag else str(out)
    target = os.path.realpath(out)
    for item in inputs:
        if item is None:
            continue
        source = os.path.realpath(item)
        same = target == source
        if not same and os.path.exists(out) and os.path.exists(item):
            same = os.path.samefile(out, item)  # hard links, bind mounts
        if same:
            raise FastadaptError(f"{where}: is also an input of this command ({item}); write the output elsewhere")
        if os.path.isdir(source) and target.startswith(source.rstrip(os.sep) + os.sep):
            raise FastadaptError(f"{where}: lies inside the input folder {item}, which this command reads; "
                                 f"write the output outside it")


def write_atomic(path, data: bytes) -> None:
    """Write all of ``data`` or nothing: a hidden temp file in the same folder, then an atomic rename.

    Follows the rules of this module (regular files only, no symlinks, permissions kept); any
    OSError becomes a FastadaptError naming ``path`` and the reason.
    """
    path = os.fspath(path)
    st = refuse_unwritable(path)
    folder = os.path.dirname(os.path.abspath(path))
    if st is not None:
        mode = stat.S_IMODE(st.st_mode)
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask  # mkstemp makes 0600; give the usual permissions of a new file
    tmp = None
    try:
        # a short hidden prefix: a long output name must not make the temp name too long
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path)[:40] + ".", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if st is not None and hasattr(os, "geteuid") and os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)  # root replacing a user's file leaves it theirs
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise FastadaptError(f"{path}: cannot write ({exc.strerror or exc}); nothing was written") from None
    finally:  # also on KeyboardInterrupt / SystemExit (the CLI turns SIGTERM into SystemExit)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
