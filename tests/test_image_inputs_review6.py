"""Image inputs from hostile review 6: big 16-bit, float, palette and transparent pictures convert in strips
(memory), the contact sheet draws what the model saw, pixel-value errors name the file, 16-bit grey with
transparency, the float scaling rule, one list of image file names, and linked subfolders in class folders."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fastadapt import images
from fastadapt.cli import sheet
from fastadapt.data.classes import folder_images, load_class_folders
from fastadapt.errors import FastadaptError
from fastadapt.images import IMAGE_SUFFIXES, Preprocess, is_image_name, to_uint8
from fastadapt.runtime.shots import load_shots

PHOTO = Preprocess(size=32, channels=3, invert=False, fit="crop")  # as the photos model
GREY = Preprocess(size=32, channels=1, invert=False, fit="stretch")
INVERTING = Preprocess()  # as the characters model: 28x28 grey, inverted


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def disc(size=(64, 48)) -> Image.Image:
    """A red disc on white, as review 6's make_modes.py draws it."""
    image = Image.new("RGB", size, "white")
    w, h = size
    ImageDraw.Draw(image).ellipse((w // 4, h // 6, 3 * w // 4, 5 * h // 6), fill=(200, 30, 30))
    return image


# ----------------------------------------------------------------------------- 1. memory

MEASURE = textwrap.dedent("""
    import resource, sys
    from PIL import Image
    from fastadapt.images import Preprocess, to_uint8

    mode, side = sys.argv[1], int(sys.argv[2])
    # filled (every page touched), so the picture is all in the RSS measured before converting it
    image = Image.new(mode.split("+")[0], (side, side), {"P+tRNS": 1, "RGBA": (9, 9, 9, 9), "I;16": 40000, "F": 0.5}[mode])
    if mode == "P+tRNS":
        image.putpalette([255, 255, 255, 0, 0, 0])
        image.info["transparency"] = 0
    spec = Preprocess(size=32, channels=3, invert=False)
    to_uint8(Image.new(image.mode, (64, 64)), spec)  # imports and first-call set-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # with the picture: what a file of it costs
    to_uint8(image, spec)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)  # KiB on Linux -> MiB
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB: Linux")
@pytest.mark.parametrize("mode", ["P+tRNS", "RGBA", "I;16", "F"])
def test_big_palette_transparent_16_bit_and_float_pictures_convert_without_full_size_copies(mode):
    # 25 MP: whole-image conversions took 6-8 more bytes a pixel (150-400 MB here, 0.7-1.6 GB at 49 MP);
    # in strips of STRIP_PIXELS they take a few MB
    done = subprocess.run([sys.executable, "-c", MEASURE, mode, "5000"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip().splitlines()[-1]) < 60


def glyph_picture(size) -> Image.Image:
    image = Image.new("L", size, 255)
    w, h = size
    ImageDraw.Draw(image).line([(w * 0.2, h * 0.2), (w * 0.5, h * 0.85), (w * 0.8, h * 0.25)], fill=0,
                               width=max(1, w // 30))
    return image


def test_pictures_up_to_the_reduction_threshold_are_converted_whole():
    # guards against reducing every picture bigger than the target: up to DRAFT_ABOVE_PIXELS (4 MP) pictures
    # are converted exactly as before (factor 1); above it, to at least DRAFT_MARGIN x the target a side
    assert images.DRAFT_ABOVE_PIXELS == 2000 * 2000 and images.DRAFT_MARGIN * 28 == 224
    assert images._reduction(2000, 2000, 28) == 1 and images._reduction(4000, 1000, 28) == 1
    assert images._reduction(2001, 2000, 28) == 2000 // 224 and images._reduction(2001, 2000, None) == 1
    picture = glyph_picture((1200, 900))  # 1.08 MP: no reduction, so the same as converting it whole
    whole = 255 - np.asarray(images._fit(images._flatten(picture, 1), Preprocess(size=28)), dtype=np.uint8)
    assert np.array_equal(to_uint8(picture, Preprocess(size=28)), whole[None])


@pytest.mark.parametrize("fit", images.FITS)
@pytest.mark.parametrize("size", [(2500, 2500), (3100, 1700), (1700, 3100)])
def test_a_reduced_picture_looks_like_the_whole_one(size, fit):
    """Above DRAFT_ABOVE_PIXELS a picture is box-averaged before it is fitted: the same geometry (partial last
    blocks included) and within a few levels of converting it whole."""
    spec = Preprocess(size=28, fit=fit)
    picture = glyph_picture(size)
    assert images._reduction(*size, spec.size) > 1
    reduced = to_uint8(picture, spec).astype(int)
    whole = images._fit(images._flatten(picture, 1), spec)  # factor 1: no reduction
    whole = 255 - np.asarray(whole, dtype=int)[None]
    assert np.abs(reduced - whole).max() <= 4 and np.abs(reduced - whole).mean() < 0.3


@pytest.mark.parametrize("mode", ["P+tRNS", "RGBA", "LA", "I;16", "I", "F", "La", "1", "CMYK"])
def test_strip_by_strip_conversion_is_bit_for_bit_the_whole_image_one(mode):
    """An image of several strips (under the reduction threshold) converts exactly as one strip would."""
    rng = np.random.default_rng(1)
    w, h = 1500, 1200  # 1.8 MP: 7 strips, not reduced
    if mode == "P+tRNS":
        image = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").convert("P")
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        image.info["transparency"] = 7
    elif mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16))
    elif mode == "I":
        image = Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.int32))
    elif mode == "F":
        image = Image.fromarray((rng.random((h, w)) * 3).astype(np.float32))
    else:
        bands = len(Image.new(mode, (1, 1)).getbands())
        image = Image.frombytes("L" if mode == "1" else mode, (w, h),
                                rng.integers(0, 256, h * w * (1 if mode == "1" else bands), dtype=np.uint8).tobytes())
        image = image.convert("1") if mode == "1" else image
    assert h > images.STRIP_PIXELS // w
    for channels in (1, 3):
        one_strip = images._flatten_pixels(image, channels, images._deep_rule(image, "x", h)
                                           if images._is_deep(image.mode) else None)
        assert np.array_equal(np.asarray(images._flatten(image, channels)), np.asarray(one_strip))


# ----------------------------------------------------------------------------- 2. the contact sheet

def test_sheet_thumbnails_show_16_bit_float_and_transparent_pictures_as_the_model_saw_them(tmp_path):
    grey = np.asarray(disc().convert("L"), np.uint16)
    paths = {"gray16.png": Image.fromarray(grey * 257), "float01.tif": Image.fromarray(grey.astype(np.float32) / 255)}
    rgba = np.zeros((48, 64, 4), np.uint8)  # a red square on transparent black
    rgba[8:40, 16:48] = (200, 30, 30, 255)
    paths["rgba.png"] = Image.fromarray(rgba)
    for name, image in paths.items():
        image.save(tmp_path / name)
    for name in paths:
        thumb = np.asarray(sheet._thumbnail(str(tmp_path / name)))
        model = to_uint8(str(tmp_path / name), Preprocess(size=64, channels=3, invert=False, fit="stretch"))
        assert thumb[1, 1].tolist() == model[:, 1, 1].tolist() == [255, 255, 255], name  # white, as the model saw it
        assert thumb[24, 32].tolist() == model[:, 24, 32].tolist(), name  # the disc's (square's) colour


class Prediction:
    def __init__(self, label, probability, unknown=False):
        self.label, self.probability, self.unknown = label, probability, unknown


def test_sheet_captions_clip_the_label_and_keep_the_probability(tmp_path, monkeypatch):
    drawn = []
    original = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text",
                        lambda self, xy, text, *a, **k: drawn.append(text) or original(self, xy, text, *a, **k))
    glyph_picture((40, 40)).save(tmp_path / "a.png")
    predictions = [Prediction("astronaut", 0.999), Prediction("a-very-long-class-name-indeed", 0.93),
                   Prediction("another-long-label", 0.4, unknown=True), Prediction("cat", 0.5)]
    sheet.contact_sheet([str(tmp_path / "a.png")] * 4, predictions, str(tmp_path / "sheet.png"))
    captions = drawn[0::2]  # label, then file name, per cell
    assert captions[0] in ("astronaut  100%", "astro...  100%") and captions[3] == "cat  50%"
    assert captions[1].endswith("...  93%") and captions[1].startswith("a-")
    assert captions[2].startswith("? an") and captions[2].endswith("...  40%")  # unknown: "? label", in red
    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), sheet._font(13)
    assert all(draw.textlength(c, font=font) <= sheet.THUMB - 8 for c in captions)


# ----------------------------------------------------------------------------- 3. errors name the file

@pytest.fixture
def bad_values(tmp_path):
    nan = np.full((48, 64), 0.5, np.float32)
    nan[3, 3] = np.nan
    Image.fromarray(nan).save(tmp_path / "nan.tif")
    Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 40).astype(np.int32)).save(tmp_path / "big.tif")
    return tmp_path


def test_pixel_value_errors_from_files_name_the_file_and_give_file_advice(bad_values):
    for name, words in (("nan.tif", "NaN or infinite"), ("big.tif", "0..122840")):
        path = str(bad_values / name)
        with pytest.raises(FastadaptError) as exc:
            to_uint8(path, PHOTO)
        message = one_line(exc)
        assert message.startswith(f"{path}: ") and words in message and "save it again" in message
        assert "array" not in message and "np." not in message
    # numpy arrays keep the array wording
    with pytest.raises(FastadaptError, match=r"^an image array has NaN.*np\.nan_to_num"):
        to_uint8(np.full((9, 9), np.nan), PHOTO)
    with pytest.raises(FastadaptError, match=r"^an integer image array holds values 0\.\.70000"):
        to_uint8(np.array([[0, 70000]], np.int64), PHOTO)


def test_dataset_warnings_name_the_bad_file_in_a_folder_and_in_a_zip(bad_values, tmp_path, capsys):
    root = tmp_path / "data"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        glyph_picture((30, 30)).save(root / label / "0.png")
    (root / "b" / "nan.tif").write_bytes((bad_values / "nan.tif").read_bytes())
    load_class_folders(str(root), GREY)
    assert f"first: {root / 'b' / 'nan.tif'}: the image has NaN" in capsys.readouterr().err
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("a/0.png", "b/0.png", "b/nan.tif"):
            z.write(root / name, name)
    load_class_folders(str(archive), GREY)
    assert f"first: {archive}:b/nan.tif: the image has NaN" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 4. 16-bit grey with tRNS

def test_16_bit_grey_with_transparency_is_composited_on_white_like_8_bit(tmp_path):
    eight = np.zeros((48, 64), np.uint8)  # a grey square on a transparent black background
    eight[8:40, 16:48] = 117
    Image.fromarray(eight).save(tmp_path / "gray8.png", transparency=0)
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "gray16.png", transparency=0)
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I;16")
    for spec in (PHOTO, INVERTING, GREY):
        sixteen, reference = to_uint8(str(tmp_path / "gray16.png"), spec), to_uint8(str(tmp_path / "gray8.png"), spec)
        assert np.array_equal(sixteen, reference)
    assert to_uint8(str(tmp_path / "gray16.png"), INVERTING)[0, 0, 0] == 0  # white paper, inverted


# ----------------------------------------------------------------------------- 5. float scaling

def test_floats_have_no_cliff_at_1_and_are_scaled_not_clipped_above_255(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float64), (48, 1))
    reference = to_uint8(Image.fromarray(ramp.astype(np.float32)), GREY).astype(int)
    for top in (0.999, 1.0, 1.001, 1.02, 255.0, 4095.0, 65535.0, 1e6):  # the ramp's brightest value
        path = tmp_path / f"ramp{top}.tif"
        Image.fromarray((ramp * top).astype(np.float32)).save(path)
        for source in (str(path), ramp * top):  # a file and an array alike
            out = to_uint8(source, GREY).astype(int)
            assert np.abs(out - reference).max() <= 1, top  # [0, 1.02] not black, 0..4095 not white
    # 0..255 floats with a white pixel are their own levels, as the same picture in uint8
    levels = np.asarray(disc().convert("L"))
    assert np.array_equal(to_uint8(levels.astype(np.float32), GREY), to_uint8(levels, GREY))
    assert np.array_equal(to_uint8(Image.fromarray(levels).convert("F"), GREY), to_uint8(levels, GREY))


# ----------------------------------------------------------------------------- 6. image file names

def test_image_suffixes_are_the_allowed_decoders_file_names():
    Image.init()
    registered = {ext for ext, fmt in Image.registered_extensions().items() if fmt in images.FORMATS}
    # each name is one an allowed decoder takes (MPO files are read by the JPEG decoder); not an equality, so a
    # newer Pillow that registers one more name does not fail this
    assert set(IMAGE_SUFFIXES) - {".mpo"} <= registered
    for name in ("a.ppm", "b.PGM", "c.pbm", "d.pnm", "e.jfif", "f.jpe", "g.apng", "h.pfm"):
        assert is_image_name(name)
    assert not is_image_name("notes.txt") and not is_image_name(".hidden.png")


def save_as(image: Image.Image, path) -> None:
    image.save(path, format="JPEG" if str(path).endswith((".jfif", ".jpe")) else None)


@pytest.fixture
def netpbm_shots(tmp_path):
    """Class folders of .ppm/.pgm/.jfif pictures, with a note beside them."""
    root = tmp_path / "shots"
    for label, colour in (("red", (200, 20, 20)), ("blue", (20, 20, 200))):
        (root / label).mkdir(parents=True)
        for suffix in (".ppm", ".pgm", ".jfif"):
            save_as(Image.new("RGB", (40, 40), colour), root / label / f"0{suffix}")
    (root / "red" / "notes.txt").write_text("where these came from")
    return root


def test_shots_datasets_and_folder_scans_take_the_same_image_files(netpbm_shots, capsys):
    assert folder_images(str(netpbm_shots / "red")) == ["0.jfif", "0.pgm", "0.ppm"]
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "ignored 1 file(s)" in err and "notes.txt" in err
    shots = load_shots(str(netpbm_shots), PHOTO)
    assert shots.counts == [3, 3]
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "notes.txt" in err and "not a readable image" not in err
    data = load_class_folders(str(netpbm_shots), PHOTO)
    assert sorted(data.names) == ["blue", "red"] and data.num_images == 6
    assert "ignored 1 file(s)" in capsys.readouterr().err


def test_predict_reads_a_folder_of_netpbm_and_jfif_pictures(netpbm_shots, tmp_path, capsys):
    from test_cli_runtime import run_cli

    model = tmp_path / "m.fadapt"
    code, out, err = run_cli(capsys, "adapt", "--shots", netpbm_shots, "--out", model)
    assert code == 0, err
    code, out, err = run_cli(capsys, "predict", "--model", model, netpbm_shots / "red")
    assert code == 0, err
    assert sorted(line.split("\t")[0] for line in out.splitlines()) == [
        str(netpbm_shots / "red" / name) for name in ("0.jfif", "0.pgm", "0.ppm")]


# ----------------------------------------------------------------------------- 7. linked subfolders

@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_linked_subfolders_in_a_class_folder_are_followed_once(tmp_path, capsys):
    root, elsewhere = tmp_path / "shots", tmp_path / "elsewhere"
    for folder in (root / "red", root / "blue", elsewhere):
        folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (20, 20), (200, 20 + i, 20)).save(elsewhere / f"{i}.png")
        Image.new("RGB", (20, 20), (20, 20, 200 + i)).save(root / "blue" / f"{i}.png")
    Image.new("RGB", (20, 20), (210, 20, 20)).save(root / "red" / "0.png")
    try:
        os.symlink(elsewhere, root / "red" / "more")
    except OSError:
        pytest.skip("symbolic links are not allowed here")
    os.symlink(".", root / "red" / "itself")  # links that would loop: to the class folder ...
    os.symlink("..", root / "red" / "up")  # ... and to the shots folder, which would also bring in blue
    shots = load_shots(str(root), PHOTO)
    assert shots.counts == [3, 4]  # blue 3; red 1 + the 3 behind the link
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "skipped 2 linked folder(s)" in err and "itself" in err
