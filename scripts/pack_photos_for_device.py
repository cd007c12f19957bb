"""Pack Tiny ImageNet into one zip small enough to carry to a GPU machine (a device call carries at most 64 MiB
of git-ignored files; the 500-photos-per-class folder is 190 MiB).

    python scripts/pack_photos_for_device.py DATA500 SHARED_ZIP OUT_ZIP [--per-class N] [--quality Q] [--size S]

DATA500: a folder of 200 class folders (<wnid>/<photo>.JPEG, 500 each); SHARED_ZIP: the shared 100-per-class
zip of the same classes. OUT_ZIP holds <wnid>/<file>.JPEG for all 200 classes. DATA500 from the public
mirror of Tiny ImageNet (216 MB; a few seconds once cloned):

    git clone https://github.com/seshuad/IMagenet && mkdir tin500
    for d in IMagenet/tiny-imagenet-200/train/*/; do mv "$d/images" "tin500/$(basename "$d")"; done

- the 60 validation and test classes of ``--protocol split --seed 0`` are byte-identical copies of their
  SHARED_ZIP members, so every evaluation on OUT_ZIP is the evaluation on SHARED_ZIP (checked before the
  file is kept: the same train/validation/test class names from both zips, the same bytes);
- the 140 training classes get up to N photos each from DATA500 (sorted file order), re-encoded with Pillow as
  JPEG at quality Q (default 80); N defaults to the most that keeps OUT_ZIP within 60 MiB.

--size S (for training at S x S, e.g. 32: all 500 photos per class fit at quality 80): every photo, the
validation and test classes' too, is first brought to S x S exactly as the trainer and the runtime do it
(``fastadapt.images.to_uint8``: centre crop, Lanczos), then encoded as JPEG at quality Q. The held-out
classes are then no longer byte-identical: evaluate such a run on SHARED_ZIP (TASKS=0 on the device).

Deterministic (sorted members, fixed timestamps, ZIP_STORED: JPEG does not compress), written atomically.
Refused with a one-line error when the zip would exceed 62 MiB.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import zipfile
from pathlib import PurePosixPath

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image  # noqa: E402

from fastadapt.data.sources import DEFAULT_VAL_CLASSES, DEFAULT_WAYS, load_splits  # noqa: E402
from fastadapt.errors import FastadaptError  # noqa: E402
from fastadapt.images import Preprocess, is_image_name, to_uint8  # noqa: E402

MIB = 1 << 20
TARGET, LIMIT = 60 * MIB, 62 * MIB
SEED = 0  # the project's split: --protocol split --seed 0, validation 10% of the classes, --ways 5 floors
SPEC = Preprocess(size=8, channels=3, invert=False, fit="crop")  # class names do not depend on it; small = fast
STAMP = (1980, 1, 1, 0, 0, 0)
END_RECORD = 22


def fail(message: str) -> None:
    raise SystemExit(f"pack_photos_for_device: {message}")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def member_bytes(name: str, data: bytes) -> int:
    """Bytes one ZIP_STORED member adds: local header + data + central directory entry (no extras)."""
    return 30 + 46 + 2 * len(name.encode("utf-8")) + len(data)


def splits_of(path: str) -> tuple:
    s = load_splits(path, "split", SEED, DEFAULT_VAL_CLASSES, rotations=False, spec=SPEC, ways=DEFAULT_WAYS)
    return list(s.train.names), list(s.val.names), list(s.test.names)


def shared_members(path: str) -> dict:
    """{wnid: [(file name, member name)]} of SHARED_ZIP's images (<top>/<wnid>/<file> or <wnid>/<file>)."""
    by_class: dict = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith("/") or "__MACOSX" in name or not is_image_name(name):
                continue
            parts = PurePosixPath(name).parts
            if len(parts) < 2:
                fail(f"{path}: member {name} is in no class folder")
            by_class.setdefault(parts[-2], []).append((parts[-1], name))
    return {k: sorted(v) for k, v in sorted(by_class.items())}


def encode(source, quality: int, size: int) -> bytes:
    """``source`` (a path or encoded bytes) as a JPEG at ``quality``; with ``size``, first brought to
    size x size by the project's own preprocessing."""
    if size:
        chw = to_uint8(io.BytesIO(source) if isinstance(source, bytes) else source,
                       Preprocess(size=size, channels=3, invert=False, fit="crop"))
        im = Image.fromarray(chw.transpose(1, 2, 0))
    else:
        with Image.open(source) as im:
            im.load()
            if im.mode not in ("RGB", "L"):
                im = im.convert("RGB")
    out = io.BytesIO()
    im.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


def write_zip(path: str, members: list) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=STAMP)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            z.writestr(info, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data500")
    parser.add_argument("shared_zip")
    parser.add_argument("out_zip")
    parser.add_argument("--per-class", type=int, default=0, help="training photos per class (default: most that fit)")
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality of the training photos")
    parser.add_argument("--size", type=int, default=0, help="bring every photo to SIZE x SIZE first (default: as is)")
    a = parser.parse_args()
    if not 1 <= a.quality <= 95:
        fail(f"--quality must be 1..95, got {a.quality}")
    if a.size and not 16 <= a.size <= 64:
        fail(f"--size must be 16..64 (the photos are 64 x 64), got {a.size}")
    if a.per_class < 0:
        fail(f"--per-class must be >= 1 (or left out), got {a.per_class}")
    t0 = time.time()

    say(f"reading the split of {a.shared_zip}")
    try:
        train, val, test = splits_of(a.shared_zip)
    except FastadaptError as exc:
        fail(str(exc))
    by_class = shared_members(a.shared_zip)
    held_out = sorted(val + test)
    if sorted(by_class) != sorted(train + val + test):
        fail(f"{a.shared_zip}: class folders {len(by_class)} do not match the split's class names")
    if not os.path.isdir(a.data500):
        fail(f"{a.data500}: no such folder")
    folders = sorted(d for d in os.listdir(a.data500) if os.path.isdir(os.path.join(a.data500, d)))
    if folders != sorted(by_class):
        fail(f"{a.data500}: its {len(folders)} class folders are not the {len(by_class)} classes of {a.shared_zip}")

    members = []  # (name, bytes)
    with zipfile.ZipFile(a.shared_zip) as z:
        for wnid in held_out:
            members += [(f"{wnid}/{file}", encode(z.read(name), a.quality, a.size) if a.size else z.read(name))
                        for file, name in by_class[wnid]]
    fixed = END_RECORD + sum(member_bytes(n, d) for n, d in members)

    photos = {w: sorted(f for f in os.listdir(os.path.join(a.data500, w)) if is_image_name(f)) for w in sorted(train)}
    most = max(len(v) for v in photos.values())
    encoded = {w: [] for w in photos}  # the first photos of each class, encoded in order

    def grow(n: int) -> int:
        """Encode up to n photos of every training class; return the zip's size with them."""
        for w, files in photos.items():
            while len(encoded[w]) < min(n, len(files)):
                f = files[len(encoded[w])]
                encoded[w].append((f"{w}/{f}", encode(os.path.join(a.data500, w, f), a.quality, a.size)))
        return fixed + sum(member_bytes(m, d) for w in photos for m, d in encoded[w][:n])

    say(f"{len(held_out)} validation+test classes copied ({len(members)} photos, {fixed / MIB:.2f} MiB); "
        f"encoding {len(photos)} training classes at quality {a.quality}")
    if a.per_class:
        n = min(a.per_class, most)
        size = grow(n)
        if size > LIMIT:
            fail(f"--per-class {a.per_class} at --quality {a.quality} makes {size / MIB:.1f} MiB, "
                 f"over the {LIMIT // MIB} MiB limit: lower --per-class or --quality")
    else:
        n, size = 0, fixed
        while n < most:
            bigger = grow(n + 1)
            if bigger > TARGET:
                break
            n, size = n + 1, bigger
            if n % 50 == 0:
                say(f"  {n} per class: {size / MIB:.1f} MiB ({time.time() - t0:.0f} s)")
        if n == 0:
            fail(f"not even one training photo per class fits {TARGET // MIB} MiB")
    members += [m for w in photos for m in encoded[w][:n]]
    members.sort()

    out = os.path.abspath(a.out_zip)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}"
    try:
        write_zip(tmp, members)
        actual = os.path.getsize(tmp)
        if actual > LIMIT:
            fail(f"{out} would be {actual / MIB:.1f} MiB, over the {LIMIT // MIB} MiB limit")
        say(f"written {actual / MIB:.2f} MiB (predicted {size / MIB:.2f}); checking the split and held-out bytes")
        if splits_of(tmp) != (train, val, test):
            fail(f"the split of {out} differs from that of {a.shared_zip}")
        with zipfile.ZipFile(tmp) as mine, zipfile.ZipFile(a.shared_zip) as shared:
            names = {n for n in mine.namelist() if n.split("/")[0] in set(held_out)}
            if names != {f"{w}/{f}" for w in held_out for f, _ in by_class[w]}:
                fail(f"the validation+test members of {out} are not those of {a.shared_zip}")
            for w in held_out:
                for f, name in by_class[w] if not a.size else []:  # resized: not the same bytes by design
                    if mine.read(f"{w}/{f}") != shared.read(name):
                        fail(f"{out}: {w}/{f} differs from {a.shared_zip}:{name}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    trained = sum(min(n, len(v)) for v in photos.values())
    print(f"{out}: {actual} bytes ({actual / MIB:.2f} MiB); {len(photos)} training classes x {n} photos "
          f"({trained}) at JPEG quality {a.quality}{f', {a.size} x {a.size}' if a.size else ''}, {len(held_out)} validation+test "
          f"classes ({len(val)}+{len(test)}) {'resized' if a.size else 'byte-identical'} from "
          f"{os.path.basename(a.shared_zip)}; split verified ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
