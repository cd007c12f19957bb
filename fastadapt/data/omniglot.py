"""Omniglot (Lake et al., 2015) from the canonical images_background.zip / images_evaluation.zip.

Protocols
  lake     train on the 964 background characters, test on the 659 evaluation characters
           (20 alphabets never seen in training)
  vinyals  the MAML/Reptile papers' split: all 1623 characters shuffled by seed, 1200 train, 423 test
In both, the validation classes (for model selection) are held out from the train classes, and the
remaining train classes may be augmented with 90/180/270 degree rotations as new classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import FastadaptError
from ..images import Preprocess
from .classes import ImageClasses, load_class_folders

OMNIGLOT_PREPROCESS = Preprocess(size=28, channels=1, invert=True)
PARTS = ("images_background", "images_evaluation")


@dataclass
class Splits:
    train: ImageClasses
    val: ImageClasses
    test: ImageClasses


def is_omniglot(root: str) -> bool:
    return os.path.isdir(root) and all(_locate(root, part) for part in PARTS)


def _locate(root: str, part: str) -> str | None:
    for candidate in (os.path.join(root, part + ".zip"), os.path.join(root, part)):
        if os.path.exists(candidate):
            return candidate
    return None


def load_part(root: str, part: str, spec: Preprocess = OMNIGLOT_PREPROCESS) -> ImageClasses:
    path = _locate(root, part)
    if path is None:
        raise FastadaptError(f"{root}: no {part}.zip (or {part}/ folder); download Omniglot's {part}.zip there")
    return load_class_folders(path, spec)


def omniglot_splits(root: str, protocol: str = "lake", seed: int = 0, val_classes: int = 100,
                    rotations: bool = True, spec: Preprocess = OMNIGLOT_PREPROCESS,
                    need_train: bool = True) -> Splits:
    """Load and split Omniglot. ``need_train=False`` skips decoding what evaluation does not use."""
    if protocol not in ("lake", "vinyals"):
        raise FastadaptError(f"--protocol must be 'lake' or 'vinyals', got '{protocol}'")
    evaluation = load_part(root, "images_evaluation", spec)
    if protocol == "lake" and not need_train:
        empty = ImageClasses([], [], spec)
        return Splits(empty, empty, evaluation)
    background = load_part(root, "images_background", spec)
    rng = np.random.default_rng(seed)
    if protocol == "lake":
        train_pool, test = background, evaluation
    else:
        everything = background.merge(evaluation)
        order = rng.permutation(len(everything))
        train_pool, test = everything.subset(order[:1200]), everything.subset(order[1200:])
    if not 0 <= val_classes < len(train_pool):
        raise FastadaptError(f"--val-classes must be between 0 and {len(train_pool) - 1}, got {val_classes}")
    order = np.random.default_rng([seed, 1]).permutation(len(train_pool))
    val, train = train_pool.subset(sorted(order[:val_classes])), train_pool.subset(sorted(order[val_classes:]))
    if rotations:
        train = train.with_rotations()
    return Splits(train, val, test)
