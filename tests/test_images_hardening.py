"""Image inputs as users (and attackers) give them: bombs, FIFOs, odd modes and arrays, phone photos.

Every image is made here, in the test (crafted headers for the huge ones, so nothing big is written).
"""

import io
import os
import stat
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps, JpegImagePlugin

from fastadapt import images
from fastadapt.errors import FastadaptError
from fastadapt.images import (MAX_PIXELS, Preprocess, open_image, polarity_warning, reversed_polarity, to_uint8)
from fastadapt.runtime.shots import load_shots

SPEC = Preprocess()  # 28x28 gray, inverted, fit="pad"


# ----------------------------------------------------------------------------- crafted files

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, rows: bytes | None = None) -> bytes:
    """An 8-bit gray PNG; without rows only a token of pixel data (the header is what is checked)."""
    data = zlib.compress(rows if rows is not None else b"\0" * 64)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


def jpeg_bytes(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims width x height."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 200).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_bytes(width: int, height: int) -> bytes:
    """An uncompressed 8-bit gray TIFF header claiming width x height, with a few bytes of pixels."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 8 + 2 + 12 * 8 + 4), (278, 4, height), (279, 4, 16)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags)
    return b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\0" * 16


def write(tmp_path, name, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ----------------------------------------------------------------------------- bombs and sizes

@pytest.mark.parametrize("fmt, make", [("png", png_bytes), ("jpg", jpeg_bytes), ("tif", tiff_bytes)])
def test_decompression_bombs_are_refused_before_decoding(tmp_path, fmt, make):
    path = write(tmp_path, f"bomb.{fmt}", make(20000, 20000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FastadaptError) as exc:
            to_uint8(path, SPEC)
    message = one_line(exc)
    assert path in message and "400 MP" in message and "50 MP" in message and "downscale" in message
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_oversized_image_names_its_size_without_pillows_warning(tmp_path):
    before = (Image.MAX_IMAGE_PIXELS, list(warnings.filters))
    path = write(tmp_path, "huge.png", png_bytes(12000, 12000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FastadaptError) as exc:
            to_uint8(path, SPEC)
    assert "12000x12000" in one_line(exc) and "144 MP" in str(exc.value)
    assert not caught  # Pillow's DecompressionBombWarning stays inside
    assert (Image.MAX_IMAGE_PIXELS, list(warnings.filters)) == before  # nothing global changed
    # just over our limit, far under Pillow's: still refused, from the header alone
    with pytest.raises(FastadaptError, match="10000x6000"):
        to_uint8(write(tmp_path, "60mp.png", png_bytes(10000, 6000)), SPEC)


def test_the_pixel_limit_is_exact(tmp_path):
    # guards against an off-by-some limit: MAX_PIXELS pixels pass the check, one more is refused from the header
    images._check_size("at the limit", MAX_PIXELS, 1)
    with pytest.raises(FastadaptError) as exc:
        to_uint8(write(tmp_path, "one-over.png", png_bytes(MAX_PIXELS + 1, 1)), SPEC)
    assert f"{MAX_PIXELS + 1}x1" in one_line(exc) and "over the limit" in str(exc.value)


def test_a_48_megapixel_phone_photo_still_loads(tmp_path):
    assert 8000 * 6000 <= MAX_PIXELS
    rows = bytes(8001) * 6000  # filter byte + 8000 black pixels per row
    path = write(tmp_path, "48mp.png", png_bytes(8000, 6000, rows))
    out = to_uint8(path, SPEC)
    assert out.shape == (1, 28, 28) and out.dtype == np.uint8


def test_oversized_arrays_and_pil_images_are_refused():
    with pytest.raises(FastadaptError, match="over the limit"):
        to_uint8(np.zeros((8000, 7000), np.uint8), SPEC)
    # a lazily opened PIL image is checked from its header, before its pixels are read
    lazy = Image.open(io.BytesIO(png_bytes(9000, 9000)))
    with pytest.raises(FastadaptError, match="9000x9000"):
        to_uint8(lazy, SPEC)


def test_big_jpegs_decode_in_draft_mode_and_match_a_full_decode(tmp_path, monkeypatch):
    photo = Image.new("L", (4000, 3000), 255)
    ImageDraw.Draw(photo).ellipse((1200, 700, 2800, 2300), outline=0, width=120)
    path = tmp_path / "photo.jpg"
    photo.save(path, quality=90)
    drafted = []
    original = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: drafted.append(size) or original(self, mode, size))
    out = to_uint8(str(path), SPEC)
    assert drafted == [(8 * 28, 8 * 28)]
    with Image.open(path) as full:  # the reference: full decode, same recipe
        full_size = to_uint8(full.convert("L"), SPEC)
    assert np.abs(out.astype(int) - full_size).mean() < 2.0
    assert open_image(str(path)).size == (4000, 3000)  # without a target nothing is drafted
    small = tmp_path / "small.jpg"
    Image.new("L", (600, 600), 255).save(small)
    to_uint8(str(small), SPEC)
    assert len(drafted) == 1  # ordinary JPEGs decode in full, as before


# ----------------------------------------------------------------------------- only regular files

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
def test_a_fifo_named_png_is_refused_not_waited_on(tmp_path):
    fifo = str(tmp_path / "x.png")
    os.mkfifo(fifo)
    result = {}

    def read():
        try:
            to_uint8(fifo, SPEC)
        except FastadaptError as exc:
            result["error"] = str(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "reading a FIFO hung"
    assert "not a regular file" in result["error"] and fifo in result["error"]


def test_folders_devices_and_other_formats_are_refused(tmp_path):
    with pytest.raises(FastadaptError, match="is a folder"):
        to_uint8(str(tmp_path), SPEC)
    if os.path.exists(os.devnull) and not stat.S_ISREG(os.stat(os.devnull).st_mode):
        with pytest.raises(FastadaptError, match="not a regular file"):
            to_uint8(os.devnull, SPEC)
    # an EPS file (Pillow would run Ghostscript) renamed to .png is simply not an image to us
    eps = write(tmp_path, "x.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(FastadaptError, match="not a readable image"):
        to_uint8(eps, SPEC)
    with pytest.raises(FastadaptError, match="no such image file"):
        to_uint8(str(tmp_path / "missing.png"), SPEC)


# ----------------------------------------------------------------------------- what is accepted

def _closed_image():
    image = Image.new("L", (10, 10))
    image.close()
    return image


@pytest.mark.parametrize("bad, words", [
    (None, "got NoneType"), (42, "got int"), (b"\x89PNG", "image bytes: not a readable image"), ("", "empty path"),
    (np.zeros((10, 10, 5), np.uint8), "shape (10, 10, 5)"), (np.zeros((2, 3, 4, 5)), "shape"),
    (np.zeros(7), "shape"), (np.array([[1, None]], dtype=object), "dtype object"),
    (np.array([["a", "b"]]), "dtype <U1"), (np.zeros((4, 4), np.complex64), "complex64"),
    (np.zeros((0, 0), np.uint8), "empty"), (np.zeros((5, 0), np.uint8), "empty"),
    (np.full((4, 4), np.nan), "NaN"), (np.full((4, 4, 3), np.inf, np.float32), "NaN or infinite"),
    (np.array([[-5, 70000]]), "-5..70000"),
])
def test_wrong_inputs_are_one_line_errors_that_say_what_is_accepted(bad, words):
    with pytest.raises(FastadaptError) as exc:
        to_uint8(bad, SPEC)
    assert words in one_line(exc)
    with pytest.raises(FastadaptError):
        open_image(bad)


def test_a_closed_pil_image_is_refused():
    with pytest.raises(FastadaptError, match="PIL image.*closed image"):
        to_uint8(_closed_image(), SPEC)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "La", "RGBa", "RGBX", "CMYK",
                                  "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_pillow_mode_converts(mode, channels):
    out = to_uint8(Image.new(mode, (30, 20)), Preprocess(channels=channels))
    assert out.shape == (channels, 28, 28) and out.dtype == np.uint8


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 40000, 65535]], dtype=np.uint16).repeat(4, axis=0)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # Pillow keeps 16 bits
    spec = Preprocess(size=8, invert=False, fit="stretch")
    expected = np.round(values / 257.0).astype(np.uint8)
    for source in (str(path), values, Image.fromarray(values)):
        got = np.asarray(open_image(source))
        assert got.max() > 1  # decoded
        out = to_uint8(source, Preprocess(size=8, invert=False))
        assert out.shape == (1, 8, 8) and out.max() == 255 and 0 < out.mean() < 255
    # the exact values, at the target size (no resizing): 40000 -> 156, not clipped to 255
    tiled = np.tile(values, (2, 2))
    for source in (tiled, Image.fromarray(tiled)):
        got = to_uint8(source, spec)[0]
        assert np.array_equal(got, np.tile(expected, (2, 2))) and got[0, 2] == 156


def test_bool_and_8_bit_arrays_keep_their_meaning():
    mask = np.zeros((28, 28), bool)
    mask[5:10] = True
    assert set(np.unique(to_uint8(mask, Preprocess(invert=False)))) == {0, 255}
    floats = np.linspace(0, 1, 28 * 28).reshape(28, 28)
    legacy = ImageOps.invert(Image.fromarray(np.clip(floats * 255.0, 0, 255).astype(np.uint8)))
    assert np.array_equal(to_uint8(floats, SPEC), np.asarray(legacy)[None])


def test_integer_arrays_outside_16_bits_are_refused_at_both_ends():
    # guards against checking only the top of the 16-bit range: -1 would wrap to a bright level instead
    for low, high in ((-1, 1000), (0, 65536)):
        array = np.linspace(low, high, 28 * 28).round().astype(np.int32).reshape(28, 28)
        with pytest.raises(FastadaptError) as exc:
            to_uint8(array, SPEC)
        assert f"{low}..{high}" in one_line(exc)
    edge = np.linspace(0, 65535, 28 * 28).round().astype(np.int32).reshape(28, 28)
    assert to_uint8(edge, Preprocess(invert=False)).max() == 255  # 0..65535 itself is 16-bit, /257


def test_premultiplied_alpha_is_composited_on_white():
    # guards against dropping the alpha of "La" (grey premultiplied by alpha): on white a pixel shows
    # value + (255 - alpha), so an opaque 40 stays 40, 20 at alpha 128 (40 half covered) is 147, clear is white
    pixels = np.zeros((28, 28, 2), np.uint8)
    pixels[:, :14] = (40, 255)
    pixels[:14, 14:] = (20, 128)  # pixels[14:, 14:] stays (0, 0): fully transparent
    image = Image.frombytes("La", (28, 28), pixels.tobytes())
    out = to_uint8(image, Preprocess(invert=False))[0]  # 28 x 28 already: no resampling
    assert (out[:, :14] == 40).all() and (out[:14, 14:] == 147).all() and (out[14:, 14:] == 255).all()


def test_dim_float_images_keep_their_levels():
    # guards against stretching a float image whose values stay below 1: 0..0.5 is a dark picture (x255,
    # levels 0..127), not one to scale until its maximum is white; only maxima above 1 rescale
    floats = np.linspace(0, 0.5, 28 * 28).reshape(28, 28)
    plain = Preprocess(invert=False)
    assert np.array_equal(to_uint8(floats, plain)[0], (floats * 255.0).astype(np.uint8))
    assert to_uint8(floats, plain).max() == 127
    assert to_uint8(floats * 4, plain).max() == 255  # 0..2: scaled so that 2 is white


# ----------------------------------------------------------------------------- recipe and old bundles

def _legacy_to_uint8(image: Image.Image, size: int) -> np.ndarray:
    """The recipe before 'fit' existed: gray, stretched with Lanczos, inverted."""
    image = image.convert("L")
    if image.size != (size, size):
        image = image.resize((size, size), Image.LANCZOS)
    return np.asarray(ImageOps.invert(image))[None]


def _glyph(size=(105, 105), background=255, ink=0) -> Image.Image:
    image = Image.new("L", size, background)
    w, h = size
    ImageDraw.Draw(image).line([(w * 0.3, h * 0.2), (w * 0.6, h * 0.8), (w * 0.7, h * 0.3)], fill=ink, width=6)
    return image


def test_preprocess_fit_field_default_roundtrip_and_old_bundles():
    assert Preprocess().fit == "pad" and Preprocess().to_dict()["fit"] == "pad"
    for fit in images.FITS:
        spec = Preprocess(fit=fit)
        assert Preprocess.from_dict(spec.to_dict()) == spec
    old = Preprocess().to_dict()
    del old["fit"]  # every bundle and run folder written before the field
    assert Preprocess.from_dict(old).fit == "stretch"
    with pytest.raises(FastadaptError, match="fit must be one of"):
        Preprocess(fit="zoom")


def test_square_images_are_bit_for_bit_as_before_in_every_fit():
    square = _glyph((105, 105))
    for fit in images.FITS:
        assert np.array_equal(to_uint8(square, Preprocess(fit=fit)), _legacy_to_uint8(square, 28))
    wide = _glyph((160, 90))
    assert np.array_equal(to_uint8(wide, Preprocess(fit="stretch")), _legacy_to_uint8(wide, 28))


def test_pad_keeps_the_aspect_ratio_and_pads_with_the_background():
    wide = Image.new("L", (160, 90), 200)  # light gray paper
    ImageDraw.Draw(wide).ellipse((50, 15, 110, 75), fill=0)  # a round blob
    padded = to_uint8(wide, Preprocess(fit="pad", invert=False))[0]
    stretched = to_uint8(wide, Preprocess(fit="stretch", invert=False))[0]

    def extent(a):
        rows, cols = np.nonzero(a < 100)
        return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1

    h, w = extent(padded)
    assert abs(h - w) <= 1  # still round
    h, w = extent(stretched)
    assert h > 1.4 * w  # squashed sideways
    assert padded[0, 0] == padded[-1, -1] == 200  # padding is the paper's level, not black or white
    cropped = to_uint8(wide, Preprocess(fit="crop", invert=False))[0]
    centre = wide.crop((35, 0, 125, 90))
    assert np.array_equal(cropped, np.asarray(centre.resize((28, 28), Image.LANCZOS)))


def test_pad_is_the_documented_recipe_centred_on_the_median_border_level():
    """Guards against pasting the image at the corner rather than the centre, and against filling with the mean
    of the border rather than its median. The recipe (and the standalone export's): resize to
    (round(w * s / max(w, h)), round(h * s / max(w, h))), paste at ((s - that) // 2) on the border's median."""
    wide = Image.new("L", (50, 20), 200)  # light paper with a dark bar across its middle rows
    ImageDraw.Draw(wide).rectangle((0, 7, 49, 12), fill=0)
    ImageDraw.Draw(wide).line((0, 0, 10, 0), fill=0)  # with the bar's ends, 23 of the 140 border pixels are dark:
    # their mean is 167, their median 200
    tall = wide.transpose(Image.Transpose.ROTATE_90)  # 20 x 50
    for image, inner, at in ((wide, (28, 11), (0, 8)), (tall, (11, 28), (8, 0))):
        expected = Image.new("L", (28, 28), 200)
        expected.paste(image.resize(inner, Image.LANCZOS), at)
        got = to_uint8(image, Preprocess(size=28, fit="pad", invert=False))[0]
        assert np.array_equal(got, np.asarray(expected)), image.size


def test_colour_padding_uses_each_channels_background():
    image = Image.new("RGB", (50, 20), (10, 120, 230))
    out = to_uint8(image, Preprocess(channels=3, invert=False))
    assert tuple(out[:, 0, 0]) == (10, 120, 230) and tuple(out[:, 14, 14]) == (10, 120, 230)


# ----------------------------------------------------------------------------- phone photos

def _rotated_jpeg(orientation: int) -> tuple:
    upright = _glyph((60, 40))
    # what a phone stores: the sensor's pixels, plus the tag that says how to turn them upright
    stored = {6: upright.transpose(Image.Transpose.ROTATE_90), 8: upright.transpose(Image.Transpose.ROTATE_270),
              3: upright.transpose(Image.Transpose.ROTATE_180)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return upright, buffer.getvalue()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_to_files_and_pil_images(tmp_path, orientation):
    upright, data = _rotated_jpeg(orientation)
    path = write(tmp_path, "phone.jpg", data)
    reference = to_uint8(upright, SPEC).astype(int)
    for source in (path, Image.open(io.BytesIO(data))):
        out = to_uint8(source, SPEC).astype(int)
        assert np.abs(out - reference).mean() < 3  # JPEG noise only
    assert open_image(path).size == upright.size
    assert images.decode_bytes(data, "zip:phone.jpg").size == upright.size


@pytest.mark.parametrize("orientation, fix", [(2, Image.Transpose.FLIP_LEFT_RIGHT),
                                              (4, Image.Transpose.FLIP_TOP_BOTTOM),
                                              (5, Image.Transpose.TRANSPOSE), (7, Image.Transpose.TRANSVERSE)])
def test_mirrored_exif_orientations_are_applied_too(orientation, fix):
    # guards against honouring only the rotations (3, 6, 8): a selfie camera stores mirrored pixels (tags 2, 4,
    # 5, 7). Each of these four fixes is its own inverse, so the stored pixels are the fix applied to the upright
    # picture; PNG keeps them exact (pixel for pixel), so the result must equal the upright one's.
    upright = _glyph((60, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    upright.transpose(fix).save(buffer, "PNG", exif=exif.tobytes())
    data = buffer.getvalue()
    reference = to_uint8(upright, SPEC)
    assert not np.array_equal(to_uint8(upright.transpose(fix), SPEC), reference)  # the test can tell them apart
    assert open_image(data).size == upright.size
    assert np.array_equal(to_uint8(data, SPEC), reference)
    assert np.array_equal(to_uint8(images.decode_bytes(data, "zip:selfie.png"), SPEC), reference)


def test_transparency_is_composited_on_white():
    glyph = np.asarray(_glyph((40, 40)))
    ink = glyph < 128
    rgba = np.zeros((40, 40, 4), np.uint8)  # transparent black everywhere ...
    rgba[ink, 3] = 255  # ... except opaque black strokes
    expected = to_uint8(Image.fromarray(np.where(ink, 0, 255).astype(np.uint8)), SPEC)
    assert np.array_equal(to_uint8(Image.fromarray(rgba), SPEC), expected)
    la = Image.fromarray(rgba[:, :, [0, 3]], "LA")
    assert np.array_equal(to_uint8(la, SPEC), expected)
    palette = Image.fromarray(ink.astype(np.uint8), "P")  # index 0 transparent, 1 black
    palette.putpalette([0, 0, 0, 0, 0, 0])
    palette.info["transparency"] = 0
    assert np.array_equal(to_uint8(palette, SPEC), expected)
    gray = Image.fromarray(np.where(ink, 0, 77).astype(np.uint8))  # gray with a tRNS colour
    gray.info["transparency"] = 77
    assert np.array_equal(to_uint8(gray, SPEC), expected)
    buffer = io.BytesIO()  # and through a real PNG file
    palette.save(buffer, "PNG", transparency=0)
    assert np.array_equal(to_uint8(Image.open(io.BytesIO(buffer.getvalue())), SPEC), expected)


# ----------------------------------------------------------------------------- polarity

def test_polarity_of_light_strokes_on_dark_is_detected():
    dark = to_uint8(_glyph(background=0, ink=255), SPEC)
    light = to_uint8(_glyph(), SPEC)
    assert reversed_polarity(dark, SPEC) and not reversed_polarity(light, SPEC)
    message = polarity_warning([light, dark, dark], SPEC, ["a.png", "b.png", "c.png"])
    assert "2 of 3" in message and "b.png" in message and "invert" in message and "\n" not in message
    assert polarity_warning([light, light], SPEC) is None
    photo = Preprocess(invert=False)
    assert polarity_warning([to_uint8(_glyph(background=0, ink=255), photo)], photo) is None


# ----------------------------------------------------------------------------- shots

def _shots(per_class=3, **kinds):
    return {label: [_glyph((50, 50), *colours) for _ in range(per_class)] for label, colours in kinds.items()}


def test_shot_labels_colliding_after_str_are_an_error():
    stars, circles, arrows = (_shots(a=(255, 0))["a"] for _ in range(3))
    with pytest.raises(FastadaptError) as exc:
        load_shots({1: stars, "1": circles, 2: arrows}, SPEC)
    assert "1" in one_line(exc) and "'1'" in str(exc.value) and "distinct" in str(exc.value)
    assert load_shots({1: stars, 2: arrows}, SPEC).classes == ["1", "2"]


def test_bad_shots_are_skipped_one_by_one_with_a_warning(tmp_path, capsys):
    root = tmp_path / "shots"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            _glyph((40, 40)).save(root / label / f"{i}.png")
    (root / "a" / "bomb.png").write_bytes(png_bytes(20000, 20000))
    (root / "a" / "notes.txt").write_text("hello")
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "b" / "pipe.png")
    shots = load_shots(str(root), SPEC)
    err = capsys.readouterr().err
    assert shots.counts == [2, 2]
    assert "bomb.png" in err and "50 MP" in err and "notes.txt" in err and "keeps 2" in err
    assert all(line.startswith("warning: ") for line in err.strip().splitlines())
    if hasattr(os, "mkfifo"):
        assert "pipe.png" in err and "not a regular file" in err
    # in a dict: NaN arrays and None are skipped the same way; a class of only bad ones is an error
    good = _shots(a=(255, 0), b=(255, 0))
    shots = load_shots({"a": good["a"] + [np.full((9, 9), np.nan), None], "b": good["b"]}, SPEC)
    assert shots.counts == [3, 3]
    err = capsys.readouterr().err
    assert "image 3 of class 'a'" in err and "NaN" in err and "image 4 of class 'a'" in err
    with pytest.raises(FastadaptError, match="class 'b' has no readable images.*NaN"):
        load_shots({"a": good["a"], "b": [np.full((9, 9), np.inf)]}, SPEC)


def test_an_unreadable_class_folder_is_reported_as_unreadable(tmp_path, monkeypatch):
    root = tmp_path / "shots"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        _glyph((40, 40)).save(root / label / "0.png")
    locked = str(root / "b")
    scandir = os.scandir

    def denied(path="."):  # what a folder without read permission does (also when tests run as root)
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(FastadaptError) as exc:
        load_shots(str(root), SPEC)
    assert locked in one_line(exc) and "Permission denied" in str(exc.value) and "no images" not in str(exc.value)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads every folder")
def test_an_unreadable_class_folder_for_real(tmp_path):
    root = tmp_path / "shots"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        _glyph((40, 40)).save(root / label / "0.png")
    os.chmod(root / "b", 0)
    try:
        with pytest.raises(FastadaptError, match="cannot read class folder 'b'"):
            load_shots(str(root), SPEC)
    finally:
        os.chmod(root / "b", 0o755)


def test_reversed_polarity_shots_are_warned_about_once(capsys):
    shots = _shots(a=(0, 255), b=(0, 255), c=(255, 0))
    load_shots(shots, SPEC)
    err = capsys.readouterr().err
    assert err.count("light strokes on a dark background") == 1 and "6 of 9" in err
    load_shots(_shots(a=(255, 0), b=(255, 0)), SPEC)
    assert "light strokes" not in capsys.readouterr().err
