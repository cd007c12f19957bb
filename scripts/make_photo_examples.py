"""Write the photo demo's pictures (fastadapt/assets/photo_examples): crops of public-domain / CC0 photos.

The photos ship in scikit-image (``pip install -e ".[bench]"``); their licences, from scikit-image's
docstrings: astronaut (NASA, public domain), chelsea (CC0, Stefan van der Walt), coffee (CC0, Rachel
Michetti), rocket (SpaceX, public domain), hubble_deep_field (NASA, public domain), retina (CC0).
Each class is one photo; its pictures are seeded random crops (35-65% of the shorter side), shots from
one set of crops and queries from another, saved as 96x96 JPEGs. Run once; the output is committed.

    python scripts/make_photo_examples.py
"""

from __future__ import annotations

import os
import shutil

import numpy as np
from PIL import Image

PHOTOS = {"astronaut": "astronaut", "cat": "chelsea", "coffee": "coffee", "rocket": "rocket",
          "galaxies": "hubble_deep_field", "retina": "retina"}
SHOTS, QUERIES, SIDE = 5, 5, 96
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fastadapt", "assets",
                   "photo_examples")


def crops(photo: np.ndarray, rng: np.random.Generator, count: int) -> list:
    h, w = photo.shape[:2]
    out = []
    for _ in range(count):
        side = int(min(h, w) * rng.uniform(0.35, 0.65))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out.append(Image.fromarray(photo[y:y + side, x:x + side]).resize((SIDE, SIDE), Image.LANCZOS))
    return out


def main() -> None:
    import skimage.data

    shutil.rmtree(OUT, ignore_errors=True)
    rng = np.random.default_rng(2026)
    for label, name in PHOTOS.items():
        photo = np.asarray(getattr(skimage.data, name)())[..., :3]
        pictures = crops(photo, rng, SHOTS + QUERIES)
        for part, chosen in (("shots", pictures[:SHOTS]), ("queries", pictures[SHOTS:])):
            folder = os.path.join(OUT, part, label)
            os.makedirs(folder)
            for i, image in enumerate(chosen, 1):
                image.save(os.path.join(folder, f"{label}_{i}.jpg"), quality=90, optimize=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
