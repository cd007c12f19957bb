"""The support set ("shots") a user teaches new classes with: a folder of class folders, or a dict.

  shots/                         {"cat": ["a.png", pil_image, array], "dog": [...]}
    cat/ a.png b.jpg ...
    dog/ c.png ...

Any number of classes >= 2, any number of images per class (unbalanced is fine). Class folders are
listed as predict and evaluate --data list folders: files named as images (IMAGE_SUFFIXES; one warning
counts the others), subfolders and linked subfolders included, each folder once. A file that is
not a readable image (damaged, not an image, over the pixel limit, not a regular file such as a FIFO)
is skipped with a warning naming it; a class left with no image is an error. Hidden files and folders
(".DS_Store", ".git") are ignored. Images whose stroke polarity is the opposite of the model's
training data are warned about, once per call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..data.classes import (folder_images, is_visible_name, refuse_lookalikes, unsupported_image, warn_identical_classes,
                            warn_ignored)
from ..errors import FastadaptError, warn
from ..images import Preprocess, is_image_source, polarity_warning, to_uint8


@dataclass
class Shots:
    classes: list  # label names, in head-row order
    images: np.ndarray  # (n, C, H, W) uint8, class by class
    labels: np.ndarray  # (n,) int64 in 0..len(classes)-1
    counts: list  # images per class
    skipped: list  # names of files that could not be read
    source: str  # where they came from, for messages


def _folder_classes(root: str) -> dict:
    if not os.path.exists(root):
        raise FastadaptError(f"{root}: no such shots folder; pass a folder with one subfolder per class "
                             f"(e.g. {root}/cat/1.png, {root}/dog/1.png)")
    if not os.path.isdir(root):
        raise FastadaptError(f"{root}: is a file, not a shots folder; pass a folder with one subfolder per class")
    try:
        entries = sorted(e for e in os.listdir(root) if is_visible_name(e))
    except OSError as exc:
        raise FastadaptError(f"{root}: cannot read the shots folder ({exc.strerror or exc}); check its permissions") from None
    folders = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    if not entries:
        raise FastadaptError(f"{root}: the shots folder is empty; add one subfolder per class with a few images each")
    if not folders:
        raise FastadaptError(f"{root}: has files but no class subfolders; put each class's images in its own "
                             f"subfolder ({root}/<class>/<image>.png), the folder name is the label")
    loose = [e for e in entries if e not in folders]
    if loose:
        warn(f"{root}: ignored {len(loose)} file(s) outside class subfolders, first: {loose[0]}")
    classes, ignored = {}, []
    for name in folders:
        folder = os.path.join(root, name)
        # as predict and evaluate --data list a folder: image file names, linked subfolders followed, each folder once
        errors, others = [], []
        files = [os.path.join(folder, f) for f in folder_images(folder, errors, others)]
        ignored += [f"{name}/{f}" for f in others]
        if errors and not files:
            raise FastadaptError(f"{folder}: cannot read class folder '{name}' ({errors[0].strerror or errors[0]}); "
                                 f"check its permissions")
        for error in errors:
            warn(f"{error.filename}: cannot read this folder ({error.strerror or error}), skipped")
        if not files:
            first = unsupported_image(others)
            raise FastadaptError(f"{folder}: class folder '{name}' has no images" + (
                f" fastadapt can read ({first}: convert it to JPEG or PNG)" if first else
                "; add at least one image or remove the folder"))
        classes[name] = files
    warn_ignored(root, ignored)  # one line for the folder, not one per class (Thumbs.db in each)
    return classes


def dict_classes(shots: dict) -> dict:
    """{label: image or images} -> {str(label): [images]}: one image on its own is a list of one; labels that
    are the same as text (1 and "1") or a class with no images are errors."""
    classes, given = {}, {}
    for label, items in shots.items():
        if str(label) in given:  # e.g. 1 and "1": one would silently replace the other
            raise FastadaptError(f"shots dict: labels {given[str(label)]!r} and {label!r} are both named "
                                 f"'{label}'; give every class a distinct label")
        given[str(label)] = label
        if not hasattr(items, "__iter__") or (is_image_source(items) and not (
                isinstance(items, np.ndarray) and items.ndim == 4)):
            items = [items]  # one image given on its own (a file object is iterable, by lines: not a list)
        classes[str(label)] = list(items)
        if not classes[str(label)]:
            raise FastadaptError(f"shots dict: class '{label}' has no images; give at least one")
    return classes


def _describe(item, label, index) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(os.fspath(item))
    return f"image {index} of class '{label}'"


def load_shots(shots, spec: Preprocess) -> Shots:
    """Decode and preprocess (stage 1, uint8) every support image; validate the class structure."""
    if isinstance(shots, (str, os.PathLike)):
        source = os.fspath(shots)
        classes = _folder_classes(source)
        folder_of = {name: os.path.join(source, name) for name in classes}
    elif isinstance(shots, dict):
        source = "shots dict"
        classes = dict_classes(shots)
        folder_of = {name: source for name in classes}
    else:
        raise FastadaptError(f"shots must be a folder path or a dict {{label: [images]}}, got {type(shots).__name__}")
    refuse_lookalikes(classes, source)
    if len(classes) < 2:
        only = next(iter(classes), None)
        raise FastadaptError(f"{source}: found {len(classes)} class{'' if only is None else f' ({only})'}; "
                             f"adaptation needs at least 2 classes, add another class subfolder")
    arrays, names, labels, counts, skipped = [], [], [], [], []
    for label_index, (name, items) in enumerate(classes.items()):
        count = 0
        bad, reasons = [], []
        for index, item in enumerate(items):
            described = _describe(item, name, index)
            try:
                arrays.append(to_uint8(item, spec))
            except FastadaptError as exc:  # one bad shot never aborts the adaptation
                bad.append(described)
                reasons.append(str(exc) if str(exc).startswith(described) else f"{described}: {exc}")
                continue
            names.append(described)
            count += 1
        if count == 0:
            raise FastadaptError(f"{folder_of[name]}: class '{name}' has no readable images "
                                 f"({len(bad)} unreadable, first: {reasons[0]})")
        for reason in reasons:
            warn(f"{reason}; skipped (class '{name}' keeps {count})")
        skipped += bad
        labels += [label_index] * count
        counts.append(count)
    message = polarity_warning(arrays, spec, names)
    if message:
        warn(f"{source}: {message}")
    warn_identical_classes(list(classes), [[a for a, label in zip(arrays, labels) if label == index]
                                           for index in range(len(classes))], source)
    return Shots(list(classes), np.stack(arrays), np.asarray(labels, dtype=np.int64), counts, skipped, source)
