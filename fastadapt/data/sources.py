"""Turn a ``--data`` value into train/validation/test class sets (torch-free, shared by all commands).

--data     synthetic | sinusoid | PATH (an Omniglot folder with the two canonical zips, a folder of
           class folders, or a zip of them)
--protocol lake | vinyals      Omniglot's splits (see omniglot.py)
           split               any other dataset: classes shuffled by seed, 70% train / 10% val / 20% test
           all                 evaluation only: every class of PATH is a test class (your own unseen classes)
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import FastadaptError
from ..images import Preprocess
from .classes import ImageClasses, load_class_folders
from .omniglot import OMNIGLOT_PREPROCESS, Splits, is_omniglot, omniglot_splits
from .synthetic import synthetic_glyphs

PROTOCOLS = ("auto", "lake", "vinyals", "split", "all")


def default_protocol(data: str) -> str:
    if data in ("synthetic", "sinusoid"):
        return "split"
    return "lake" if is_omniglot(data) else "split"


def default_preprocess(data: str) -> Preprocess:
    """Omniglot and synthetic glyphs: 28x28 gray, inverted. Other folders: the same unless told otherwise."""
    return OMNIGLOT_PREPROCESS


def load_splits(data: str, protocol: str = "auto", seed: int = 0, val_classes: int = 100,
                rotations: bool = True, spec: Preprocess | None = None, need_train: bool = True) -> Splits:
    if protocol not in PROTOCOLS:
        raise FastadaptError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got '{protocol}'")
    if data == "sinusoid":
        raise FastadaptError("--data sinusoid is a regression family, not an image dataset")
    protocol = default_protocol(data) if protocol == "auto" else protocol
    spec = spec or default_preprocess(data)
    if protocol in ("lake", "vinyals"):
        if data == "synthetic" or not is_omniglot(data):
            raise FastadaptError(f"--protocol {protocol} needs an Omniglot folder holding images_background.zip "
                                 f"and images_evaluation.zip, but --data is '{data}'; use --protocol split")
        return omniglot_splits(data, protocol, seed, val_classes, rotations, spec, need_train)
    if data == "synthetic":
        # a fixed glyph universe: the seed picks the split, not the glyphs
        classes = synthetic_glyphs(300, 20, seed=12345, spec=spec)
    else:
        if not os.path.exists(data):
            raise FastadaptError(f"--data {data}: no such file or folder (use a folder of class folders, "
                                 f"a zip of them, an Omniglot folder, 'synthetic' or 'sinusoid')")
        classes = load_class_folders(data, spec)
    if protocol == "all":
        empty = ImageClasses([], [], spec)
        return Splits(empty, empty, classes)
    order = np.random.default_rng(seed).permutation(len(classes))
    n_test = max(2, round(0.2 * len(classes)))
    n_val = max(2, min(val_classes, round(0.1 * len(classes))))
    if len(classes) - n_test - n_val < 2:
        raise FastadaptError(f"--data {data}: {len(classes)} classes are too few to split into train/val/test; "
                             f"add classes or use --protocol all for evaluation only")
    test = classes.subset(sorted(order[:n_test]))
    val = classes.subset(sorted(order[n_test:n_test + n_val]))
    train = classes.subset(sorted(order[n_test + n_val:]))
    if rotations:
        train = train.with_rotations()
    return Splits(train, val, test)
