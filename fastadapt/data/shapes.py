"""Hand-drawn-looking shapes for ``fastadapt demo`` and ``examples/``: drawn by this project, no dataset.

Each shape is a few pen strokes in the unit square; every drawing jitters the points, the pen width,
the rotation and the scale (``synthetic.draw_glyph``), like different people drawing the same symbol.
"""

from __future__ import annotations

import numpy as np

from .synthetic import draw_glyph


def _arc(cx, cy, r, start, end, n=24):
    t = np.linspace(start, end, n)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _polyline(*points):
    return np.array(points, dtype=float)


SHAPES = {
    "circle": [_arc(0.5, 0.5, 0.32, 0, 2 * np.pi)],
    "triangle": [_polyline((0.5, 0.18), (0.84, 0.8), (0.16, 0.8), (0.5, 0.18))],
    "square": [_polyline((0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8), (0.2, 0.2))],
    "star": [_polyline(*[(0.5 + 0.34 * np.sin(a), 0.52 - 0.34 * np.cos(a)) for a in np.arange(6) * 4 * np.pi / 5])],
    "spiral": [np.stack([0.5 + 0.36 * t / t[-1] * np.cos(t), 0.5 + 0.36 * t / t[-1] * np.sin(t)], 1)
               for t in [np.linspace(0, 4.2 * np.pi, 48)]],
    "zigzag": [_polyline((0.12, 0.3), (0.3, 0.7), (0.5, 0.3), (0.7, 0.7), (0.88, 0.3))],
    "cross": [_polyline((0.2, 0.2), (0.8, 0.8)), _polyline((0.8, 0.2), (0.2, 0.8))],
    "arrow": [_polyline((0.15, 0.5), (0.85, 0.5)), _polyline((0.6, 0.28), (0.85, 0.5), (0.6, 0.72))],
}


def draw_shape(name: str, rng: np.random.Generator):
    """One drawing (PIL, black strokes on white) of the named shape."""
    return draw_glyph(SHAPES[name], rng, jitter=0.025)
