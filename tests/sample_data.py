"""Small on-disk datasets for tests (synthetic glyph PNGs; no ../shared needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.common import omniglot_root  # noqa: F401  (one definition for tests and benchmarks)
from fastadapt.data.synthetic import draw_glyph, glyph_strokes

REPO = Path(__file__).resolve().parent.parent

def write_glyph_folders(root: Path, classes: int, per_class, seed: int = 0, two_level: bool = False) -> Path:
    """root/<class>/<i>.png (or root/<group>/<class>/<i>.png) of drawn glyphs; per_class int or list."""
    rng = np.random.default_rng(seed)
    counts = per_class if isinstance(per_class, (list, tuple)) else [per_class] * classes
    for c, n in enumerate(counts):
        strokes = glyph_strokes(rng)
        folder = root / (f"group{c % 2}" if two_level else "") / f"class{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            draw_glyph(strokes, rng).save(folder / f"{i}.png")
    return root
