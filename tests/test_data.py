"""Datasets, preprocessing and the task sampler (numpy + pillow only)."""

import zipfile

import numpy as np
import pytest
from PIL import Image

from fastadapt.data import TaskSampler, load_class_folders
from fastadapt.data.omniglot import omniglot_splits
from fastadapt.data.sources import load_splits
from fastadapt.data.synthetic import synthetic_glyphs
from fastadapt.errors import FastadaptError
from fastadapt.images import Preprocess, preprocess, to_float, to_uint8

from sample_data import omniglot_root, write_glyph_folders

SPEC = Preprocess()


def test_preprocess_modes_and_sizes_agree(tmp_path):
    """Gray, RGB, RGBA, palette and 1-bit inputs of any size all become (1, 28, 28) with the same strokes."""
    base = Image.new("L", (105, 105), 255)
    base.paste(0, (30, 30, 75, 40))  # a dark bar
    variants = [base, base.convert("RGB"), base.convert("RGBA"), base.convert("P"), base.convert("1"),
                base.resize((300, 200))]
    arrays = [to_uint8(v, SPEC) for v in variants]
    for a in arrays:
        assert a.shape == (1, 28, 28) and a.dtype == np.uint8
    # inverted: the bar is bright, the background dark
    assert arrays[0][0, 9, 14] > 200 and arrays[0][0, 2, 2] < 10
    for a in arrays[1:5]:
        assert np.abs(a.astype(int) - arrays[0]).max() <= 1


def test_transparent_background_becomes_white():
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # fully transparent black
    assert to_uint8(rgba, SPEC).max() == 0  # white background, inverted -> 0


def test_rgb_spec_and_normalisation():
    spec = Preprocess(size=16, channels=3, invert=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = preprocess([np.full((20, 30, 3), 255, np.uint8)], spec)
    assert x.shape == (1, 3, 16, 16) and np.allclose(x, 2.0)
    assert Preprocess.from_dict(spec.to_dict()) == spec


def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(FastadaptError, match="bad.png"):
        to_uint8(str(bad), SPEC)
    with pytest.raises(FastadaptError, match="no such image"):
        to_uint8(str(tmp_path / "missing.png"), SPEC)


def test_one_and_two_level_folders_and_zip(tmp_path):
    one = write_glyph_folders(tmp_path / "one", 4, 3)
    two = write_glyph_folders(tmp_path / "two", 4, 3, two_level=True)
    a, b = load_class_folders(str(one), SPEC), load_class_folders(str(two), SPEC)
    assert a.names == [f"class{i:02d}" for i in range(4)]
    assert sorted(b.names) == ["group0/class00", "group0/class02", "group1/class01", "group1/class03"]
    assert {g for g in b.groups} == {"group0", "group1"}
    assert a.num_images == b.num_images == 12
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(two.rglob("*.png")):
            z.write(p, "top/" + p.relative_to(two).as_posix())
    c = load_class_folders(str(archive), SPEC)
    assert sorted(c.names) == sorted(b.names)
    for name in b.names:
        assert np.array_equal(c.images[c.names.index(name)], b.images[b.names.index(name)])


def test_unreadable_images_are_skipped_with_a_warning(tmp_path, capsys):
    root = write_glyph_folders(tmp_path / "d", 3, 4)
    (root / "class01" / "broken.png").write_bytes(b"\x89PNG garbage")
    data = load_class_folders(str(root), SPEC)
    assert data.num_images == 12
    assert "skipped 1 unreadable image" in capsys.readouterr().err


def test_empty_and_missing_datasets(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FastadaptError, match="no class folders"):
        load_class_folders(str(tmp_path / "empty"), SPEC)
    with pytest.raises(FastadaptError, match="no such file"):
        load_class_folders(str(tmp_path / "nope"), SPEC)


def test_sampler_is_seeded_and_balanced():
    data = synthetic_glyphs(20, 8, seed=1)
    s = TaskSampler(data, ways=5, shots=2, query=3, seed=7)
    t1, t2 = s.task(3), TaskSampler(data, 5, 2, 3, seed=7).task(3)
    assert np.array_equal(t1.support_x, t2.support_x) and np.array_equal(t1.classes, t2.classes)
    assert not np.array_equal(s.task(4).support_x, t1.support_x)
    assert t1.support_x.shape == (10, 1, 28, 28) and t1.query_x.shape == (15, 1, 28, 28)
    assert list(np.bincount(t1.support_y)) == [2] * 5 and list(np.bincount(t1.query_y)) == [3] * 5
    # support and query images of a class are distinct draws
    for label in range(5):
        sx = t1.support_x[t1.support_y == label].reshape(2, -1)
        qx = t1.query_x[t1.query_y == label].reshape(3, -1)
        assert not any(np.array_equal(a, b) for a in sx for b in qx)
    # every image labelled c is an image of the task's class c (guards query labels in another order than
    # their images), and a task's classes are distinct (guards drawing a class twice under two labels)
    for images, labels in ((t1.support_x, t1.support_y), (t1.query_x, t1.query_y)):
        for x, label in zip(images, labels):
            assert any(np.array_equal(x, y) for y in data.images[t1.classes[label]])
    assert all(len(set(s.choose(i)[0])) == 5 for i in range(50))


def test_sampler_rejects_impossible_tasks():
    data = synthetic_glyphs(6, 5, seed=1)
    with pytest.raises(FastadaptError, match="--ways 7 is larger than the 6 classes"):
        TaskSampler(data, 7, 1, 1)
    with pytest.raises(FastadaptError, match="fewer than --shots \\+ --query = 6"):
        TaskSampler(data, 5, 1, 5)


def test_rotations_add_classes():
    data = synthetic_glyphs(3, 2, seed=1)
    rot = data.with_rotations()
    assert len(rot) == 12 and rot.names[3] == "glyph000@rot90"
    assert np.array_equal(rot.images[3], np.rot90(data.images[0], 1, axes=(2, 3)))
    for k in (1, 2, 3):  # guards the 180 and 270 degree copies being 90 degree duplicates under other labels
        for c in range(3):
            assert rot.names[3 * k + c] == f"{data.names[c]}@rot{90 * k}"
            assert np.array_equal(rot.images[3 * k + c], np.rot90(data.images[c], k, axes=(2, 3))), (k, c)
    assert np.array_equal(rot.images[6], data.images[0][:, :, ::-1, ::-1])  # 180 degrees: both axes reversed


def test_split_protocol_on_folders(tmp_path):
    root = write_glyph_folders(tmp_path / "d", 20, 3)
    splits = load_splits(str(root), "auto", seed=0, rotations=False)  # 5-way (TrainConfig's default)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 5, 5)
    splits = load_splits(str(root), "auto", seed=0, rotations=False, ways=2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (14, 2, 4)
    assert not set(splits.train.names) & set(splits.test.names)
    assert len(load_splits(str(root), "all").test) == 20
    with pytest.raises(FastadaptError, match="needs an Omniglot folder"):
        load_splits(str(root), "lake")


def test_split_parts_are_disjoint_cover_every_class_and_follow_the_seed(tmp_path):
    # guards against parts that overlap or drop a class at their borders (validation sharing a test class, one
    # class in no part) and against a split that ignores --seed (every seed would hold out the same classes)
    root = write_glyph_folders(tmp_path / "d", 20, 1)
    tests = []
    for seed in range(4):
        s = load_splits(str(root), "split", seed=seed, rotations=False, ways=2)
        train, val, test = set(s.train.names), set(s.val.names), set(s.test.names)
        assert (len(train), len(val), len(test)) == (14, 2, 4)
        assert not train & val and not train & test and not val & test
        assert train | val | test == {f"class{i:02d}" for i in range(20)}
        assert load_splits(str(root), "split", seed=seed, rotations=False, ways=2).test.names == s.test.names
        tests.append(tuple(s.test.names))
    assert len(set(tests)) > 1  # 4 of 20 classes: four seeds all drawing the same test set is a 1 in 1e11 chance


def test_split_rotations_add_rotated_training_classes_only(tmp_path):
    # guards against --protocol split ignoring rotations (train.with_rotations never applied, or applied to
    # validation/test, which would then be scored on rotated copies of themselves)
    root = write_glyph_folders(tmp_path / "d", 20, 1)
    plain = load_splits(str(root), "split", seed=0, rotations=False, ways=2)
    rotated = load_splits(str(root), "split", seed=0, rotations=True, ways=2)
    assert rotated.train.names == [n + s for s in ("", "@rot90", "@rot180", "@rot270") for n in plain.train.names]
    assert rotated.val.names == plain.val.names and rotated.test.names == plain.test.names
    assert np.array_equal(rotated.train.images[len(plain.train)], np.rot90(plain.train.images[0], 1, axes=(2, 3)))


@pytest.mark.omniglot
@pytest.mark.slow
@pytest.mark.skipif(omniglot_root() is None, reason="real Omniglot not present")
def test_real_omniglot_protocols():
    root = omniglot_root()
    lake = omniglot_splits(root, "lake", seed=0, val_classes=100, rotations=True)
    assert len(lake.test) == 659 and len(lake.val) == 100 and len(lake.train) == 4 * 864
    assert all(len(x) == 20 for x in lake.test.images)
    assert not {n.split("/")[0] for n in lake.test.names} & {n.split("/")[0] for n in lake.val.names}
    vin = omniglot_splits(root, "vinyals", seed=0, val_classes=100, rotations=False)
    assert len(vin.test) == 423 and len(vin.train) + len(vin.val) == 1200
    assert not set(vin.test.names) & set(vin.train.names)
    # guards training characters overlapping the validation ones (model selection on trained characters)
    assert not {n.split("@rot")[0] for n in lake.train.names} & set(lake.val.names)
    assert not set(vin.train.names) & set(vin.val.names) and not set(vin.val.names) & set(vin.test.names)
    x = to_float(lake.test.images[0], lake.test.spec)
    assert x.shape == (20, 1, 28, 28) and 0.0 <= x.min() and x.max() <= 1.0 and x.mean() < 0.3  # dark background


def test_synthetic_glyphs_vary_within_a_class_and_follow_the_seed():
    # guards against drawings without jitter (every image of a class the same picture: 1-shot tasks would be
    # trivial) and a generator that ignores its seed
    a, again, b = synthetic_glyphs(3, 4, seed=0), synthetic_glyphs(3, 4, seed=0), synthetic_glyphs(3, 4, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a.images, again.images))
    assert not any(np.array_equal(x, y) for x, y in zip(a.images, b.images))
    for imgs in a.images:
        assert all(not np.array_equal(imgs[0], other) for other in imgs[1:])


def test_omniglot_evaluation_only_splits_hold_out_the_same_test_classes(monkeypatch):
    # guards against the evaluation-only shortcut (need_train=False) taking lake's test set for vinyals: an
    # evaluation must score exactly the 423 characters that training held out, for the same seed. Omniglot's
    # two parts are stood in for by 964 + 659 one-pixel classes (the split only shuffles and slices them)
    from fastadapt.data import omniglot
    from fastadapt.data.classes import ImageClasses

    def part(root, name, spec=SPEC):
        count = 964 if name == "images_background" else 659
        return ImageClasses([f"{name}/c{i}" for i in range(count)], [np.full((1, 1, 1, 1), i % 256, np.uint8)
                                                                     for i in range(count)], spec)

    monkeypatch.setattr(omniglot, "load_part", part)
    for protocol, held_out in (("lake", 659), ("vinyals", 423)):
        full = omniglot_splits("omniglot", protocol, seed=3, val_classes=100, rotations=False)
        quick = omniglot_splits("omniglot", protocol, seed=3, val_classes=100, rotations=False, need_train=False)
        assert len(full.test) == held_out and quick.test.names == full.test.names
    assert any(n.startswith("images_background/") for n in full.test.names)  # vinyals mixes both parts


def test_corrupt_zip_member_is_skipped_with_a_warning(tmp_path, capsys):
    root = write_glyph_folders(tmp_path / "d", 3, 4)
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as z:  # stored, so the member's bytes sit in the file as they are
        for p in sorted(root.rglob("*.png")):
            z.write(p, p.relative_to(root).as_posix())
        first = z.infolist()[0]
    raw = bytearray(archive.read_bytes())
    start = first.header_offset + 30 + len(first.filename)  # the local header is 30 bytes + name
    raw[start + 100] ^= 0xFF  # the CRC no longer matches
    archive.write_bytes(bytes(raw))
    data = load_class_folders(str(archive), SPEC)
    assert data.num_images == 11
    assert "skipped 1 unreadable image" in capsys.readouterr().err
