"""The contact sheet of ``fastadapt predict --sheet``: each image with its predicted label (PIL only)."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

from ..outputs import write_atomic
from ..images import open_image

THUMB = 112
CAPTION = 34
COLUMNS = 8


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed bitmap size
        return ImageFont.load_default()


def contact_sheet(paths: list, predictions: list, out: str) -> None:
    """A grid of thumbnails captioned 'label  93%' (and the file name), written atomically as PNG."""
    columns = min(COLUMNS, len(paths))
    rows = (len(paths) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * THUMB, rows * (THUMB + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    big, small = _font(13), _font(10)
    for i, (path, prediction) in enumerate(zip(paths, predictions)):
        x, y = (i % columns) * THUMB, (i // columns) * (THUMB + CAPTION)
        image = open_image(path).convert("RGB")
        image.thumbnail((THUMB - 8, THUMB - 8))
        sheet.paste(image, (x + (THUMB - image.width) // 2, y + (THUMB - image.height) // 2))
        draw.rectangle([x, y, x + THUMB - 1, y + THUMB + CAPTION - 1], outline=(200, 200, 200))
        label = f"{prediction.label}  {100 * prediction.probability:.0f}%"
        draw.text((x + 4, y + THUMB), _clip(draw, label, big), fill=(0, 0, 0), font=big)
        name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
        draw.text((x + 4, y + THUMB + 17), _clip(draw, name, small), fill=(110, 110, 110), font=small)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    write_atomic(out, buffer.getvalue())


def _clip(draw, text: str, font) -> str:
    while len(text) > 1 and draw.textlength(text, font=font) > THUMB - 8:
        text = text[:-2] + "…"
    return text
