"""The one preprocessing recipe, shared by the trainer, the exporter and the on-device runtime.

An image goes through two stages:
  ``to_uint8``  decode -> upright (EXIF) -> channels -> fit into the square -> stroke polarity,
                giving a compact (C, H, W) uint8 array (datasets cache this form in memory);
  ``to_float``  uint8 -> float32 in [0, 1] -> (x - mean) / std, the network's input.
``preprocess`` is the two stages in a row. The recipe (``Preprocess``) is written into every run
directory and every exported bundle, so the device repeats exactly what training saw.

Inputs are untrusted: only regular files are read, the pixel size is checked from the header before
anything is decoded, and every failure is a one-line ``FastadaptError`` naming the input and the fix.
"""

from __future__ import annotations

import inspect
import io
import os
import re
import stat
import struct
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO, Iterable, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

from .errors import FastadaptError

# Decoders we let Pillow try; others (EPS runs Ghostscript, PDF, ...) are never reached by a renamed file.
# (Phone JPEGs holding several pictures, MPO, come through the JPEG decoder.)
FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF", "PPM")
# The file names these decoders are registered for in Pillow 13 (and .mpo, read by the JPEG decoder), the
# usual ones first (messages list the first few): what folder scans (predict, evaluate --data, adapt --shots)
# take as images. A test checks that Pillow decodes each with one of FORMATS.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".apng", ".jpe", ".jfif",
                  ".mpo", ".ppm", ".pgm", ".pbm", ".pnm", ".pfm")

# Largest image we decode, from the format's point of view rather than the machine's memory: a 48 MP
# phone photo (8000x6000) loads; a decoded image stays under ~200 MB (4 bytes a pixel: RGB, RGBA, float),
# and converting it needs only strips of STRIP_PIXELS more. Bigger is refused.
MAX_PIXELS = 50_000_000
# Images above this are reduced to at least DRAFT_MARGIN x the target side before they are converted:
# JPEGs while decoding (libjpeg's draft mode, 1/2..1/8 scale), others right after decoding (box averages,
# Image.reduce), so a 12 MP photo for a 28-pixel input costs a fraction of the memory.
# Smaller images are converted in full, exactly as before.
DRAFT_ABOVE_PIXELS = 4_000_000
DRAFT_MARGIN = 8
# Mode conversions (transparency, 16-bit, float) run on strips of about this many pixels, so they never
# make a full-size copy: a 49 MP float or palette image took 0.9-1.6 GB in whole-image float64 copies.
STRIP_PIXELS = 1 << 18

FITS = ("pad", "stretch", "crop")

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image, np.ndarray]

ACCEPTED = ("pass an image file path, encoded image bytes, a binary file object, a PIL image or a numpy array "
            "(HxW, HxWxC or CxHxW)")

# Most bytes read from a file object that cannot seek (a pipe, a socket stream): an uncompressed image of
# MAX_PIXELS RGBA pixels, plus headers. Seekable ones (files, BytesIO, uploads) are read only as far as needed.
MAX_STREAM_BYTES = 4 * MAX_PIXELS + (1 << 20)

@dataclass(frozen=True)
class Preprocess:
    """How raw images become network inputs.

    size      square side in pixels after resizing
    channels  1 (grayscale) or 3 (RGB)
    invert    True for dark strokes on a light background (Omniglot, sketches): strokes become
              bright on a zero background, which is what the network learns from
    mean, std per-channel normalisation applied after scaling to [0, 1]
    fit       how a non-square image becomes square: "pad" (fit inside, pad with the background
              level), "crop" (centre square) or "stretch" (squash; what bundles without the field did)
    """

    size: int = 28
    channels: int = 1
    invert: bool = True
    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    fit: str = "pad"

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise FastadaptError(f"channels must be 1 or 3, got {self.channels}")
        if self.size < 8:
            raise FastadaptError(f"image size must be at least 8 pixels, got {self.size}")
        if self.fit not in FITS:
            raise FastadaptError(f"preprocess fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        object.__setattr__(self, "mean", _per_channel(self.mean, self.channels, "mean"))
        object.__setattr__(self, "std", _per_channel(self.std, self.channels, "std"))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["resize"] = "lanczos"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        # Bundles and runs written before "fit" existed stretched every image: keep them bit-for-bit.
        return cls(size=int(d["size"]), channels=int(d["channels"]), invert=bool(d["invert"]),
                   mean=tuple(d["mean"]), std=tuple(d["std"]), fit=d.get("fit", "stretch"))


def _per_channel(values: Any, channels: int, name: str) -> tuple:
    values = tuple(float(v) for v in np.atleast_1d(values))
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise FastadaptError(f"{name} needs 1 or {channels} values, got {len(values)}")
    return values


# ----------------------------------------------------------------------------- decoding

def _too_big(name: str, width: int, height: int) -> FastadaptError:
    return FastadaptError(f"{name}: {width}x{height} pixels ({width * height / 1e6:.0f} MP) is over the limit of "
                          f"{MAX_PIXELS // 1_000_000} MP; downscale it (a few hundred pixels a side is plenty)")


def _check_size(name: str, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise _too_big(name, width, height)
    if width <= 0 or height <= 0:
        raise FastadaptError(f"{name}: the image is empty ({width}x{height} pixels)")


def _read_file(path: str, target: int | None) -> Image.Image:
    # Only regular files: a FIFO or a device named x.png would block or never end.
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FastadaptError(f"{path}: no such image file") from None
    except (OSError, ValueError) as exc:
        raise FastadaptError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise FastadaptError(f"{path}: is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise FastadaptError(f"{path}: not a regular file (a pipe, device or socket); only image files are read")
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, opening still returns at once
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise FastadaptError(f"{path}: cannot read ({exc.strerror or exc}); check the file's permissions") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise FastadaptError(f"{path}: not a regular file; only image files are read")
        return _decode(f, path, target)


def _decode(fp, name: str, target: int | None) -> Image.Image:
    """Header, size check, then the pixels (a JPEG drafted down when the target is much smaller)."""
    try:
        image = _open_header(fp)
    except Image.DecompressionBombError as exc:  # a plugin's own check (a GIF frame beyond its screen, MPO)
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "too many pixels"
        raise FastadaptError(f"{name}: {size} is over the limit of {MAX_PIXELS // 1_000_000} MP; "
                             f"downscale it (a few hundred pixels a side is plenty)") from None
    except Image.UnidentifiedImageError:  # its message names the stream object, which says nothing to a user
        raise FastadaptError(f"{name}: not a readable image (no known image format); use PNG, JPEG, BMP or "
                             f"WebP") from None
    except Exception as exc:  # Pillow raises many types for damaged headers
        raise FastadaptError(f"{name}: not a readable image ({_reason(exc)}); use PNG, JPEG, BMP or WebP") from None
    try:
        _check_pillow_limit(name, *image.size)
        _check_size(name, *image.size)
        if (target and isinstance(image, JpegImagePlugin.JpegImageFile)
                and image.size[0] * image.size[1] > DRAFT_ABOVE_PIXELS):
            image.draft(None, (DRAFT_MARGIN * target, DRAFT_MARGIN * target))
        image.load()
        return image
    except FastadaptError:
        raise
    except Exception as exc:  # truncated or corrupt pixel data: the format is fine, the file is not
        raise FastadaptError(f"{name}: not a readable image: the {image.format or 'image'} file is damaged "
                             f"({_reason(exc)}); save it again or remove it") from None


def _open_header(fp) -> Image.Image:
    """``Image.open(fp, formats=_formats())`` less its size check, which warns (DecompressionBombWarning) about
    an image that _decode refuses next anyway. Hiding that warning would need warnings.catch_warnings, which is
    process-wide: it drops the filters the host's other threads set meanwhile. So this is Image.open's own
    loop over the formats' (factory, accept) pairs; a plugin that checks sizes itself may still warn."""
    fp.seek(0)
    prefix = fp.read(16)
    for fmt in _formats():
        factory, accept = Image.OPEN[fmt]
        found = not accept or accept(prefix)
        if not found or isinstance(found, str):  # a str: this Pillow lacks the format's decoder
            continue
        fp.seek(0)
        try:
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, struct.error):  # not this format after all, as in Image.open
            continue
    raise Image.UnidentifiedImageError("no known image format")


def _check_pillow_limit(name: str, width: int, height: int) -> None:
    """Image.open's refusal, which _open_header skips: over twice Image.MAX_IMAGE_PIXELS, which the host may
    have lowered below our limit. Before _check_size, so these images keep the message Image.open's gave."""
    limit, pixels = Image.MAX_IMAGE_PIXELS, width * height
    if not limit or pixels <= 2 * limit:
        return
    if 2 * limit < MAX_PIXELS:  # the host's limit is the stricter one: name it
        raise FastadaptError(f"{name}: {width}x{height} pixels is over the limit of {2 * limit:,} pixels this "
                             f"program set for Pillow (Image.MAX_IMAGE_PIXELS); downscale it")
    raise FastadaptError(f"{name}: {pixels / 1e6:.0f} MP is over the limit of {MAX_PIXELS // 1_000_000} MP; "
                         f"downscale it (a few hundred pixels a side is plenty)")


def _formats() -> list:
    Image.init()
    return [f for f in FORMATS if f in Image.OPEN]  # a Pillow built without WebP has no "WEBP"


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())[:80]
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def decode_bytes(data: bytes, name: str) -> Image.Image:
    """Decode image bytes (from a zip member); errors name the member."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FastadaptError(f"{name}: expected image bytes, got {type(data).__name__}")
    return _upright(_decode(io.BytesIO(data), name, None), name)


def _is_file_object(source: Any) -> bool:
    """A readable file-like object (open(..., "rb"), io.BytesIO, a web framework's upload)."""
    return callable(getattr(source, "read", None)) and not isinstance(source, (str, bytes, os.PathLike, Image.Image))


def is_image_source(source: Any) -> bool:
    """One image in any accepted form (rather than a list of them)."""
    return isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray)) \
        or _is_file_object(source)


def _stream_name(stream) -> str:
    name = getattr(stream, "name", None)
    return f"file object {name}" if isinstance(name, str) and name else "file object"


def _read_stream(stream, target: int | None) -> Image.Image:
    """A binary file object: regular files and in-memory streams only, then the same checks as a path."""
    name = _stream_name(stream)
    if inspect.iscoroutinefunction(stream.read):  # checked before calling: no coroutine left un-awaited
        raise FastadaptError(f"{name}: read() is async (an async web upload); pass its bytes "
                             f"(data = await upload.read()) or its file object (upload.file)")
    try:
        fileno = stream.fileno()
    except Exception:  # io.BytesIO, SpooledTemporaryFile in memory, wrappers: no descriptor
        fileno = None
    if fileno is not None:
        try:
            regular = stat.S_ISREG(os.fstat(fileno).st_mode)
        except OSError as exc:
            raise FastadaptError(f"{name}: cannot read ({exc.strerror or exc})") from None
        if not regular:
            raise FastadaptError(f"{name}: not a regular file (a pipe, device or socket); pass the image's bytes "
                                 f"(data = stream.read()) or a file opened from disk")
    try:
        seekable = bool(stream.seekable()) if callable(getattr(stream, "seekable", None)) else False
        first = stream.read(0) if seekable else _read_up_to(stream, MAX_STREAM_BYTES + 1)
    except Exception as exc:
        raise FastadaptError(f"{name}: cannot read ({_reason(exc)}); pass an open binary file object") from None
    if isinstance(first, str):
        raise FastadaptError(f"{name}: is opened in text mode; open the image with open(path, 'rb')")
    if not isinstance(first, (bytes, bytearray, memoryview)):
        raise FastadaptError(f"{name}: read() returned {type(first).__name__}, not bytes; pass a binary file object")
    if seekable:
        return _decode(stream, name, target)
    if len(first) > MAX_STREAM_BYTES:
        raise FastadaptError(f"{name}: more than {MAX_STREAM_BYTES // 2**20} MB; this is not an image of at most "
                             f"{MAX_PIXELS // 1_000_000} MP, downscale it")
    return _decode(io.BytesIO(first), name, target)


def _read_up_to(stream, limit: int):
    """Read until the end or ``limit`` bytes: one read(n) may return less (a raw stream, a network body).
    Returns what read() gave when that is not bytes, for the caller to name."""
    chunks, size = [], 0
    while size < limit:
        chunk = stream.read(limit - size)
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            return chunk
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _upright(image: Image.Image, name: str) -> Image.Image:
    """Apply the EXIF orientation phones write instead of rotating the pixels."""
    try:
        orientation = image.getexif().get(0x0112, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(image)
    except Exception:  # a damaged EXIF block: the pixels themselves are fine, keep them as stored
        pass
    return image


def _level_rule(kind: str, low, high, name: str | None, sixteen_bit: bool = False, transparent=None):
    """How pixel values become 0..255 levels: decided once from the whole image's value range, returned as
    a function applied strip by strip (so no full-size float copy is made).

      16-bit images (I;16 files), and integers above 255: /257, rounded; integers outside 0..65535: refused
      other integers and bools: 0..1 is a mask (x255), else 0..255 as is
      floats: 0..1 -> x255; an image whose values go above 1 is scaled so that its largest value is white,
              so the scale shrinks smoothly as the maximum passes 1 (no cliff there) and 12-bit, 16-bit and
              HDR floats are scaled, not clipped. A 0..255 float image keeps its levels only if some pixel
              is 255 (pass 8-bit pictures as uint8). NaN or infinite values: refused
      values below 0 are black; ``transparent`` (the grey level a PNG's tRNS marks transparent) is white.
    ``name`` is the file (or other source) messages name; None for a numpy array (their advice is numpy's).
    """
    low, high = (float(v) if kind == "f" else int(v) for v in (low, high))
    if kind == "f" and not (np.isfinite(low) and np.isfinite(high)):
        raise FastadaptError("an image array has NaN or infinite pixels; replace them (e.g. np.nan_to_num) before "
                             "passing the image" if name is None else
                             f"{name}: the image has NaN or infinite pixel values; save it again with finite "
                             f"values (e.g. as an 8- or 16-bit PNG)")
    if sixteen_bit or (kind in "iu" and high > 255):
        if low < 0 or high > 65535:
            raise FastadaptError(f"an integer image array holds values {low}..{high}; pass 8-bit (0..255) or "
                                 f"16-bit (0..65535) pixels" if name is None else
                                 f"{name}: its integer pixels hold values {low}..{high}, more than 16 bits; save "
                                 f"it again as an 8- or 16-bit image (0..65535)")

        def convert(x):
            return np.round(x / 257.0).astype(np.uint8)
    else:
        gain = 255.0 / max(1.0, high) if kind == "f" else (255.0 if high <= 1 else 1.0)

        def convert(x):
            return np.clip(x * gain, 0, 255).astype(np.uint8)

    def levels(strip: np.ndarray) -> np.ndarray:
        out = convert(np.asarray(strip, dtype=np.float64))
        if transparent is not None:
            out[strip == transparent] = 255  # composited on white, as 8-bit grey with tRNS is
        return out

    return levels


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """Pixel values -> uint8 (``_level_rule``), a strip of rows at a time."""
    kind = array.dtype.kind
    if kind not in "biuf":
        raise FastadaptError(f"an image array of dtype {array.dtype} is not an image; {ACCEPTED} of uint8, "
                             f"integer, bool or float (0..1) pixels")
    if array.dtype == np.uint8:
        return array
    levels = _level_rule(kind, array.min(), array.max(), None)
    out = np.empty(array.shape, np.uint8)
    rows = max(1, STRIP_PIXELS // max(1, array[0].size))
    for top in range(0, len(array), rows):
        out[top:top + rows] = levels(array[top:top + rows])
    return out


_CHANNELS = (1, 2, 3, 4)  # the last axis of an HxWxC image array: grey, grey + alpha, RGB, RGBA


def _from_array(source: np.ndarray) -> Image.Image:
    """An image array -> PIL image. A 3-D array is HxWxC when its last axis is 1 or 3 (2 or 4 with alpha):
    that wins, so an RGBA image 3 rows tall, (3, W, 4), is not read as CxHxW; else CxHxW when its first axis is
    1, 3 or 4. Whether a (3, H, W) array is one colour image or 3 grey ones is for the caller to decide
    (shots.refuse_stacked_array: grey models refuse it)."""
    array = source
    if array.ndim == 3 and array.shape[2] not in _CHANNELS and array.shape[0] in (1, 3, 4):
        array = np.transpose(array, (1, 2, 0))  # CHW -> HWC
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in _CHANNELS):
        raise FastadaptError(f"an image array must be HxW, HxWxC (C = 1 or 3, 2 or 4 with alpha) or CxHxW "
                             f"(C = 1, 3 or 4), got shape {source.shape}; for several images pass a list of "
                             f"them or an N x C x H x W array")
    _check_size(f"image array of shape {source.shape}", array.shape[1], array.shape[0])
    return Image.fromarray(np.ascontiguousarray(_array_to_uint8(array)))


def open_reduced(source: ImageSource, target: int | None) -> Image.Image:
    if isinstance(source, Image.Image):
        _check_size("PIL image", *source.size)
        try:
            source.load()  # a lazily opened image decodes here; a closed one fails here
        except Exception as exc:
            raise FastadaptError(f"PIL image: cannot read its pixels ({_reason(exc)}); pass an open, "
                                 f"loadable image") from None
        return _upright(source, "PIL image")
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (str, os.PathLike)) and not isinstance(os.fspath(source), bytes):
        path = os.fspath(source)
        if not path:
            raise FastadaptError(f"an empty path is not an image; {ACCEPTED}")
        return _upright(_read_file(path, target), path)
    if isinstance(source, (bytes, bytearray, memoryview)):  # encoded image bytes (a web upload)
        if isinstance(source, memoryview):  # BytesIO needs one block of bytes; a slice such as m[::2] is not
            try:
                source = source if source.c_contiguous else source.tobytes()
            except ValueError:  # a released memoryview
                raise FastadaptError(f"a released memoryview is not an image; {ACCEPTED}") from None
        if not len(source):
            raise FastadaptError(f"empty image bytes; {ACCEPTED}")
        return _upright(_decode(io.BytesIO(source), "image bytes", target), "image bytes")
    if _is_file_object(source):
        name = _stream_name(source)
        return _upright(_read_stream(source, target), name)
    raise FastadaptError(f"got {type(source).__name__}, not an image; {ACCEPTED}")


def open_image(source: ImageSource) -> Image.Image:
    """Decode a path, image bytes, binary file object, PIL image or numpy array into an upright PIL image;
    errors name the file."""
    return open_reduced(source, None)


# ----------------------------------------------------------------------------- stage 1

def _name(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "image bytes"
    if _is_file_object(source):
        return _stream_name(source)
    return "PIL image" if isinstance(source, Image.Image) else "image"


def _is_deep(mode: str) -> bool:
    return mode.startswith("I;16") or mode in ("I", "F")  # 16-bit, 32-bit integer, float


def _strips(image: Image.Image, rows: int):
    """(top, strip) for consecutive strips of ``rows`` rows; an image of at most ``rows`` rows is one strip."""
    width, height = image.size
    if rows >= height:
        yield 0, image
        return
    for top in range(0, height, rows):
        yield top, image.crop((0, top, width, min(height, top + rows)))  # keeps the palette and transparency


def _deep_rule(image: Image.Image, name: str, rows: int):
    """The ``_level_rule`` of a 16-bit, 32-bit or float image, from its whole range (read strip by strip)."""
    low = high = None
    for _, strip in _strips(image, rows):
        values = np.asarray(strip)
        low = values.min() if low is None else np.minimum(low, values.min())  # np.minimum keeps a NaN
        high = values.max() if high is None else np.maximum(high, values.max())
    transparent = image.info.get("transparency")
    return _level_rule(values.dtype.kind, low, high, name, sixteen_bit=image.mode.startswith("I;16"),
                       transparent=transparent if isinstance(transparent, int) else None)


def _reduction(width: int, height: int, target: int | None) -> int:
    """How much ``_flatten`` reduces an image above DRAFT_ABOVE_PIXELS for a ``target`` side: 1 (not at all)
    for smaller ones; it stays at least DRAFT_MARGIN x the target a side, as big JPEGs do in draft mode."""
    if not target or width * height <= DRAFT_ABOVE_PIXELS:
        return 1
    return max(1, min(width, height) // (DRAFT_MARGIN * target))


def _flatten(image: Image.Image, channels: int, factor: int = 1, name: str = "image") -> Image.Image:
    """Any Pillow mode -> "L" or "RGB": transparency on white, 16/32-bit and float scaled (``_level_rule``).

    A strip at a time, so no full-size temporary is made; with a ``factor`` (``_reduction``) above 1 each
    strip is then reduced by it (box averages of whole blocks, Image.reduce; the last row and column
    average what is left). Every other step works pixel by pixel, so an image that is not reduced comes
    out exactly as if converted whole. ``name`` is what errors call the image."""
    width, height = image.size
    rows = factor * max(1, STRIP_PIXELS // (width * factor))  # whole blocks: the same as reducing it whole
    levels = _deep_rule(image, name, rows) if _is_deep(image.mode) else None
    out = None
    for top, strip in _strips(image, rows):
        part = _flatten_pixels(strip, channels, levels)
        if factor > 1:
            part = part.reduce(factor)
        if rows >= height:
            return part
        if out is None:
            out = Image.new(part.mode, (-(-width // factor), -(-height // factor)))
        out.paste(part, (0, top // factor))
    return out


def as_seen(image: Image.Image, channels: int, target: int, name: str = "image") -> Image.Image:
    """An opened image as preprocessing sees it before fitting (mode handling, large pictures reduced for a
    ``target`` side): what the contact sheet shows."""
    return _flatten(image, channels, _reduction(*image.size, target), name)


def _flatten_pixels(image: Image.Image, channels: int, levels) -> Image.Image:
    """``_flatten`` of one strip; ``levels`` is the whole image's rule for 16/32-bit and float pixels."""
    mode = image.mode
    if levels is not None:
        image = Image.fromarray(levels(np.asarray(image)), "L")
    elif mode == "La":  # premultiplied: on white, value + (255 - alpha)
        lum, alpha = (np.asarray(image.getchannel(i), dtype=np.int32) for i in (0, 1))
        image = Image.fromarray(np.clip(lum + 255 - alpha, 0, 255).astype(np.uint8), "L")
    elif mode == "LAB":  # Pillow has no LAB -> L; its L band is the lightness
        image = image.getchannel("L") if channels == 1 else image.convert("RGB")
    elif mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in image.info:
        # transparent pixels become the white background
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("L" if channels == 1 else "RGB")


def _border_level(image: Image.Image):
    """Median of the outermost pixels, per channel: the background a padded image is filled with."""
    w, h = image.size
    edges = [image.crop(box) for box in ((0, 0, w, 1), (0, h - 1, w, h), (0, 0, 1, h), (w - 1, 0, w, h))]
    pixels = np.concatenate([np.asarray(e).reshape(-1, len(image.getbands())) for e in edges])
    level = tuple(int(round(v)) for v in np.median(pixels, axis=0))
    return level[0] if len(level) == 1 else level


def _fit(image: Image.Image, spec: Preprocess, size: tuple | None = None, factor: int = 1) -> Image.Image:
    """Make the image the spec's square. An image ``_flatten`` reduced by ``factor`` is fitted as its full
    ``size`` would be: the boxes are worked out on that size and divided by the factor, so the geometry
    stays exact although the reduced image's last row and column hold partial blocks."""
    side = spec.size
    w, h = size or image.size
    whole = (0, 0, w / factor, h / factor)
    if (w, h) == (side, side):
        return image
    if spec.fit == "stretch" or w == h:  # a square image is the same in every mode
        return image.resize((side, side), Image.LANCZOS, box=whole)
    if spec.fit == "crop":
        m = min(w, h)
        left, top = (w - m) // 2, (h - m) // 2
        box = tuple(v / factor for v in (left, top, left + m, top + m))
        return image.resize((side, side), Image.LANCZOS, box=box)
    scale = side / max(w, h)
    inner = (max(1, round(w * scale)), max(1, round(h * scale)))
    canvas = Image.new(image.mode, (side, side), _border_level(image))
    canvas.paste(image.resize(inner, Image.LANCZOS, box=whole), ((side - inner[0]) // 2, (side - inner[1]) // 2))
    return canvas


def to_uint8(source: ImageSource, spec: Preprocess, name: str | None = None) -> np.ndarray:
    """Stage 1: decode, upright, convert channels, fit to the square and fix stroke polarity -> (C, size, size) uint8.

    ``name``: what errors call the image (a zip member's name, say); by default its path, or what it is."""
    name = name or _name(source)
    image = open_reduced(source, spec.size)
    try:
        size = image.size
        factor = _reduction(*size, spec.size)
        image = _fit(_flatten(image, spec.channels, factor, name), spec, size, factor)
        if spec.invert:
            image = ImageOps.invert(image)
        array = np.asarray(image, dtype=np.uint8)
    except FastadaptError:
        raise
    except Exception as exc:  # e.g. a closed PIL image, a mode Pillow cannot convert
        raise FastadaptError(f"{name}: cannot convert this image ({_reason(exc)}); "
                             f"pass an open image in a usual mode (L, RGB, RGBA, P)") from None
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


# ----------------------------------------------------------------------------- stroke polarity

def _background_level(array: np.ndarray) -> float:
    """Median of a preprocessed (C, H, W) uint8 image's border pixels: its background after inversion."""
    border = np.concatenate([array[:, 0, :], array[:, -1, :], array[:, :, 0], array[:, :, -1]], axis=1)
    return float(np.median(border))


def reversed_polarity(array: np.ndarray, spec: Preprocess) -> bool:
    """True when a preprocessed image looks like light strokes on a dark background for an inverting model.

    After inversion the model's training images have a dark (near-zero) background; a bright one means
    the picture had a dark background to begin with.
    """
    return bool(spec.invert) and _background_level(array) > 127


def polarity_warning(arrays: Iterable[np.ndarray], spec: Preprocess,
                     names: Sequence[str] | None = None) -> str | None:
    """One message for all images (preprocessed (C, H, W) uint8, e.g. from to_uint8) whose stroke polarity
    is the opposite of the model's training data, or None. Callers warn once per call with it."""
    if not spec.invert:
        return None  # photo models: no stroke polarity to speak of
    arrays = list(arrays)
    flagged = [i for i, a in enumerate(arrays) if reversed_polarity(a, spec)]
    if not flagged:
        return None
    first = names[flagged[0]] if names is not None else f"image {flagged[0]}"
    return (f"{len(flagged)} of {len(arrays)} image(s) look like light strokes on a dark background (first: "
            f"{first}), but this model expects dark strokes on a light background; invert them "
            f"(e.g. PIL.ImageOps.invert) or they will be misread")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not os.path.basename(name).startswith(".")
