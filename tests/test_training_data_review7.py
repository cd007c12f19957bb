"""Review 7: a user's own messy class folders read by train as adapt reads them (nested subfolders, copies,
look-alike names, HEIC-only folders, OS metadata, loose images, Windows zips, the too-few-images error)."""

import unicodedata
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image

from fastadapt.data import TaskSampler, load_class_folders
from fastadapt.errors import FastadaptError
from fastadapt.images import Preprocess
from fastadapt.runtime.shots import load_shots

SPEC = Preprocess()


def image(path, seed):
    """A small noise PNG, different for every seed (so no two classes are copies by accident)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 12), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def classes(root, names, per_class=3, start=0):
    for i, name in enumerate(names):
        for j in range(per_class):
            image(root / name / f"{j}.png", start + 100 * i + j)


def loaded(path, load=load_class_folders):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load(str(path), SPEC)
    return data, [str(w.message) for w in caught]


def test_a_subfolder_of_a_class_folder_belongs_to_the_class(tmp_path):
    """obj0/extra/ is more images of obj0 (as adapt --shots reads it), not a class that can land in test
    while obj0 trains; a folder holding only subfolders (an Omniglot alphabet) is still a group."""
    classes(tmp_path / "objects", ["obj0", "obj1", "obj2"])
    classes(tmp_path / "objects", ["obj0/extra", "obj1/extra/deeper"], per_class=2, start=5000)
    data, _ = loaded(tmp_path / "objects")
    assert data.names == ["obj0", "obj1", "obj2"]
    assert [len(x) for x in data.images] == [5, 5, 3]
    classes(tmp_path / "alphabets", ["Greek/c1", "Greek/c2", "Latin/c1"])
    data, _ = loaded(tmp_path / "alphabets")
    assert data.names == ["Greek/c1", "Greek/c2", "Latin/c1"] and data.groups == ["Greek", "Greek", "Latin"]


def test_a_link_to_a_class_folder_is_skipped_not_the_folder_it_names(tmp_path):
    """Guards against listing folders by name only: 'alias' (a link) sorts before 'zeta' (the real folder), so
    the real class would be dropped and the link kept. Real folders come first: 'alias' is the skipped one."""
    classes(tmp_path / "data", ["mid", "zeta"])
    try:
        (tmp_path / "data" / "alias").symlink_to(tmp_path / "data" / "zeta", target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("symbolic links are not allowed here")
    data, messages = loaded(tmp_path / "data")
    assert data.names == ["mid", "zeta"]
    assert [m for m in messages if "skipped 1 linked folder(s)" in m and "alias" in m]


def test_a_link_to_a_folder_above_the_dataset_is_not_followed(tmp_path):
    """Guards against marking only the dataset folder itself as read: c2/up leads to the folder that holds the
    dataset, so following it would read the dataset's siblings ('other') into c2 (and loop back)."""
    classes(tmp_path / "data", ["c0", "c1", "c2"])
    classes(tmp_path, ["other"], start=900)
    try:
        (tmp_path / "data" / "c2" / "up").symlink_to(tmp_path, target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("symbolic links are not allowed here")
    data, messages = loaded(tmp_path / "data")
    assert data.names == ["c0", "c1", "c2"] and [len(x) for x in data.images] == [3, 3, 3]
    assert [m for m in messages if "skipped 1 linked folder(s)" in m and "c2/up" in m]


def test_hidden_folders_and_files_are_not_classes_or_warned_about(tmp_path):
    """Guards against reading hidden names: Jupyter's .ipynb_checkpoints/ (PNG copies) would become a class,
    and macOS's .DS_Store an 'ignored file' warning."""
    classes(tmp_path, ["c0", "c1"])
    classes(tmp_path, [".ipynb_checkpoints", "c1/.cache"], start=700)
    (tmp_path / ".DS_Store").write_bytes(b"\0Bud1")
    data, messages = loaded(tmp_path)
    assert data.names == ["c0", "c1"] and [len(x) for x in data.images] == [3, 3]
    assert messages == []


def test_a_single_class_folder_still_names_its_class(tmp_path):
    """Guards against stripping every shared folder level: one class folder (alone, or under a zip's top
    folder) must stay a class, not become loose images with no class at all."""
    classes(tmp_path / "data", ["only"])
    data, _ = loaded(tmp_path / "data")
    assert data.names == ["only"] and len(data.images[0]) == 3
    archive = tmp_path / "one.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted((tmp_path / "data").rglob("*.png")):
            z.write(p, "top/" + p.relative_to(tmp_path / "data").as_posix())
    data, _ = loaded(archive)
    assert data.names == ["only"] and len(data.images[0]) == 3


def test_duplicate_class_folders_are_warned_about_in_training(tmp_path):
    classes(tmp_path, ["c0", "c1", "c2"])
    classes(tmp_path, ["c0 copy"])  # the same seeds as c0: the same images
    _, messages = loaded(tmp_path)
    assert [m for m in messages if "classes 'c0' and 'c0 copy' have the same images" in m]


def test_lookalike_class_names_are_refused_in_training(tmp_path):
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    classes(tmp_path, [nfc, "k1", "k2"])
    classes(tmp_path, [nfd], start=9000)
    with pytest.raises(FastadaptError, match="look the same but are spelt with different Unicode"):
        load_class_folders(str(tmp_path), SPEC)


def test_class_folders_with_no_readable_image_are_named_once(tmp_path):
    """An iPhone folder of .HEIC files, or one of damaged files, used to vanish from training unsaid."""
    classes(tmp_path, ["g0", "g1", "g2"])
    (tmp_path / "g0" / "notes.txt").write_text("not an image")
    (tmp_path / "g3").mkdir()
    (tmp_path / "g3" / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    (tmp_path / "g4").mkdir()
    (tmp_path / "g4" / "0.png").write_bytes(b"damaged")
    data, messages = loaded(tmp_path)
    assert data.names == ["g0", "g1", "g2"]
    assert [m for m in messages if "left out 2 class folder(s) with no readable image: g3, g4" in m]
    ignored = [m for m in messages if "ignored 2 file(s)" in m]
    assert len(ignored) == 1 and "first: g3/IMG_0001.HEIC; convert" in ignored[0]


def test_shots_folder_warns_once_and_hides_os_metadata(tmp_path):
    """A folder copied from Windows has Thumbs.db and desktop.ini in every class: not one line per class."""
    classes(tmp_path, ["a", "b", "c"])
    for name in "abc":
        (tmp_path / name / "Thumbs.db").write_bytes(b"\0")
        (tmp_path / name / "desktop.ini").write_text("[.ShellClassInfo]")
        (tmp_path / name / "Icon\r").write_bytes(b"")
        (tmp_path / name / "notes.txt").write_text("x")
    shots, messages = loaded(tmp_path, load_shots)
    assert shots.counts == [3, 3, 3]
    ignored = [m for m in messages if "not named as images" in m]
    assert len(ignored) == 1 and "ignored 3 file(s)" in ignored[0] and "first: a/notes.txt" in ignored[0]
    _, messages = loaded(tmp_path)  # and in training: the same one count, metadata unseen
    assert [m for m in messages if "ignored 3 file(s)" in m]


def test_loose_images_at_the_top_are_warned_about(tmp_path):
    classes(tmp_path, ["a", "b", "c"])
    for i in range(4):
        image(tmp_path / f"unsorted_{i}.jpg", 7000 + i)
    data, messages = loaded(tmp_path)
    assert data.names == ["a", "b", "c"]
    assert [m for m in messages if "ignored 4 image(s) outside class folders, first: unsorted_0.jpg" in m]


def test_zip_with_backslash_separators_has_class_folders(tmp_path):
    """PowerShell 5.1's Compress-Archive names members 'k0\\0.png'."""
    classes(tmp_path / "src", ["k0", "k1", "k2"])
    archive = tmp_path / "win.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for png in sorted((tmp_path / "src").rglob("*.png")):
            out.write(png, "\\".join(png.relative_to(tmp_path / "src").parts))
    data, _ = loaded(archive)
    assert data.names == ["k0", "k1", "k2"] and [len(x) for x in data.images] == [3, 3, 3]


def test_too_few_images_counts_folders_not_rotated_copies(tmp_path):
    classes(tmp_path, ["big", "small", "tiny"], per_class=2)
    classes(tmp_path, ["big"], per_class=6, start=3000)
    data = load_class_folders(str(tmp_path), SPEC).with_rotations()
    with pytest.raises(FastadaptError) as error:
        TaskSampler(data, ways=2, shots=2, query=2, where="training classes")
    assert "(2 such class folder(s): small, tiny)" in str(error.value) and "@rot" not in str(error.value)
