"""Image sets for the "real images" benchmark, built at run time as files a user would have.

Pictures nobody on the project made: scikit-learn's digits and sample photos, scikit-image's sample
photos and matplotlib's sample image (``pip install -e ".[bench]"``), plus shapes drawn here with PIL
in several styles. Every set is written to a folder of class folders (PNG, or JPEG where a camera
would write JPEG), because files are what users adapt on. Everything is seeded: the same seed gives
the same pictures.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

POOL = 30  # pictures per class; an episode draws its shots and queries from them without overlap
ORIENTATION = 0x0112  # the EXIF tag phones write instead of rotating the pixels


@dataclass
class ImageSet:
    name: str
    about: str
    ways: int
    shots: int
    classes: dict  # label -> [file paths]
    baseline: str  # the naive baseline's features: "pixels", "colour histogram" or "grey histogram"


def _save(image: Image.Image, folder: str, name: str, **kwargs) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    image.save(path, **kwargs)
    return path


def _write(pictures: dict, root: str, jpeg_quality: dict | None = None) -> dict:
    """{label: [PIL images]} -> {label: [paths]} under root/<label>/ (PNG, or JPEG at the given qualities)."""
    classes = {}
    for label, images in pictures.items():
        paths = []
        for i, image in enumerate(images):
            if jpeg_quality:
                paths.append(_save(image, os.path.join(root, label), f"{i:03d}.jpg",
                                   quality=jpeg_quality[label][i]))
            else:
                paths.append(_save(image, os.path.join(root, label), f"{i:03d}.png"))
        classes[label] = paths
    return classes


# ---------------------------------------------------------------- pictures from packages

def digits(root: str, seed: int) -> ImageSet:
    """scikit-learn's 8x8 handwritten digits, dark ink on light paper, upscaled to 32x32 (bilinear)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(seed)
    pictures = {}
    for digit in range(10):
        chosen = rng.choice(np.flatnonzero(data.target == digit), size=POOL, replace=False)
        pictures[str(digit)] = [
            Image.fromarray((255 - data.images[i] * (255 / 16)).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
            for i in chosen]
    return ImageSet("digits", "scikit-learn `load_digits`, 8x8 upscaled to 32x32, dark on light", 10, 5,
                    _write(pictures, os.path.join(root, "digits")), "pixels")


def _sample_photos(colour: bool) -> dict:
    """name -> HxW[x3] uint8 photo from scikit-image, scikit-learn and matplotlib (all ship in the wheels)."""
    import skimage.data

    if colour:
        from sklearn.datasets import load_sample_images
        import matplotlib.cbook

        photos = {name: getattr(skimage.data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}
        sample = load_sample_images()
        for name, image in zip(sample.filenames, sample.images):
            photos[os.path.splitext(os.path.basename(name))[0]] = image  # china, flower
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            photos["grace_hopper"] = np.asarray(Image.open(f).convert("RGB"))
        return photos
    names = ("camera", "moon", "coins", "clock", "page", "text", "brick", "grass", "gravel", "cell")
    return {name: getattr(skimage.data, name)() for name in names}


def _crops(photo: np.ndarray, rng: np.random.Generator, count: int) -> list:
    """Random crops, 30-70% of the photo's shorter side, aspect 0.8-1.25, kept at their own size."""
    h, w = photo.shape[:2]
    crops = []
    for _ in range(count):
        side = int(min(h, w) * rng.uniform(0.3, 0.7))
        ch, cw = side, int(min(w, side * rng.uniform(0.8, 1.25)))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crops.append(Image.fromarray(np.ascontiguousarray(photo[y:y + ch, x:x + cw])))
    return crops


def photo_crops(root: str, seed: int, colour: bool) -> ImageSet:
    """Classes are source photos; pictures are random crops of them."""
    rng = np.random.default_rng(seed)
    pictures = {name: _crops(photo, rng, POOL) for name, photo in _sample_photos(colour).items()}
    name = "photo crops, colour" if colour else "photo crops, grey"
    about = ("random crops of 7 colour photos (scikit-image astronaut/coffee/chelsea/rocket, scikit-learn "
             "china/flower, matplotlib grace_hopper)" if colour else
             "random crops of 10 grey scikit-image photos (camera, moon, coins, clock, page, text, brick, grass, "
             "gravel, cell)")
    return ImageSet(name, about, 6, 5, _write(pictures, os.path.join(root, name.replace(", ", "-").replace(" ", "-"))),
                    "colour histogram" if colour else "grey histogram")


# ---------------------------------------------------------------- drawings made in code

def _star(points: int, inner: float) -> list:
    return [((1 if i % 2 == 0 else inner) * math.sin(math.pi * i / points),
             -(1 if i % 2 == 0 else inner) * math.cos(math.pi * i / points)) for i in range(2 * points)]


def _regular(sides: int, phase: float = 0.0) -> list:
    return [(math.sin(2 * math.pi * i / sides + phase), -math.cos(2 * math.pi * i / sides + phase)) for i in range(sides)]


# outlines in a unit box centred on 0 (closed polygons), drawn as strokes
SHAPES = {
    "circle": _regular(48),
    "square": _regular(4, math.pi / 4),
    "triangle": _regular(3),
    "star": _star(5, 0.42),
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
              (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "arrow": [(-1, -0.25), (0.2, -0.25), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.25), (-1, 0.25)],
    "hexagon": _regular(6),
    "heart": [(16 * math.sin(t) ** 3 / 17, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
                                              - math.cos(4 * t)) / 17) for t in np.linspace(0, 2 * math.pi, 48)],
}


def _outline(shape: str, size: int, rng: np.random.Generator) -> list:
    """The shape's outline in pixels: random size, position, rotation (±20°) and a little hand tremor."""
    scale = size * rng.uniform(0.28, 0.4)
    cx, cy = size / 2 + rng.uniform(-0.08, 0.08) * size, size / 2 + rng.uniform(-0.08, 0.08) * size
    angle = math.radians(rng.uniform(-20, 20))
    c, s = math.cos(angle), math.sin(angle)
    points = []
    for x, y in SHAPES[shape]:
        x, y = x + rng.normal(0, 0.03), y + rng.normal(0, 0.03)
        points.append((cx + scale * (c * x - s * y), cy + scale * (s * x + c * y)))
    return points + points[:1]


def draw(shape: str, style: str, rng: np.random.Generator) -> Image.Image:
    """One drawing. clean: black pen on white, 128 px. camera: thick ink on uneven paper, blurred (the JPEG
    comes when it is saved), 256 px RGB. noisy: pen on white with strong sensor noise, 128 px."""
    if style == "camera":
        size = 256
        paper = rng.uniform(170, 230) + rng.normal(0, 8, size=3)  # grey-white paper, slightly tinted
        light = np.linspace(rng.uniform(0.8, 1.0), rng.uniform(0.95, 1.1), size)[None, :, None]  # uneven light
        background = paper[None, None, :] * light + rng.normal(0, 4, (size, size, 3))  # and sensor noise
        image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
        ink = tuple(int(v) for v in rng.uniform(10, 70, size=3))
        ImageDraw.Draw(image).line(_outline(shape, size, rng), fill=ink, width=int(rng.integers(8, 15)), joint="curve")
        return image.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.5)))
    size = 128
    image = Image.new("L", (size, size), 255)
    ImageDraw.Draw(image).line(_outline(shape, size, rng), fill=0, width=int(rng.integers(3, 7)), joint="curve")
    if style == "noisy":
        pixels = np.asarray(image, dtype=np.float64) + rng.normal(0, rng.uniform(25, 45), (size, size))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image


def drawings(root: str, seed: int, style: str) -> ImageSet:
    rng = np.random.default_rng(seed)
    pictures = {shape: [draw(shape, style, rng) for _ in range(POOL)] for shape in SHAPES}
    about = {"clean": "8 shapes drawn with PIL, black pen on white, 128 px PNG",
             "noisy": "the same shapes with strong Gaussian noise (σ 25-45), 128 px PNG",
             "camera": "thick ink on uneven paper, blur, JPEG quality 40-85, 256 px RGB"}[style]
    quality = {s: [int(q) for q in rng.integers(40, 86, POOL)] for s in SHAPES} if style == "camera" else None
    return ImageSet(f"drawings, {style}", about, 6, 5,
                    _write(pictures, os.path.join(root, f"drawings-{style}"), quality), "pixels")


# ---------------------------------------------------------------- the same pictures as phones store them

def exif_rotated(image: Image.Image, orientation: int) -> tuple:
    """(pixels as a phone stores them, EXIF) such that a viewer applying the tag shows ``image`` upright.

    Orientation 3: rotate 180° to display; 6: rotate 90° clockwise; 8: 90° counter-clockwise."""
    stored = {3: image.transpose(Image.Transpose.ROTATE_180), 6: image.transpose(Image.Transpose.ROTATE_90),
              8: image.transpose(Image.Transpose.ROTATE_270)}[orientation]
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return stored, exif


def letterboxed(image: Image.Image) -> Image.Image:
    """The square picture in the middle of a 16:9 frame, the sides filled with the paper around it."""
    w, h = image.size
    frame_w = round(h * 16 / 9)
    pixels = np.asarray(image)
    left, right = pixels[:, :1], pixels[:, -1:]  # extend the paper's own edge columns outwards
    pad = frame_w - w
    out = np.concatenate([np.repeat(left, pad // 2, axis=1), pixels, np.repeat(right, pad - pad // 2, axis=1)], axis=1)
    return Image.fromarray(out)


def phone_pairs(root: str, seed: int) -> list:
    """Two pairs of sets of the same camera-like drawings: (upright JPEGs, JPEGs stored rotated with an EXIF
    orientation tag, one of 3/6/8 at random per picture) and (square frames, 16:9 frames)."""
    rng = np.random.default_rng(seed)
    pictures = {shape: [draw(shape, "camera", rng) for _ in range(POOL)] for shape in SHAPES}
    quality = {s: [int(q) for q in rng.integers(40, 86, POOL)] for s in SHAPES}
    upright, rotated, square, wide = {}, {}, {}, {}
    for shape, images in pictures.items():
        for store in (upright, rotated, square, wide):
            store[shape] = []
        for i, image in enumerate(images):
            name, q = f"{i:03d}.jpg", quality[shape][i]
            upright[shape].append(_save(image, os.path.join(root, "upright", shape), name, quality=q))
            stored, exif = exif_rotated(image, int(rng.choice([3, 6, 8])))
            rotated[shape].append(_save(stored, os.path.join(root, "exif", shape), name, quality=q, exif=exif))
            square[shape].append(_save(image, os.path.join(root, "square", shape), name, quality=q))
            wide[shape].append(_save(letterboxed(image), os.path.join(root, "wide", shape), name, quality=q))
    about = "camera-like drawings as JPEGs"
    return [(ImageSet("EXIF: upright", f"{about}, pixels upright", 6, 5, upright, "pixels"),
             ImageSet("EXIF: rotated + tag", f"{about}, stored rotated with an EXIF orientation tag (3/6/8)", 6, 5,
                      rotated, "pixels")),
            (ImageSet("frame: square", f"{about}, square frame", 6, 5, square, "pixels"),
             ImageSet("frame: 16:9", f"{about}, the same picture in a 16:9 frame", 6, 5, wide, "pixels"))]


def build(root: str, seed: int = 0) -> tuple:
    """(image sets, comparison pairs) written under root."""
    sets = [digits(root, seed), photo_crops(root, seed, colour=True), photo_crops(root, seed, colour=False),
            drawings(root, seed, "clean"), drawings(root, seed, "camera"), drawings(root, seed, "noisy")]
    return sets, phone_pairs(os.path.join(root, "phone"), seed)
