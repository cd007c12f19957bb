"""Training-time augmentation (--augment): seeded, shape- and range-preserving, training-only."""

import json

import numpy as np
import pytest
import torch

from fastadapt.data.classes import ImageClasses
from fastadapt.data.sampler import TaskSampler
from fastadapt.images import Preprocess, to_float
from fastadapt.meta_train.augment import AUGMENTS, augment
from fastadapt.meta_train.run_setup import DeviceTasks
from test_cli_runtime import run_cli
from test_outputs import one_error


def batch(channels=3, n=6, side=16, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((n, channels, side, side), dtype=np.float32))


@pytest.mark.parametrize("kind", AUGMENTS)
def test_a_key_gives_the_same_distortion_and_another_key_another(kind):
    x = batch()
    a, b, c = augment(x, kind, [1, 2]), augment(x, kind, [1, 2]), augment(x, kind, [1, 3])
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert torch.equal(a, x) == (kind == "none") and torch.equal(a, c) == (kind == "none")


def test_affine_keeps_a_centred_stroke_image_near_itself_and_the_background_empty():
    # a bright square in the middle of a zero background (an inverted character): small distortions move
    # it a little, never fill the corners
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0
    y = augment(x, "affine", [0])
    assert y[:, :, :3, :3].abs().max() == 0 and y[:, :, -3:, -3:].abs().max() == 0
    mass = y.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert ((mass > 0.8 ** 2 * 0.9) & (mass < 1.2 ** 2 * 1.1)).all()  # scale 0.8-1.2 changes the area by its square


def test_photo_stays_in_the_normalised_range_of_the_preprocessing():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    raw = batch(3, n=32)
    x = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    y = augment(x, "photo", [5], mean, std) * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert y.min() >= -1e-6 and y.max() <= 1 + 1e-6
    assert not torch.equal(y, raw)


@pytest.mark.parametrize("side", [28, 56])
def test_affine_parameters_stay_in_their_documented_ranges(side):
    # guards against widened (or collapsed) distortions: rotation +-10 deg, shear +-0.3, scale 0.8-1.2, shift
    # +-2 px at any image size (not 2/28 of the side). theta = [R(angle) @ [[1, shear], [0, 1]] / scale | shift]: its first column is (cos, sin) / scale,
    # the columns' dot product is shear / scale^2, and the shift is in grid units (2 / side per pixel)
    from fastadapt.meta_train.augment import _affine_thetas

    theta = _affine_thetas(np.random.default_rng(0), 4000, side)
    first, second = theta[:, :, 0], theta[:, :, 1]
    scale = 1 / np.linalg.norm(first, axis=1)
    angle = np.degrees(np.arctan2(first[:, 1], first[:, 0]))
    shear = (first * second).sum(1) * scale ** 2
    shift = theta[:, :, 2] * side / 2
    eps = 1e-9  # float64 round-off of the decomposition
    for values, low, high in ((angle, -10, 10), (shear, -0.3, 0.3), (scale, 0.8, 1.2), (shift, -2, 2)):
        assert low - eps <= values.min() and values.max() <= high + eps
        # 4000 uniform draws reach the outer 5% of the range at both ends (miss chance 0.95^4000 each)
        assert values.min() < low + 0.05 * (high - low) and values.max() > high - 0.05 * (high - low)


def test_affine_fills_what_comes_into_view_with_the_zero_background():
    # guards against repeating the edge pixels (border padding) instead: a stroke touching the edge would be
    # smeared across what the distortion brings into view. An all-ones batch: where the sampling grid leaves
    # the picture (rotation, shrinking, shift), zeros come in; inside, bilinear weights of ones sum to 1
    y = augment(torch.ones(32, 1, 28, 28), "affine", [0])
    assert y.min() == 0 and y.max() <= 1 + 1e-6
    assert (y.amin((1, 2, 3)) < 0.5).float().mean() > 0.5  # most images show some background


def test_photo_flips_half_zooms_in_and_shifts_an_eighth():
    # guards against photo augmentation that never flips, zooms out (sampling beyond the picture), or shifts
    # more than 1/8 of the side: theta = [[flip * zoom, 0, dx], [0, zoom, dy]], zoom in [1/1.15, 1]
    from fastadapt.meta_train.augment import _photo_thetas

    theta = _photo_thetas(np.random.default_rng(0), 4000)
    zoom, flipped = theta[:, 1, 1], theta[:, 0, 0] < 0
    assert np.allclose(np.abs(theta[:, 0, 0]), zoom, rtol=0, atol=0) and not theta[:, [0, 1], [1, 0]].any()
    assert 1 / 1.15 <= zoom.min() and zoom.max() <= 1.0 and zoom.min() < 0.88  # 1/1.15 = 0.8696
    assert 0.45 < flipped.mean() < 0.55  # Binomial(4000, 0.5): 0.05 is over 6 standard deviations
    assert np.abs(theta[:, :, 2]).max() <= 0.25 and np.abs(theta[:, :, 2]).max() > 0.24


def test_colour_jitter_acts_on_intensities_with_brightness_contrast_and_saturation():
    # guards against jitter on normalised values (mean not undone) and a dropped saturation term. Each image is
    # one flat colour (r, g, b) = (0.6, 0.4, 0.5), so warping changes nothing; brightness B, contrast C and
    # saturation S (each 0.7-1.3) then give grey level 0.5 * B and red minus grey 0.1 * B * C * S
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    colour = torch.tensor([0.6, 0.4, 0.5]).view(1, 3, 1, 1)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x = ((colour - m) / s).expand(400, 3, 8, 8).contiguous()
    v = (augment(x, "photo", [9], mean, std) * s + m).double()
    tol = 1e-5  # float32 normalise / denormalise round trips of values below 1
    assert (v.amax((2, 3)) - v.amin((2, 3))).max() < tol  # still flat
    v = v[:, :, 0, 0]
    grey = v.mean(1)
    brightness = grey / 0.5
    assert brightness.min() > 0.7 - tol and brightness.max() < 1.3 + tol and brightness.max() - brightness.min() > 0.5
    chroma = (v[:, 0] - grey) / (0.1 * brightness)  # C * S, in 0.49..1.69
    assert chroma.min() > 0.49 - 1e-3 and chroma.max() < 1.69 + 1e-3
    assert chroma.min() < 0.65 and chroma.max() > 1.4  # C alone stays in 0.7..1.3
    assert torch.allclose(v[:, 1] - grey, -(v[:, 0] - grey), atol=tol)  # green sits as far below grey as red above


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment(batch(), "mixup", [0])


def test_augmented_tasks_depend_only_on_their_index():
    # a resumed or OOM-chunked run gathers tasks in other groups: each task's distortion must not change
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (6, 1, 16, 16), dtype=np.uint8) for _ in range(5)]
    spec = Preprocess(size=16, channels=1)
    sampler = TaskSampler(ImageClasses([f"c{i}" for i in range(5)], images, spec), ways=3, shots=1, query=2, seed=4)
    together = DeviceTasks(sampler, spec, "cpu", "affine").tasks([0, 7, 9])
    alone = DeviceTasks(sampler, spec, "cpu", "affine").tasks([7])[0]
    plain = DeviceTasks(sampler, spec, "cpu").tasks([7])[0]
    assert torch.equal(together[1].support_x, alone.support_x) and torch.equal(together[1].query_x, alone.query_x)
    assert not torch.equal(alone.query_x, plain.query_x)
    assert torch.equal(plain.query_x, torch.from_numpy(to_float(sampler.task(7).query_x, spec)))


def test_train_records_the_augmentation_and_refuses_bad_values(tmp_path, capsys, one_thread):
    code, stdout, err = run_cli(capsys, "train", "--data", "synthetic", "--augment", "mixup", "--out", tmp_path / "bad")
    assert "none, affine, photo" in one_error(code, stdout, err, "--augment")
    code, stdout, err = run_cli(capsys, "train", "--data", "synthetic", "--pretrain-schedule", "step", "--out",
                                tmp_path / "bad")
    assert "constant or cosine" in one_error(code, stdout, err, "--pretrain-schedule")
    assert not (tmp_path / "bad").exists()
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", "synthetic", "--augment", "affine", "--iterations", "1",
                           "--val-every", "1", "--val-tasks", "2", "--meta-batch", "2", "--width", "8", "--query", "2",
                           "--quiet", "--out", run)  # a tiny model: only the recorded config is checked
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["augment"] == "affine"


def test_pretraining_with_augmentation_smoothing_and_cosine_schedule(tmp_path):
    from fastadapt.meta_train.pretrain import pretrain_body
    from fastadapt.models import ModelSpec, build_model

    rng = np.random.default_rng(0)
    spec = Preprocess(size=16, channels=3, invert=False)
    classes = ImageClasses(["a", "b", "c"], [rng.integers(0, 256, (9, 3, 16, 16), dtype=np.uint8) for _ in range(3)],
                           spec)
    model = build_model(ModelSpec(channels=3, image_size=16, width=4))
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    before = {k: v.detach().clone() for k, v in params.items()}
    pretrain_body(model, params, classes, spec, epochs=2, rundir=str(tmp_path), seed=0, device="cpu", lr=1e-2,
                  batch_size=8, quiet=True, augment="photo", smoothing=0.1, schedule="cosine")
    assert any(not torch.equal(before[k], params[k]) for k in params)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["pretrain_epoch"] for r in rows] == [1, 2]


def test_each_augmented_task_gets_its_own_distortions():
    # guards a distortion key without the task index: every task of a run would get the same draws
    base = np.random.default_rng(0).integers(0, 256, (1, 1, 16, 16), dtype=np.uint8)
    images = [np.repeat(base, 6, 0) for _ in range(5)]  # every image the same: tasks differ only by augmentation
    spec = Preprocess(size=16, channels=1)
    sampler = TaskSampler(ImageClasses([f"c{i}" for i in range(5)], images, spec), ways=3, shots=1, query=2, seed=4)
    plain = DeviceTasks(sampler, spec, "cpu").tasks([0, 7])
    assert torch.equal(plain[0].support_x, plain[1].support_x) and torch.equal(plain[0].query_x, plain[1].query_x)
    augmented = DeviceTasks(sampler, spec, "cpu", "affine").tasks([0, 7])
    assert not torch.equal(augmented[0].support_x, augmented[1].support_x)
    assert not torch.equal(augmented[0].query_x, augmented[1].query_x)


def test_pretraining_passes_over_every_image_once_per_epoch_in_a_new_order(tmp_path, monkeypatch):
    # guards one shuffle for every epoch (the same batches in the same order each epoch)
    import fastadapt.meta_train.pretrain as pretrain
    from fastadapt.models import ModelSpec, build_model

    rng = np.random.default_rng(0)
    spec = Preprocess(size=16, channels=1)
    classes = ImageClasses(["a", "b", "c"], [rng.integers(0, 256, (9, 1, 16, 16), dtype=np.uint8) for _ in range(3)],
                           spec)
    index = {img.tobytes(): i for i, img in enumerate(np.concatenate(classes.images))}
    assert len(index) == 27  # distinct images: each batch's images name their rows
    batches, real = [], pretrain.to_float

    def recording(x, preprocess):  # each batch's images, as rows of the concatenated classes
        batches.append([index[img.tobytes()] for img in x])
        return real(x, preprocess)

    monkeypatch.setattr(pretrain, "to_float", recording)
    model = build_model(ModelSpec(image_size=16, width=4))
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    pretrain.pretrain_body(model, params, classes, spec, epochs=2, rundir=str(tmp_path), seed=0, device="cpu",
                           batch_size=8, quiet=True)
    assert len(batches) == 2 * 4  # 27 images in batches of 8: 4 per epoch
    epochs = [sum(batches[:4], []), sum(batches[4:], [])]
    assert all(sorted(order) == list(range(27)) for order in epochs)
    assert epochs[0] != epochs[1]
