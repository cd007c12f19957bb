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
    several outputs of one command (``write_all``) are all replaced or none is;
  * OSError (full disk, read-only folder, name too long) becomes one FastadaptError line.
"""

from __future__ import annotations

import os
import stat

from .errors import FastadaptError
from .manifest import printable

KINDS = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO (named pipe)",
         stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def refuse_unwritable(path: str, flag: str | None = None, example: str = "out.fadapt") -> os.stat_result | None:
    """Refuse an output path that is a folder, a non-regular file or a symlink, or whose folder is missing.

    Returns the stat of the existing regular file (None when the file is new). ``flag`` prefixes messages.
    """
    where = _where(path, flag)
    if os.fspath(path) == "-":  # by Unix convention stdout, which would otherwise become a file named '-'
        raise FastadaptError(f"{where}: writing to standard output is not supported; give a file name such as "
                             f"{example}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:  # ENAMETOOLONG, EACCES, ELOOP ...
        raise FastadaptError(f"{where}: cannot write there ({exc.strerror})") from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise FastadaptError(f"{where}: is a symbolic link (to {printable(os.readlink(path))}); fastadapt does not "
                             f"replace links or write through them: give the target's path, or remove the link")
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise FastadaptError(f"{where}: is a folder; give a file name such as {printable(os.path.join(path, example))}")
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise FastadaptError(f"{where}: is {kind}, not a regular file; fastadapt writes only regular files: "
                             f"give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FastadaptError(f"{where}: folder {printable(folder)} does not exist; create it first")
    return st


def probe_folder(path: str, flag: str | None = None) -> None:
    """Create and remove a hidden file beside ``path``, as write_atomic will: a folder that refuses it (read-only,
    /proc, a full disk) fails now, not after minutes of work (permission bits alone cannot tell: root)."""
    try:
        handle, probe = _hidden_file(path, ".probe")
    except OSError as exc:
        folder = os.path.dirname(os.path.abspath(path))
        raise FastadaptError(f"{_where(path, flag)}: cannot write in folder {printable(folder)} ({exc.strerror}); "
                             f"choose another {flag or 'file name'}") from None
    os.close(handle)
    os.remove(probe)


def check_inputs(out, inputs, flag: str | None = None) -> None:
    """Refuse an output that is one of ``inputs`` or lies inside an input folder (resolved paths, links followed)."""
    where = _where(out, flag)
    target = os.path.realpath(out)
    for item in inputs:
        if item is None:
            continue
        source = os.path.realpath(item)
        same = target == source
        if not same and os.path.exists(out) and os.path.exists(item):
            same = os.path.samefile(out, item)  # hard links, bind mounts
        if same:
            raise FastadaptError(f"{where}: is also an input of this command ({printable(item)}); "
                                 f"write the output elsewhere")
        if os.path.isdir(source) and target.startswith(source.rstrip(os.sep) + os.sep):
            raise FastadaptError(f"{where}: lies inside the input folder {printable(item)}, which this command reads; "
                                 f"write the output outside it")


def write_atomic(path, data: bytes) -> None:
    """Write all of ``data`` or nothing: a hidden temp file in the same folder, then an atomic rename.

    Follows the rules of this module (regular files only, no symlinks, permissions kept); any
    OSError becomes a FastadaptError naming ``path`` and the reason.
    """
    write_all({path: data})


def write_all(files: dict) -> None:
    """Write every file of ``{path: data}`` or none of them (a model and its recipe: either both change or neither).

    Each goes to a complete temp file beside it first; then they are renamed into place, in order. Should a
    rename fail (or SIGTERM arrive) after some were made, those files get their old contents back (or are removed
    when they were new): only the last file's old contents are not kept, in memory, as its rename is never undone.
    """
    files = {os.fspath(path): data for path, data in files.items()}
    temps, olds, replaced, path = {}, {}, [], None
    try:
        for path, data in files.items():
            temps[path] = _complete_temp(path, data)
        for path in list(files)[:-1]:
            olds[path] = _contents(path)
        for path, temp in temps.items():
            os.replace(temp, path)
            replaced.append(path)
    except BaseException as exc:  # also KeyboardInterrupt / SystemExit (the CLI turns SIGTERM into SystemExit)
        _put_back([p for p in replaced if p in olds], olds)
        if isinstance(exc, OSError):
            raise FastadaptError(f"{printable(path)}: cannot write ({exc.strerror or exc}); nothing was written") \
                from None
        raise
    finally:
        for temp in temps.values():
            if os.path.exists(temp):
                os.unlink(temp)


def _where(path, flag: str | None) -> str:
    """How a message names an output: its flag (when a command-line flag gave it) and its printable path."""
    return f"{flag} {printable(path)}" if flag else printable(path)


def _hidden_file(path: str, suffix: str, mode: int = 0o600) -> tuple:
    """A new hidden file beside ``path``, created with ``mode`` less the umask (the kernel applies it, as to any
    new file) -> (open descriptor, its name). A short prefix: a long output name must not make this name too
    long (255 bytes on most file systems); O_EXCL: never an existing file or a link planted there."""
    folder, name = os.path.split(os.path.abspath(path))
    temp = os.path.join(folder, f".{name[:40]}.{os.urandom(6).hex()}{suffix}")
    return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode), temp


def _complete_temp(path: str, data: bytes) -> str:
    """``data`` in a hidden temp file beside ``path``, on disk, with the permissions ``path`` has (or a new file
    gets) and, when root writes, its owner -> the temp file's name."""
    st = refuse_unwritable(path)
    # A new output gets 0666 less the umask from the kernel (never os.umask: reading it means setting it,
    # process-wide, under the host's other threads); a replaced one is written privately, then given its mode.
    fd, temp = _hidden_file(path, ".tmp", 0o666 if st is None else 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if st is not None:
            os.chmod(temp, stat.S_IMODE(st.st_mode))
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                os.chown(temp, st.st_uid, st.st_gid)  # root replacing a user's file leaves it theirs
    except BaseException:
        os.unlink(temp)
        raise
    return temp


def _contents(path: str) -> bytes | None:
    """What the file at ``path`` holds now (None: there is none), to put it back should write_all fail."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _put_back(paths: list, olds: dict) -> None:
    """Undo write_all's renames of ``paths``: each gets its old contents back, or is removed when it was new."""
    for path in paths:
        try:
            if olds[path] is None:
                os.remove(path)
            else:
                write_atomic(path, olds[path])
        except (OSError, FastadaptError):
            raise FastadaptError(f"{printable(path)}: was replaced, and its old contents could not be put back "
                                 f"after a later file failed; check it") from None
