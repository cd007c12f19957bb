"""The one preprocessing recipe, shared by the trainer, the exporter and the on-device runtime.

An image goes through two stages:
  ``to_uint8``  decode -> channels -> resize -> stroke polarity, giving a compact (C, H, W) uint8
                array (datasets cache this form in memory);
  ``to_float``  uint8 -> float32 in [0, 1] -> (x - mean) / std, the network's input.
``preprocess`` is the two stages in a row. The recipe (``Preprocess``) is written into every run
directory and every exported bundle, so the device repeats exactly what training saw.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import FastadaptError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]


@dataclass(frozen=True)
class Preprocess:
    """How raw images become network inputs.

    size      square side in pixels after resizing
    channels  1 (grayscale) or 3 (RGB)
    invert    True for dark strokes on a light background (Omniglot, sketches): strokes become
              bright on a zero background, which is what the network learns from
    mean, std per-channel normalisation applied after scaling to [0, 1]
    """

    size: int = 28
    channels: int = 1
    invert: bool = True
    mean: tuple = (0.0,)
    std: tuple = (1.0,)

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise FastadaptError(f"channels must be 1 or 3, got {self.channels}")
        if self.size < 8:
            raise FastadaptError(f"image size must be at least 8 pixels, got {self.size}")
        object.__setattr__(self, "mean", _per_channel(self.mean, self.channels, "mean"))
        object.__setattr__(self, "std", _per_channel(self.std, self.channels, "std"))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["resize"] = "lanczos"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(size=int(d["size"]), channels=int(d["channels"]), invert=bool(d["invert"]),
                   mean=tuple(d["mean"]), std=tuple(d["std"]))


def _per_channel(values: Any, channels: int, name: str) -> tuple:
    values = tuple(float(v) for v in np.atleast_1d(values))
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise FastadaptError(f"{name} needs 1 or {channels} values, got {len(values)}")
    return values


def open_image(source: ImageSource) -> Image.Image:
    """Decode a path, PIL image or numpy array into a PIL image; errors name the file."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        array = source
        if array.dtype != np.uint8:
            # floats are taken as [0, 1]
            array = np.clip(np.asarray(array, dtype=np.float64) * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[2] not in (1, 3):
            array = np.transpose(array, (1, 2, 0))  # CHW -> HWC
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim not in (2, 3):
            raise FastadaptError(f"an image array must be HxW, HxWxC or CxHxW, got shape {source.shape}")
        return Image.fromarray(array)
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FastadaptError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise FastadaptError(f"{path}: not a readable image ({exc.__class__.__name__}); use PNG, JPEG, BMP or WebP") from None


def decode_bytes(data: bytes, name: str) -> Image.Image:
    """Decode image bytes (from a zip member); errors name the member."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise FastadaptError(f"{name}: not a readable image ({exc.__class__.__name__})") from None


def to_uint8(source: ImageSource, spec: Preprocess) -> np.ndarray:
    """Stage 1: decode, convert channels, resize and fix stroke polarity -> (C, size, size) uint8."""
    image = open_image(source)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # transparent pixels become the white background
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("L" if spec.channels == 1 else "RGB")
    if image.size != (spec.size, spec.size):
        image = image.resize((spec.size, spec.size), Image.LANCZOS)
    if spec.invert:
        image = ImageOps.invert(image)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[None]
    else:
        array = np.ascontiguousarray(np.transpose(array, (2, 0, 1)))
    return array


def to_float(batch: np.ndarray, spec: Preprocess) -> np.ndarray:
    """Stage 2: uint8 (..., C, H, W) -> normalised float32."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    return ((batch.astype(np.float32) / 255.0) - mean) / std


def preprocess(sources: Iterable[ImageSource], spec: Preprocess) -> np.ndarray:
    """The full recipe for a list of images -> float32 (B, C, size, size)."""
    arrays = [to_uint8(s, spec) for s in sources]
    if not arrays:
        return np.zeros((0, spec.channels, spec.size, spec.size), dtype=np.float32)
    return to_float(np.stack(arrays), spec)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not os.path.basename(name).startswith(".")
