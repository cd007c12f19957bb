"""Regenerate the example drawings: examples/ (the README's commands) and fastadapt/assets/examples (the copy
the package ships, which ``fastadapt demo`` uses). Both hold the same files; they are real folders, not a
symlink, so checkouts without symlinks (Git for Windows' default) work too. Git stores each image once.

    python scripts/make_examples.py

shots/<shape>/     5 drawings per shape, to teach the model (fastadapt adapt --shots examples/shots)
queries/<shape>/   5 other drawings per shape, to predict
"""

import shutil
from pathlib import Path

import numpy as np

from fastadapt.data.shapes import SHAPES, draw_shape

REPO = Path(__file__).resolve().parent.parent
ROOT = REPO / "examples"
PACKAGED = REPO / "fastadapt" / "assets" / "examples"


def main(per_split: int = 5, seed: int = 2026) -> None:
    rng = np.random.default_rng(seed)
    shutil.rmtree(ROOT, ignore_errors=True)
    for name in SHAPES:
        for split in ("shots", "queries"):
            folder = ROOT / split / name
            folder.mkdir(parents=True)
            for i in range(per_split):
                draw_shape(name, rng).save(folder / f"{name}_{i + 1}.png", optimize=True)
    shutil.rmtree(PACKAGED, ignore_errors=True)
    shutil.copytree(ROOT, PACKAGED)
    print(f"wrote {len(SHAPES) * 2 * per_split} images under {ROOT} and the same under {PACKAGED}")


if __name__ == "__main__":
    main()
