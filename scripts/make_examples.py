"""Regenerate the example images shipped in fastadapt/assets/examples (the demo's and examples/).

    python scripts/make_examples.py

shots/<shape>/     5 drawings per shape, to teach the model (fastadapt adapt --shots examples/shots)
queries/<shape>/   5 other drawings per shape, to predict
"""

import shutil
from pathlib import Path

import numpy as np

from fastadapt.data.shapes import SHAPES, draw_shape

ROOT = Path(__file__).resolve().parent.parent / "fastadapt" / "assets" / "examples"


def main(per_split: int = 5, seed: int = 2026) -> None:
    rng = np.random.default_rng(seed)
    shutil.rmtree(ROOT, ignore_errors=True)
    for name in SHAPES:
        for split in ("shots", "queries"):
            folder = ROOT / split / name
            folder.mkdir(parents=True)
            for i in range(per_split):
                draw_shape(name, rng).save(folder / f"{name}_{i + 1}.png", optimize=True)
    print(f"wrote {len(SHAPES) * 2 * per_split} images under {ROOT}")


if __name__ == "__main__":
    main()
