"""A procedurally drawn glyph dataset: Omniglot-like classes with no download.

Each class is a random "character" of 2-4 pen strokes (polylines through a few control points).
Each image of the class redraws it with jittered points, pen width and a small affine warp, as a
different person would. Used when ``--data synthetic``, by the tests, and by ``fastadapt demo``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..images import Preprocess, to_uint8
from .classes import ImageClasses

CANVAS = 64


def glyph_strokes(rng: np.random.Generator) -> list:
    """The class prototype: a list of strokes, each an (n, 2) array of points in [0.15, 0.85]."""
    strokes = []
    for _ in range(rng.integers(2, 5)):
        n = rng.integers(2, 5)
        strokes.append(rng.uniform(0.15, 0.85, size=(n, 2)))
    return strokes


def draw_glyph(strokes: list, rng: np.random.Generator, jitter: float = 0.04) -> Image.Image:
    """One handwritten-looking instance of a glyph: black strokes on white, CANVASxCANVAS."""
    angle = rng.normal(0, 0.12)
    scale = rng.normal(1.0, 0.06)
    shift = rng.normal(0, 0.03, size=2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale
    image = Image.new("L", (CANVAS, CANVAS), 255)
    draw = ImageDraw.Draw(image)
    width = int(rng.integers(3, 6))
    for stroke in strokes:
        pts = stroke + rng.normal(0, jitter, size=stroke.shape)
        pts = (pts - 0.5) @ rot.T + 0.5 + shift
        draw.line([tuple(p) for p in (pts * CANVAS)], fill=0, width=width, joint="curve")
    return image


def synthetic_glyphs(num_classes: int = 200, per_class: int = 20, seed: int = 0,
                     spec: Preprocess = Preprocess()) -> ImageClasses:
    rng = np.random.default_rng(seed)
    names, images = [], []
    for c in range(num_classes):
        strokes = glyph_strokes(rng)
        images.append(np.stack([to_uint8(draw_glyph(strokes, rng), spec) for _ in range(per_class)]))
        names.append(f"glyph{c:03d}")
    return ImageClasses(names, images, spec, ["synthetic"] * num_classes)
