"""Turn a ``--data`` value into train/validation/test class sets (torch-free, shared by all commands).

--data     synthetic | sinusoid | PATH (an Omniglot folder with the two canonical zips, a folder of
           class folders, or a zip of them)
--protocol lake | vinyals      Omniglot's splits (see omniglot.py)
           split               any other dataset: classes shuffled by seed, 20% test, 10% validation (at most
                               100; --val-classes N: exactly N), the rest train, each part at least --ways
                               classes (``split_sizes``)
           all                 evaluation only: every class of PATH is a test class (your own unseen classes)
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import FastadaptError
from ..images import Preprocess
from .classes import ImageClasses, load_class_folders, special_kind
from .omniglot import OMNIGLOT_PREPROCESS, PARTS, Splits, is_omniglot, omniglot_splits
from .synthetic import synthetic_glyphs

PROTOCOLS = ("auto", "lake", "vinyals", "split", "all")
BUILT_IN_DATA = ("synthetic", "sinusoid")  # --data values that name a generator, not a path

# The settings that decide a run's class split, and their defaults: TrainConfig's defaults are these, and
# an evaluation reads a run's or bundle's own values (falling back to these), so both see the same split.
DEFAULT_SEED, DEFAULT_VAL_CLASSES, DEFAULT_WAYS = 0, 100, 5


def default_protocol(data: str) -> str:
    if data in BUILT_IN_DATA:
        return "split"
    return "lake" if is_omniglot(data) else "split"


def data_location(data: str) -> str:
    """--data as a run stores it: a path made absolute, so the run reads the same data from any working
    folder (evaluate RUN, train --resume); a built-in name as it is."""
    return data if data in BUILT_IN_DATA else os.path.abspath(data)


def check_data(data: str) -> None:
    """Refuse at once a --data path that is missing, or neither a folder nor a regular file (a zip):
    reading a FIFO would wait forever for a writer."""
    if data in BUILT_IN_DATA:
        return
    if not os.path.exists(data):
        raise FastadaptError(f"--data {data}: no such file or folder (use a folder of class folders, "
                             f"a zip of them, an Omniglot folder, 'synthetic' or 'sinusoid')")
    kind = special_kind(data)
    if kind is not None:
        raise FastadaptError(f"--data {data}: is {kind}, not a folder or a zip; pass a folder of class folders, "
                             f"a zip of them or an Omniglot folder")


def default_preprocess(data: str) -> Preprocess:
    """Omniglot and synthetic glyphs: 28x28 gray, inverted. Other folders: the same unless told otherwise."""
    return OMNIGLOT_PREPROCESS


def split_sizes(classes: int, val_classes: int, ways: int) -> tuple:
    """(test, validation, train) class counts of --protocol split, in that order of the seeded permutation:

    - test: 20% of the classes, at least ``ways`` (it never depends on ``val_classes``, so an evaluation
      finds a run's test classes whatever its --val-classes);
    - validation: ``val_classes`` at its default (``DEFAULT_VAL_CLASSES``) means 10% of the classes, at most
      ``DEFAULT_VAL_CLASSES``; any other value is taken as given (raising or lowering it, as --val-classes
      does on Omniglot); at least ``ways`` either way, so a ``ways``-way task fits;
    - training: the rest, at least ``ways``.

    From about 50 classes (5-way) the floors never bind: the plain 70/10/20 split. None when the parts do
    not fit (``val_classes_too_large`` says whether --val-classes is the cause).
    """
    ways = max(2, ways)
    n_test = max(ways, round(0.2 * classes))
    wanted = min(val_classes, round(0.1 * classes)) if val_classes == DEFAULT_VAL_CLASSES else val_classes
    n_val = max(ways, wanted)
    if classes - n_test - n_val < ways:
        return None
    return n_test, n_val, classes - n_test - n_val


def val_classes_too_large(data: str, classes: int, val_classes: int, ways: int) -> str | None:
    """Why an explicit ``val_classes`` leaves too few training classes when the default would not, or None."""
    if split_sizes(classes, val_classes, ways) is not None or split_sizes(classes, DEFAULT_VAL_CLASSES, ways) is None:
        return None
    ways = max(2, ways)
    n_test = max(ways, round(0.2 * classes))
    most = classes - n_test - ways
    left = max(0, classes - n_test - val_classes)
    return (f"--val-classes {val_classes} leaves {left} of the {classes} classes of --data {data} for training "
            f"({n_test} are test classes) and --ways {ways} needs {ways}: use --val-classes {most} or fewer, or "
            f"leave it out (10% of the classes)")


def load_splits(data: str, protocol: str = "auto", seed: int = DEFAULT_SEED, val_classes: int = DEFAULT_VAL_CLASSES,
                rotations: bool = True, spec: Preprocess | None = None, need_train: bool = True,
                ways: int = DEFAULT_WAYS) -> Splits:
    """The train/validation/test classes of ``data``: a pure function of (data, protocol, seed,
    val_classes, ways), where ``ways`` is the training run's --ways (it sets the split's floors)."""
    if protocol not in PROTOCOLS:
        raise FastadaptError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got '{protocol}'")
    if data == "sinusoid":
        raise FastadaptError("--data sinusoid is a regression family, not an image dataset")
    check_data(data)
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
    elif is_omniglot(data) and not any(os.path.isdir(os.path.join(data, part)) for part in PARTS):
        # its images are inside its two zips, not in class folders: split / all can take one zip
        raise FastadaptError(f"--data {data}: an Omniglot folder holds two zips ({PARTS[0]}.zip, {PARTS[1]}.zip), "
                             f"not class folders; use --protocol lake or vinyals, or pass one zip, e.g. --data "
                             f"{os.path.join(data, PARTS[1] + '.zip')} (the alphabets lake holds out), with "
                             f"--protocol {protocol}")
    else:
        classes = load_class_folders(data, spec)
    if protocol == "all":
        empty = ImageClasses([], [], spec)
        return Splits(empty, empty, classes)
    order = np.random.default_rng(seed).permutation(len(classes))
    sizes = split_sizes(len(classes), val_classes, ways)
    if sizes is None:
        too_large = val_classes_too_large(data, len(classes), val_classes, ways)
        if too_large is None:
            raise FastadaptError(too_few_classes(data, len(classes), ways, training=need_train))
        if need_train:
            raise FastadaptError(too_large)
        # evaluation only needs the test classes, which do not depend on --val-classes
        sizes = split_sizes(len(classes), DEFAULT_VAL_CLASSES, ways)
    n_test, n_val, _ = sizes
    test = classes.subset(sorted(order[:n_test]))
    val = classes.subset(sorted(order[n_test:n_test + n_val]))
    train = classes.subset(sorted(order[n_test + n_val:]))
    if rotations:
        train = train.with_rotations()
    return Splits(train, val, test)


def too_few_classes(data: str, classes: int, ways: int, training: bool = True) -> str:
    """Why ``classes`` cannot be split for ``ways``-way tasks, and what to do instead. ``training=False``: an
    evaluation, where ``ways`` is the model's training --ways (it sets the split), not the evaluation's."""
    ways = max(2, ways)
    if not training:
        # the evaluation's own --ways does not enter the split, so advising a smaller one would loop
        return (f"--data {data}: {classes} classes are too few for the class split the model was trained with "
                f"(--ways {ways} in training: training, validation and test each need {ways} classes, {3 * ways} in "
                f"all), so no test classes can be set apart; if the model never saw these classes, evaluate on all "
                f"of them with --protocol all, or add classes")
    fix = f"use --ways {classes // 3} or fewer, or add classes" if classes >= 6 else "add classes"
    return (f"--data {data}: {classes} classes are too few for --ways {ways}: training, validation and test "
            f"each need {ways} classes of their own ({3 * ways} in all); {fix} (--protocol all evaluates on "
            f"every class without training)")
