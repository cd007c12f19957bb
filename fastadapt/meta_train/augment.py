"""Training-time image augmentation (``--augment``): random distortions of normalised image batches.

none    nothing (the default; runs from before this option trained without it)
affine  characters and drawings (Koch et al. 2015's siamese nets on Omniglot): per image a small
        rotation (+-10 deg), shear (+-0.3), scale (0.8-1.2) and shift (+-2 px at any image size), with the
        background (zero after normalising inverted strokes) filling what comes into view
photo   colour photos: per image a horizontal flip, a shift of up to 1/8 of the side and a zoom of
        up to 1.15x (mirror padding), and colour jitter (brightness, contrast, saturation +-0.3)

Every distortion is drawn from ``numpy.random.default_rng(key)``, so a task's or a pre-training
batch's augmentation is a pure function of the seed and its index: a resumed run sees what an
uninterrupted one would, on any device. Augmentation is training-only: the device never does it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

AUGMENTS = ("none", "affine", "photo")


def augment(x: torch.Tensor, kind: str, key, mean=(0.0,), std=(1.0,)) -> torch.Tensor:
    """A distorted copy of the normalised batch ``x`` (N, C, H, W); ``key`` seeds the draws.

    ``mean``/``std``: the normalisation of ``x`` (Preprocess.mean/std), undone for colour jitter so it
    acts on [0, 1] intensities."""
    if kind == "none" or len(x) == 0:
        return x
    rng = np.random.default_rng(key)
    if kind == "affine":
        return _warp(x, _affine_thetas(rng, len(x), x.shape[-1]), padding="zeros")
    if kind == "photo":
        x = _warp(x, _photo_thetas(rng, len(x)), padding="reflection")
        return _colour_jitter(x, rng, mean, std)
    raise ValueError(f"unknown augmentation {kind!r}; choose one of {AUGMENTS}")


def _affine_thetas(rng, n: int, side: int) -> np.ndarray:
    angle = np.deg2rad(rng.uniform(-10, 10, n))
    shear = rng.uniform(-0.3, 0.3, n)
    scale = rng.uniform(0.8, 1.2, n)
    shift = rng.uniform(-2, 2, (n, 2)) * 2 / side  # +-2 pixels at any size, in grid units ([-1, 1] spans the side)
    cos, sin = np.cos(angle), np.sin(angle)
    # output -> input sampling map: rotate, shear along x, then scale (inverse scale: zoom in for scale > 1)
    a = np.stack([np.stack([cos, -sin + shear * cos], 1), np.stack([sin, cos + shear * sin], 1)], 1) / scale[:, None, None]
    return np.concatenate([a, shift[:, :, None]], 2)


def _photo_thetas(rng, n: int) -> np.ndarray:
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    zoom = rng.uniform(1 / 1.15, 1.0, n)  # sample a smaller window: zoom in up to 1.15x
    shift = rng.uniform(-0.25, 0.25, (n, 2))  # 1/8 of the side, in grid units
    theta = np.zeros((n, 2, 3))
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = flip * zoom, zoom, shift
    return theta


def _warp(x: torch.Tensor, theta: np.ndarray, padding: str) -> torch.Tensor:
    theta = torch.as_tensor(theta, dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _colour_jitter(x: torch.Tensor, rng, mean, std) -> torch.Tensor:
    n = len(x)
    as_t = lambda a, shape: torch.as_tensor(np.reshape(a, shape), dtype=x.dtype, device=x.device)  # noqa: E731
    m, s = as_t(mean, (1, -1, 1, 1)), as_t(std, (1, -1, 1, 1))
    v = x * s + m  # back to [0, 1] intensities
    brightness, contrast, saturation = (rng.uniform(0.7, 1.3, n) for _ in range(3))
    v = v * as_t(brightness, (n, 1, 1, 1))
    grey = v.mean(1, keepdim=True) if v.shape[1] == 3 else v
    v = (v - grey.mean((2, 3), keepdim=True)) * as_t(contrast, (n, 1, 1, 1)) + grey.mean((2, 3), keepdim=True)
    if v.shape[1] == 3:
        grey = v.mean(1, keepdim=True)
        v = (v - grey) * as_t(saturation, (n, 1, 1, 1)) + grey
    return (v.clamp(0.0, 1.0) - m) / s

