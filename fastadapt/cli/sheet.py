"""The contact sheet of ``fastadapt predict --sheet``: each image with its predicted label (PIL only).

Limits, so a sheet stays cheap to make and possible to open: at most MAX_IMAGES images (the first
ones; a footer line and a warning say how many were left out), and each thumbnail is made on its own,
a large JPEG decoded at reduced scale (draft mode), so one image at a time is in memory. Captions are drawn with a system
font covering many scripts when there is one (DejaVu Sans), else Pillow's own (ASCII only);
characters the font cannot draw, and control characters such as a newline in a file name, are shown
as escapes (\\u4e2d, \\n). The exact labels are in predict's text and --json output.
"""

from __future__ import annotations

import functools
import io
import unicodedata

from PIL import Image, ImageDraw, ImageFont

from ..errors import FastadaptError, warn
from ..images import as_seen, open_reduced
from ..outputs import write_atomic

THUMB = 112
CAPTION = 34
COLUMNS = 8
MAX_IMAGES = 400  # 8 x 50 thumbnails: a 896 x 7300 PNG of a few MB
FOOTER = 24
UNICODE_FONTS = ("DejaVuSans.ttf", "NotoSans-Regular.ttf")  # found in the system font folders by Pillow


@functools.lru_cache(maxsize=None)
def _font(size: int):
    for name in UNICODE_FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed bitmap size
        return ImageFont.load_default()


def contact_sheet(paths: list, predictions: list, out: str) -> None:
    """A grid of thumbnails captioned 'label  93%' ('? label  41%' in red when called unknown) and the file name,
    written atomically as PNG. The thumbnails show what the model saw (transparency on white, 16-bit and float
    pictures scaled as in preprocessing)."""
    if not str(out).lower().endswith(".png"):
        raise FastadaptError(f"{out}: a contact sheet is written as PNG; name it with .png")
    total = len(paths)
    shown = min(total, MAX_IMAGES)
    columns = min(COLUMNS, shown)
    rows = (shown + columns - 1) // columns
    footer = FOOTER if shown < total else 0
    sheet = Image.new("RGB", (columns * THUMB, rows * (THUMB + CAPTION) + footer), "white")
    draw = ImageDraw.Draw(sheet)
    big, small = _font(13), _font(10)
    for i, (path, prediction) in enumerate(zip(paths[:shown], predictions[:shown])):
        x, y = (i % columns) * THUMB, (i // columns) * (THUMB + CAPTION)
        image = _thumbnail(path)
        if image is None:
            draw.rectangle([x + 4, y + 4, x + THUMB - 5, y + THUMB - 5], fill=(230, 230, 230))
        else:
            sheet.paste(image, (x + (THUMB - image.width) // 2, y + (THUMB - image.height) // 2))
        draw.rectangle([x, y, x + THUMB - 1, y + THUMB + CAPTION - 1], outline=(200, 200, 200))
        # "label  93%": a long label is clipped, never the percentage. Unknown ("unknown? label" on the command
        # line): "? label", in red, as the whole word leaves no room in a cell; the closest class is still shown
        unknown = "? " if getattr(prediction, "unknown", False) else ""
        percent = f"  {100 * prediction.probability:.0f}%"
        room = THUMB - 8 - draw.textlength(unknown + percent, font=big)
        caption = unknown + _clip(draw, printable(prediction.label, big), big, room) + percent
        draw.text((x + 4, y + THUMB), caption, fill=(160, 0, 0) if unknown else (0, 0, 0), font=big)
        name = printable(str(path).replace("\\", "/").rsplit("/", 1)[-1], small)
        draw.text((x + 4, y + THUMB + 17), _clip(draw, name, small), fill=(110, 110, 110), font=small)
    if footer:
        note = f"first {shown} of {total} images; {total - shown} not shown"
        draw.text((4, rows * (THUMB + CAPTION) + 5), note, fill=(160, 0, 0), font=big)
        warn(f"{out}: the contact sheet shows the first {shown} of {total} images (at most {MAX_IMAGES} per "
             f"sheet); predict the others separately for a sheet of them")
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    write_atomic(out, buffer.getvalue())


def _thumbnail(path):
    """The image as the model saw it, reduced to fit a cell (a large image reduced as it is converted); None if
    unreadable."""
    try:
        # the loader of predict: regular files only, a pixel limit, EXIF orientation, JPEG draft for a target size
        image = open_reduced(path, THUMB)
        # and its mode handling: 16-bit and float scaled, transparency on white (RGB, as colour models see it)
        image = as_seen(image, 3, THUMB, str(path))
        image.thumbnail((THUMB - 8, THUMB - 8))
        return image
    except (FastadaptError, OSError, ValueError):
        return None


def printable(text: str, font) -> str:
    """``text`` with control characters and characters ``font`` has no glyph for written as escapes."""
    return "".join(ch if _drawable(ch, font) else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _drawable(ch: str, font) -> bool:
    if unicodedata.category(ch)[0] == "C":  # control, format, unassigned: a newline breaks text()
        return False
    return ch.isascii() or _glyph(font, ch) != _glyph(font, "\U000F0000")  # a private-use code point: no glyph


@functools.lru_cache(maxsize=4096)
def _glyph(font, ch: str):
    try:
        mask = font.getmask(ch)
    except (OSError, UnicodeError, ValueError):  # a bitmap font outside Latin-1
        return None
    return mask.size, bytes(mask)


def _clip(draw, text: str, font, width: float = THUMB - 8) -> str:
    """``text`` shortened with "..." to at most ``width`` pixels (or to 4 characters)."""
    while len(text) > 4 and draw.textlength(text, font=font) > width:
        text = text[:-4] + "..."  # ASCII: every font can draw it
    return text
