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
from ..manifest import MAX_CLASSES, MAX_LABEL_CHARS, printable  # the labels an adapted bundle may hold


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


def refuse_stacked_array(item, channels: int, name: str) -> None:
    """A 3-D array whose first axis is 3 or 4 (and last axis not 1 to 4) is read as one CxHxW colour image
    (images._from_array). For a grey model it is as likely N grey images stacked (np.stack of 3 pictures),
    so it is refused rather than guessed; a colour model takes CxHxW.

    >>> fastadapt.runtime.shots.refuse_stacked_array(np.zeros((3, 28, 28)), 1, "image 0")
    Traceback (most recent call last):
    fastadapt.errors.FastadaptError: image 0: an array of shape (3, 28, 28) is either one colour image (CxHxW) or 3 grey ...
    """
    if isinstance(item, np.ndarray) and item.ndim == 3 and channels == 1 and item.shape[0] in (3, 4) \
            and item.shape[2] not in (1, 2, 3, 4):
        n = item.shape[0]
        raise FastadaptError(f"{name}: an array of shape {item.shape} is either one colour image (CxHxW) or {n} "
                             f"grey images stacked, and this model is grey; pass a list of HxW arrays, or an "
                             f"N x 1 x H x W array (one colour image: H x W x {n})")


def _check_labels(labels: list, source: str) -> None:
    """Labels an adapted bundle can hold (manifest.py's rule: at most MAX_CLASSES names of 1..MAX_LABEL_CHARS
    characters), checked when the shots are read rather than when the model is saved."""
    if len(labels) > MAX_CLASSES:
        raise FastadaptError(f"{source}: {len(labels):,} classes; a model holds at most {MAX_CLASSES:,}")
    for label in labels:
        if not 0 < len(label) <= MAX_LABEL_CHARS:
            shown = printable(label if len(label) <= 40 else label[:37] + "...")
            problem = "is empty" if not label else f"has {len(label)} characters"
            raise FastadaptError(f"{source}: class label '{shown}' {problem}; give every class a name of "
                                 f"1..{MAX_LABEL_CHARS} characters")


def dict_classes(shots: dict, channels: int | None = None) -> dict:
    """{label: image or images} -> {str(label): [images]}: one image on its own is a list of one; labels that
    are the same as text (1 and "1") or a class with no images are errors. With the model's ``channels``,
    arrays given as one image are checked by ``refuse_stacked_array`` (the rows of an N x C x H x W array are
    images by definition)."""
    classes, given = {}, {}
    for label, items in shots.items():
        if str(label) in given:  # e.g. 1 and "1": one would silently replace the other
            raise FastadaptError(f"shots dict: labels {given[str(label)]!r} and {label!r} are both named "
                                 f"'{label}'; give every class a distinct label")
        given[str(label)] = label
        batch = isinstance(items, np.ndarray) and items.ndim == 4
        if not hasattr(items, "__iter__") or (is_image_source(items) and not batch):
            items = [items]  # one image given on its own (a file object is iterable, by lines: not a list)
        classes[str(label)] = list(items)
        if channels is not None and not batch:
            for index, item in enumerate(classes[str(label)]):
                refuse_stacked_array(item, channels, f"shots dict: image {index} of class '{printable(label)}'")
        if not classes[str(label)]:
            raise FastadaptError(f"shots dict: class '{label}' has no images; give at least one")
    return classes


def _describe(item, label, index) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(os.fspath(item))
    return f"image {index} of class '{label}'"


def load_shots(shots, spec: Preprocess, checked: bool = False) -> Shots:
    """Decode and preprocess (stage 1, uint8) every support image; validate the class structure and labels.
    ``checked``: a dict whose arrays ``dict_classes`` has already checked (AdaptedModel.update_classes)."""
    if isinstance(shots, (str, os.PathLike)):
        source = os.fspath(shots)
        classes = _folder_classes(source)
        folder_of = {name: os.path.join(source, name) for name in classes}
    elif isinstance(shots, dict):
        source = "shots dict"
        classes = dict_classes(shots, None if checked else spec.channels)
        folder_of = {name: source for name in classes}
    else:
        raise FastadaptError(f"shots must be a folder path or a dict {{label: [images]}}, got {type(shots).__name__}")
    _check_labels(list(classes), source)  # before any image is decoded
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
