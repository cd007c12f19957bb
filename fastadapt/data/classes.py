"""Class-folder datasets from a directory or a zip, decoded once and cached in memory as uint8.

Layouts (detected automatically):
  root/<class>/<image>                   one class per folder (images in its subfolders belong to it)
  root/<group>/<class>/<image>           Omniglot style: a class is a character inside an alphabet
A zip may hold either layout, optionally under one top folder (``images_background/...``); '\\' separates
folders in member names too (a Windows zip). Unreadable images are skipped with one warning that counts
them and names the first, and why; class folders left with no readable image, images outside class folders,
look-alike class names (refused) and classes with the same images are each said in one line.
Class folders that are symbolic links are followed (a dataset assembled from links to other folders),
each folder read once: a link to a folder already read (a duplicate class) or to one of its own
ancestors (a loop) is skipped with one warning.
"""

from __future__ import annotations

import hashlib
import os
import stat
import unicodedata
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Callable

import numpy as np

from ..bundle import ZIP_ERRORS, read_bounded
from ..errors import FastadaptError, warn
from ..images import IMAGE_SUFFIXES, MAX_STREAM_BYTES, Preprocess, decode_bytes, is_image_name, to_uint8
from ..manifest import printable
from ..outputs import KINDS


@dataclass
class ImageClasses:
    """Images grouped by class: ``images[i]`` is a (n_i, C, H, W) uint8 array for class ``names[i]``."""

    names: list
    images: list
    spec: Preprocess
    groups: list = field(default_factory=list)  # e.g. the alphabet of each character

    def __post_init__(self):
        if not self.groups:
            self.groups = [""] * len(self.names)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_images(self) -> int:
        return int(sum(len(x) for x in self.images))

    def subset(self, indices) -> "ImageClasses":
        indices = list(indices)
        return ImageClasses([self.names[i] for i in indices], [self.images[i] for i in indices],
                            self.spec, [self.groups[i] for i in indices])

    def merge(self, other: "ImageClasses") -> "ImageClasses":
        return ImageClasses(self.names + other.names, self.images + other.images, self.spec,
                            self.groups + other.groups)

    def with_rotations(self) -> "ImageClasses":
        """Each class plus its 90/180/270 degree rotations as new classes (Santoro et al., Vinyals et al.)."""
        names, images, groups = [], [], []
        for k in range(4):
            suffix = "" if k == 0 else f"@rot{90 * k}"
            for name, imgs, group in zip(self.names, self.images, self.groups):
                names.append(name + suffix)
                images.append(np.ascontiguousarray(np.rot90(imgs, k, axes=(2, 3))))
                groups.append(group)
        return ImageClasses(names, images, self.spec, groups)


def _common_levels(folders: list) -> int:
    """How many leading folder levels all image folders share (a zip's top folder, a folder wrapping the
    dataset): they are stripped, as long as a folder level is left to name classes by."""
    common = 0
    while (all(len(f) > common for f in folders) and len({f[common] for f in folders}) == 1
           and any(len(f) > common + 1 for f in folders)):
        common += 1
    return common


def _split_layout(paths: list) -> tuple:
    """Group image paths (relative, '/'-separated) by class: ({class: [paths]}, loose images, stripped prefix).

    A class is the shallowest folder (below the shared top levels) that directly holds images; images in its
    subfolders belong to it, as ``adapt --shots`` reads a class folder. A folder holding only subfolders is a
    group (an Omniglot alphabet) and its subfolders are classes. Images at the top belong to no class."""
    split = [PurePosixPath(p).parts for p in paths]
    common = _common_levels([s[:-1] for s in split if len(s) > 1])
    prefix = next((s[:common] for s in split if len(s) > 1), ())
    rel = [s[common:] if len(s) > 1 else s for s in split]
    holding = {r[:-1] for r in rel if len(r) > 1}
    classes, loose = defaultdict(list), []
    for path, r in zip(paths, rel):
        folder = r[:-1]
        owner = next((folder[:i] for i in range(1, len(folder) + 1) if folder[:i] in holding), None)
        if owner is None:
            loose.append(path)
        else:
            classes["/".join(owner)].append(path)
    return {name: sorted(classes[name]) for name in sorted(classes)}, loose, prefix


def _imageless_folders(ignored: list, classes: dict, prefix: tuple) -> list:
    """Folders that hold files but no image where a class would be (``g3/`` of .HEIC photos), shallowest."""
    names = {tuple(c.split("/")) for c in classes}
    groups = {c[:i] for c in names for i in range(1, len(c))}
    found = set()
    for p in ignored:
        parts = PurePosixPath(p).parts
        if parts[:len(prefix)] != prefix:
            continue  # beside the top folder that was stripped
        folder = parts[len(prefix):-1]
        for i in range(1, len(folder) + 1):
            if folder[:i] in names:
                break  # a file inside a class
            if folder[:i] not in groups:
                found.add("/".join(folder[:i]))
                break
    return sorted(found)


def few(names: list, limit: int = 5) -> str:
    """'a, b, c' or 'a, b, c, d, e and 7 more': a list that names a few and stays one line."""
    shown = ", ".join(printable(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def refuse_lookalikes(names, source: str) -> None:
    """Two labels that render alike but are spelt with different code points ("café" as one character
    or as "e" plus a combining accent: macOS and Windows file names differ so) would be two classes."""
    seen = {}
    for name in names:
        key = unicodedata.normalize("NFC", name)
        if key in seen:
            raise FastadaptError(f"{source}: class names '{printable(seen[key])}' and '{printable(name)}' look the "
                                 f"same but are spelt with different Unicode characters ({ascii(seen[key])} and "
                                 f"{ascii(name)}); rename one, or merge their images into one class")
        seen[key] = name


def warn_identical_classes(names: list, images: list, source: str) -> None:
    """Two classes with the same images (a class folder copied or linked under another name) cannot be told
    apart: adapted, their answers split between them; in training, one may land in training and the other
    in test. ``images[i]`` holds class i's uint8 images. Say so once."""
    seen = {}
    for name, imgs in zip(names, images):
        key = frozenset(hashlib.sha256(np.ascontiguousarray(a).tobytes()).digest() for a in imgs)
        if key in seen:
            warn(f"{source}: classes '{printable(seen[key])}' and '{printable(name)}' have the same images, so the "
                 f"model cannot tell them apart; remove one or give each its own images")
            return
        seen[key] = name


def _read_member(archive: zipfile.ZipFile, path: str, name: str) -> bytes:
    """A member's bytes, at most MAX_STREAM_BYTES (an image's limit): a member declaring more is refused
    before reading, and one whose declared size lies is read in pieces and stopped (a zip bomb)."""
    try:
        return read_bounded(archive, archive.getinfo(name), MAX_STREAM_BYTES, f"{path}:{name}", "an image may take",
                            "re-pack the zip (deflate, images under the limit)")
    except ZIP_ERRORS as exc:  # a damaged member: skipped like a bad image
        raise FastadaptError(f"{path}:{name}: damaged zip member ({exc.__class__.__name__}: {exc})") from None


def special_kind(path: str) -> str | None:
    """What ``path`` is when it is neither a folder nor a regular file ("a FIFO (named pipe)", ...), else None
    (also when it does not exist: the caller says so). Opening a FIFO waits forever for a writer."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
        return None
    return KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")


def _read_members(path: str) -> tuple:
    """List the members of a folder or zip: (image paths, other files' paths, reader, open zip or None)."""
    kind = special_kind(path)
    if kind is not None:  # before is_zipfile, which would open it and wait
        raise FastadaptError(f"{path}: is {kind}, not a folder or a zip of class folders; pass a folder or a zip")
    if zipfile.is_zipfile(path):
        try:
            archive = zipfile.ZipFile(path)
        except ZIP_ERRORS as exc:  # is_zipfile only looks for the end record: the directory may still be broken
            raise FastadaptError(f"{path}: not a readable zip ({exc.__class__.__name__}: {exc}); repair or re-create "
                                 f"it, or pass --data a folder of class folders") from None
        # PowerShell 5.1's Compress-Archive writes k0\0.png: no Windows file name holds a backslash, so it separates
        original = {n.replace("\\", "/"): n for n in archive.namelist()}
        files = [n for n in original if not n.endswith("/") and "__MACOSX" not in n]
        members = [n for n in files if is_image_name(n)]
        ignored = [n for n in files if not is_image_name(n) and is_visible_name(PurePosixPath(n).name)]
        return members, ignored, lambda n: _read_member(archive, path, original[n]), archive
    if os.path.isdir(path):
        ignored = []
        return folder_images(path, ignored=ignored), ignored, None, None
    if os.path.exists(path):
        raise FastadaptError(f"{path}: not a folder or a zip of class folders")
    raise FastadaptError(f"{path}: no such file or folder; pass a folder of class subfolders or a zip of them")


# Files the OS writes into folders (thumbnail caches, folder settings, macOS custom icons): nobody's data.
OS_METADATA = {"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r", "__macosx"}

# Image formats that fastadapt cannot decode, so that their files are ignored: the fix is converting them.
UNSUPPORTED_IMAGES = (".heic", ".heif", ".avif", ".jxl", ".raw", ".cr2", ".cr3", ".nef", ".dng", ".arw", ".orf",
                      ".rw2", ".raf", ".psd")


def is_visible_name(name: str) -> bool:
    return not name.startswith(".") and name.lower() not in OS_METADATA  # hidden files, OS leftovers


def folder_images(path: str, errors: list | None = None, ignored: list | None = None) -> list:
    """The image files (by IMAGE_SUFFIXES) under the folder ``path`` ('/'-separated, relative), following links
    to folders; other files are counted in one warning that names the first.

    Each folder is read once, whatever the links: a link to a folder already listed, or to an ancestor
    (which would loop; one above ``path`` too, which would bring in its siblings), is skipped. Real folders
    are listed before the links beside them, so a link, not the folder it duplicates, is what is skipped.
    Folders that cannot be listed go to ``errors`` (OSErrors) when it is given, else one warning says so;
    other files go to ``ignored`` when it is given (the caller warns once for many folders)."""
    report = ignored is None
    ignored = [] if report else ignored
    members, seen, skipped, unreadable = [], {_identity(path): "."}, [], []
    above = os.path.realpath(path)
    while above != os.path.dirname(above):  # up to the root: a link to a folder holding ``path`` would loop
        above = os.path.dirname(above)
        seen.setdefault(_identity(above), "..")
    for dirpath, dirnames, filenames in os.walk(path, onerror=unreadable.append, followlinks=True):
        rel = os.path.relpath(dirpath, path)
        here = () if rel == "." else PurePosixPath(rel).parts
        visible = sorted(d for d in dirnames if is_visible_name(d))
        kept = []
        for d in sorted(visible, key=lambda d: os.path.islink(os.path.join(dirpath, d))):
            try:
                key = _identity(os.path.join(dirpath, d))
            except OSError:
                continue  # vanished, or unreadable: nothing to list
            name = PurePosixPath(*here, d).as_posix()
            if key in seen:
                skipped.append((name, seen[key]))
            else:
                seen[key] = name
                kept.append(d)
        dirnames[:] = sorted(kept)
        for f in sorted(filenames):
            if is_image_name(f):
                members.append(PurePosixPath(*here, f).as_posix())
            elif is_visible_name(f):
                ignored.append(PurePosixPath(*here, f).as_posix())
    if skipped:
        name, same = skipped[0]
        same = {".": f"{path} itself", "..": f"a folder that holds {path}"}.get(same, f"the same folder as {same}")
        warn(f"{path}: skipped {len(skipped)} linked folder(s) that lead to a folder read already or holding it (a "
             f"duplicate or a loop), first: {name} ({same})")
    if report:
        warn_ignored(path, ignored)
    if errors is not None:
        errors += unreadable
    elif unreadable:
        first = unreadable[0]
        warn(f"{path}: cannot read {len(unreadable)} folder(s), skipped, first: {first.filename} "
             f"({first.strerror or first}); check their permissions")
    return members


def unsupported_image(names: list) -> str | None:
    """The first of ``names`` in an image format fastadapt cannot read (an iPhone's .HEIC), else None."""
    return next((n for n in names if n.lower().endswith(UNSUPPORTED_IMAGES)), None)


def warn_ignored(path: str, names: list) -> None:
    """One warning for the files a scan left out because their names are not images'; an image format that
    cannot be read is named first, as converting it is the fix."""
    first = unsupported_image(names)
    if first is not None:
        count = sum(n.lower().endswith(UNSUPPORTED_IMAGES) for n in names)
        warn(f"{path}: ignored {len(names)} file(s) not named as images, {count} of them in an image format "
             f"fastadapt cannot read, first: {first}; convert those to JPEG or PNG")
    elif names:
        warn(f"{path}: ignored {len(names)} file(s) not named as images ({', '.join(IMAGE_SUFFIXES[:4])}, ...), "
             f"first: {names[0]}; rename any that are images")


def _identity(folder: str) -> tuple:
    """(device, inode) of a folder, links followed: the same for every path that leads to it."""
    st = os.stat(folder)
    return st.st_dev, st.st_ino


def load_class_folders(path: str, spec: Preprocess, progress: Callable | None = None) -> ImageClasses:
    """Decode every image of a class-folder dataset (folder or zip) into uint8 arrays."""
    path = os.fspath(path)
    members, ignored, read, archive = _read_members(path)
    warn_ignored(path, ignored)
    classes, loose, prefix = _split_layout(members)
    if not classes:
        zips = sorted(f for f in os.listdir(path) if f.lower().endswith(".zip")) if read is None else []
        hint = f"; it holds {zips[0]}: pass that zip itself" if zips else ""  # a folder of downloaded zips
        raise FastadaptError(f"{path}: no class folders with images found (expected "
                             f"{os.path.basename(path) or path}/<class>/<image>.png){hint}")
    if loose:
        warn(f"{path}: ignored {len(loose)} image(s) outside class folders, first: {loose[0]}; "
             f"move them into a class folder")
    refuse_lookalikes(classes, path)
    names, images, groups, bad, empty = [], [], [], [], []
    total = sum(len(v) for v in classes.values())
    done = 0
    try:
        for name, files in classes.items():
            arrays = []
            for f in files:
                try:
                    if read is None:
                        arrays.append(to_uint8(os.path.join(path, f), spec))
                    else:
                        arrays.append(to_uint8(decode_bytes(read(f), f"{path}:{f}"), spec, name=f"{path}:{f}"))
                except FastadaptError as exc:
                    bad.append(exc)  # its message names the image and why
                done += 1
                if progress is not None and done % 500 == 0:
                    progress(done, total)
            if arrays:
                parts = name.split("/")
                names.append(name)
                groups.append("/".join(parts[:-1]))
                images.append(np.stack(arrays))
            else:
                empty.append(name)
    finally:
        if archive is not None:
            archive.close()
    if bad:
        warn(f"{path}: skipped {len(bad)} unreadable image(s), first: {bad[0]}")
    if not names:
        raise FastadaptError(f"{path}: none of the {total} images could be read")
    left_out = sorted(set(empty).union(_imageless_folders(ignored, classes, prefix)))
    if left_out:  # a class that vanished would change the classes, and the split, unseen
        warn(f"{path}: left out {len(left_out)} class folder(s) with no readable image: {few(left_out)}; "
             f"add readable images (PNG, JPEG) or remove the folders")
    warn_identical_classes(names, images, path)
    return ImageClasses(names, images, spec, groups)
