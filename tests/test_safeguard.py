"""The safeguarded inner loop, steps="auto", and the argument checks of adapt (runtime, no torch needed
except for the small exported test bundles)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import fastadapt
from fastadapt.errors import FastadaptError
from fastadapt.runtime.adaptation import AUTO_FOLDS, _loss_resolution, run_steps, softmax, support_loss

from conftest import ROOT, glyph_images, save_folder
from test_cli_runtime import run_cli

SHOTS = os.path.join(ROOT, "examples", "shots")


def test_nothing_rejected_is_the_recipe_bit_for_bit():
    """In-domain (the shipped model on the example drawings) every step lowers the loss: the safeguarded
    result is exactly the plain recipe's, parameters and report alike."""
    model = fastadapt.load()
    plain = model.adapt(SHOTS, safeguard=False)
    guarded = model.adapt(SHOTS)
    info = guarded.adaptation
    assert info["safeguard"] and not plain.adaptation["safeguard"]
    assert info["rejected"] == 0 and info["steps"] == info["steps_requested"] == model.recipe["steps"]
    assert info["lrs"] == [model.recipe["lr"]] * info["steps"]
    assert info["loss_after"] < info["loss_before"]
    assert set(guarded.params) == set(plain.params)
    for name in plain.params:
        assert np.array_equal(guarded.params[name], plain.params[name]), name
    for key in ("steps", "lrs", "loss_before", "loss_after", "losses", "rejected"):
        assert info[key] == plain.adaptation[key], key


def test_a_step_that_raises_the_loss_sends_adaptation_back_to_its_start(bundles, capsys):
    """The random test bundle with the prototype head: the recipe's lr 0.4 sends the support loss from
    ~0.08 to ~5; the safeguard keeps the start (the 0-step model, exactly) and says so once."""
    images = glyph_images(4, [3, 1, 2, 4], seed=7)
    model = fastadapt.load(bundles["prototype"])
    plain = model.adapt(images, safeguard=False)
    start = model.adapt(images, steps=0)
    capsys.readouterr()
    guarded = model.adapt(images)
    info = guarded.adaptation
    assert plain.adaptation["loss_after"] > plain.adaptation["loss_before"]
    assert info["rejected"] == 1 and info["steps"] == 0 and info["lrs"] == [] and info["steps_requested"] == 3
    assert info["loss_after"] == info["loss_before"] and info["rejected_step"]["loss_after"] > info["loss_before"]
    for name in start.params:
        assert np.array_equal(guarded.params[name], start.params[name]), name
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "Meta-train your own" in err and "good for" in err
    assert "warning" in info and "raised the support loss" in info["warning"]


def test_the_largest_lr_never_gives_nan(bundles, tmp_path, capsys):
    images = glyph_images(3, 2, seed=3)
    model = fastadapt.load(bundles["zero"])
    with pytest.raises(FastadaptError, match="diverged.*lower lr .*turn safeguard on"):
        model.adapt(images, lr=1e6, safeguard=False)
    with pytest.raises(FastadaptError, match="SGD step 1 raised the support loss .*lower lr"):
        model.adapt(images, lr=1e6)  # a zero head has no useful start to go back to
    adapted = fastadapt.load(bundles["prototype"]).adapt(images, lr=1e6)
    assert all(np.isfinite(v).all() for v in adapted.params.values())
    assert adapted.adaptation["loss_after"] == adapted.adaptation["loss_before"] and adapted.adaptation["steps"] == 0
    json.dumps(adapted.manifest, allow_nan=False)  # the rejected step's inf/NaN loss is stored as text
    assert "try without lr)" in capsys.readouterr().err  # the parameter's name (the CLI writes --lr)
    # the CLI: no bundle written for a diverged adaptation, one error line, no traceback
    out = tmp_path / "x.fadapt"
    folder = save_folder(images, tmp_path / "shots")
    code, stdout, err = run_cli(capsys, "adapt", "--model", bundles["zero"], "--shots", folder, "--out", out, "--lr",
                                "1e6", "--no-safeguard")
    assert code != 0 and not out.exists() and "Traceback" not in err and "diverged" in err
    assert "lower --lr (now 1e+06) or turn --safeguard on" in err  # the CLI names the flags


def test_argument_checks(bundles, glyphs):
    model = fastadapt.load(bundles["zero"])
    assert model.adapt(glyphs["shots"], steps="2", lr=np.float32(0.25)).adaptation["steps_requested"] == 2
    assert model.adapt(glyphs["shots"], steps=np.int64(1)).adaptation["lr"] == model.recipe["lr"]
    for bad in ("3.5", "three", True, 2.0, -1, 10 ** 12):
        with pytest.raises(FastadaptError, match="^steps must be"):
            model.adapt(glyphs["shots"], steps=bad)
    for bad in ("0.1", 0, -0.1, float("nan"), float("inf"), True):
        with pytest.raises(FastadaptError, match="^lr must be"):
            model.adapt(glyphs["shots"], lr=bad)


def test_auto_steps(bundles, glyphs):
    model = fastadapt.load(bundles["zero"])
    adapted = model.adapt(glyphs["shots"], steps="auto")  # 3 shots per class
    auto = adapted.adaptation["auto"]
    assert 0 <= auto["chosen"] <= model.recipe["steps"] and len(auto["accuracy"]) == model.recipe["steps"] + 1
    assert adapted.adaptation["steps_requested"] == auto["chosen"]
    assert auto["best_accuracy"] == max(auto["accuracy"])
    # the chosen steps on all shots are what adapt does with that number
    again = model.adapt(glyphs["shots"], steps=auto["chosen"])
    for name in again.params:
        assert np.array_equal(again.params[name], adapted.params[name]), name
    one_shot = model.adapt(glyph_images(3, 1, seed=2), steps="auto").adaptation
    assert one_shot["steps_requested"] == model.recipe["steps"] and "2 shots" in one_shot["auto"]["note"]


def test_auto_holds_out_one_shot_of_every_class_per_fold():
    """Guards against inverted folds (each fold holding out all shots but one per class): fold f holds out
    the f-th shot of each class, so the report counts folds * classes held-out shots."""
    from fastadapt.runtime.adaptation import _held_out_folds

    labels = np.array([1, 0, 0, 2, 1, 0, 2])
    folds = _held_out_folds(labels, 3, 2)
    assert [mask.tolist() for mask in folds] == [[True, True, False, True, False, False, False],
                                                 [False, False, True, False, True, False, True]]
    adapted = fastadapt.load().adapt(SHOTS, steps="auto")  # 8 classes, 5 shots each
    auto = adapted.adaptation["auto"]
    assert auto["folds"] == AUTO_FOLDS and auto["held_out"] == AUTO_FOLDS * len(adapted.classes)


def test_cli_reports_steps_and_loss(tmp_path, capsys):
    out = tmp_path / "a.fadapt"
    code, stdout, err = run_cli(capsys, "adapt", "--shots", SHOTS, "--out", out, "--steps", "auto")
    assert code == 0, err
    assert "auto: chose" in stdout and "support loss" in stdout and out.exists()
    manifest_info = fastadapt.load(str(out)).adaptation
    assert manifest_info["auto"]["chosen"] == manifest_info["steps_requested"]
    code, stdout, err = run_cli(capsys, "adapt", "--shots", SHOTS, "--out", out, "--steps", "x")
    assert code != 0 and "--steps" in err and "Traceback" not in err


def test_unbalanced_shots_use_the_class_balanced_loss(bundles):
    """With the safeguard, each class weighs the same in the support loss whatever its number of shots
    (the recipe's plain mean lets one shot be out-voted by many images of another class): so showing a
    class's images twice changes nothing, up to float32 rounding of the chunked sums."""
    model = fastadapt.load(bundles["zero"])
    images = glyph_images(3, [1, 2, 3], seed=4)
    doubled = {**images, "class02": images["class02"] * 2}
    once = model.adapt(images, lr=0.05)
    twice = model.adapt(doubled, lr=0.05)
    plain = model.adapt(doubled, lr=0.05, safeguard=False)
    assert once.adaptation["class_balanced"] and twice.adaptation["class_balanced"]
    assert not plain.adaptation["class_balanced"]
    assert not model.adapt(glyph_images(3, 2, seed=4), lr=0.05).adaptation["class_balanced"]  # balanced shots
    assert once.adaptation["rejected"] == twice.adaptation["rejected"] == 0
    eps = np.finfo(np.float32).eps
    for name in once.params:
        p = once.params[name]
        # 3 steps, each a float32 mean over <= 8 images: a few dozen roundings of the parameters' size
        np.testing.assert_allclose(twice.params[name], p, rtol=0, atol=64 * eps * max(1.0, np.abs(p).max()),
                                   err_msg=name)
    diff = max(np.abs(plain.params[n] - twice.params[n]).max() for n in plain.params)
    assert diff > 1e3 * 64 * eps  # the plain mean is a different step


def test_step_loss_is_the_forward_loss(bundles, glyphs):
    """Graphs.step's loss (plain or class-balanced) is support_loss of forward.onnx's logits, within the
    rounding bound the safeguard uses to compare them."""
    from fastadapt.runtime.adaptation import rounding_bound

    model = fastadapt.load(bundles["prototype"])
    images = glyph_images(3, [1, 2, 4], seed=5)
    x = np.stack([fastadapt.images.to_float(fastadapt.images.to_uint8(im, model.preprocess)[None], model.preprocess)[0]
                  for items in images.values() for im in items])
    y = np.repeat(np.arange(3), [1, 2, 4])
    params = model._init_head(x, y, 3)
    logits, features = model.graphs.forward(x, params)
    for balanced in (False, True):
        loss, _ = model.graphs.step(x, y, 0.1, params, class_balanced=balanced)
        assert abs(loss - support_loss(logits, y, balanced)) <= rounding_bound(logits, features, params, y, balanced)
    assert support_loss(logits, y, True) != pytest.approx(support_loss(logits, y, False), rel=1e-3)


def test_one_call_adapt_passes_the_safeguard_through(bundles, glyphs):
    assert fastadapt.adapt(glyphs["shots"], model=bundles["zero"], safeguard=False).adaptation["safeguard"] is False
    assert fastadapt.adapt(glyphs["shots"], model=bundles["zero"]).adaptation["safeguard"] is True


def _raise_loss_at(model, monkeypatch, call: int):
    """Make step graph call ``call`` (1-based) report a higher loss: call t+1 returns the loss after step t,
    so call 3 rejects step 2 and call 2 rejects step 1."""
    real, calls = model.graphs.step, []

    def step(*args, **kwargs):
        loss, params = real(*args, **kwargs)
        calls.append(loss)
        return (loss + 1.0 if len(calls) == call else loss), params

    monkeypatch.setattr(model.graphs, "step", step)


def test_a_zero_head_keeps_the_steps_before_a_rejected_one(bundles, monkeypatch, capsys):
    """A zero head's start answers every image the same (1/N each): a rejected step 2 keeps step 1."""
    images = glyph_images(4, 3, seed=7)
    model = fastadapt.load(bundles["zero"])
    one_step = model.adapt(images, steps=1, safeguard=False)
    _raise_loss_at(model, monkeypatch, 3)
    guarded = model.adapt(images)
    info = guarded.adaptation
    assert info["rejected"] == 1 and info["rejected_step"]["step"] == 2 and info["steps"] == 1
    for name in one_step.params:
        assert np.array_equal(guarded.params[name], one_step.params[name]), name
    assert "keeps its first 1 step(s)" in capsys.readouterr().err
    probabilities = guarded.probabilities(guarded.bundle.shots["images"].astype(np.float32)) \
        if guarded.bundle.shots is not None else None
    assert probabilities is None or np.ptp(probabilities, axis=0).max() > 0  # not one answer for every image


def test_a_zero_head_with_no_step_is_an_error_not_a_model(bundles, monkeypatch, tmp_path, capsys):
    images = glyph_images(4, 3, seed=7)
    model = fastadapt.load(bundles["zero"])
    with pytest.raises(FastadaptError, match="steps 0 leaves this model's zero-initialised head") as error:
        model.adapt(images, steps=0)
    assert "\n" not in str(error.value)
    folder = save_folder(images, tmp_path / "shots")
    code, _, err = run_cli(capsys, "adapt", "--model", bundles["zero"], "--shots", folder, "--steps", "0",
                           "--out", tmp_path / "a.fadapt")
    assert code != 0 and "--steps 0" in err and "Traceback" not in err and not (tmp_path / "a.fadapt").exists()
    _raise_loss_at(model, monkeypatch, 2)
    with pytest.raises(FastadaptError, match="SGD step 1 raised the support loss .*lower lr"):
        model.adapt(images)


def test_steps_auto_never_chooses_zero_steps_for_a_zero_head(bundles):
    model = fastadapt.load(bundles["zero"])
    info = model.adapt(glyph_images(4, 3, seed=7), steps="auto").adaptation
    assert info["auto"]["chosen"] >= 1 and info["steps"] >= 1


class SoftmaxRegression:
    """A stand-in for sessions.Graphs on fixed features f: logits = f W^T + b; ``step`` is one SGD step of the mean
    cross-entropy (rate: one number, or a (weight, bias) row of learned rates) and returns the loss at its input
    parameters, as step.onnx does. Records the rate of each call."""

    def __init__(self, features: np.ndarray):
        self.features, self.rates = features, []

    def forward(self, images, params):
        return (self.features @ params["head.weight"].T + params["head.bias"]).astype(np.float32), self.features

    def step(self, images, labels, rate, params, class_balanced=False):
        self.rates.append(np.asarray(rate, np.float64).tolist())
        logits, f = self.forward(images, params)
        grad = softmax(logits)  # d(mean CE)/d logits = (p - onehot) / n
        grad[np.arange(len(labels)), labels] -= 1
        grad /= len(labels)
        rate_w, rate_b = np.broadcast_to(np.asarray(rate, np.float64), (2,))
        new = {"head.weight": (params["head.weight"] - rate_w * grad.T @ f).astype(np.float32),
               "head.bias": (params["head.bias"] - rate_b * grad.sum(0)).astype(np.float32)}
        return support_loss(logits, labels, class_balanced), new


def _regression_task():
    """3 classes x 2 shots (balanced: the plain loss either way), features of norm ~2, a small random head."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 2)
    features = rng.normal(size=(6, 4)).astype(np.float32)
    params = {"head.weight": (0.1 * rng.normal(size=(3, 4))).astype(np.float32), "head.bias": np.zeros(3, np.float32)}
    return SoftmaxRegression(features), np.zeros((6, 1, 4, 4), np.float32), labels, params


def test_learned_rates_take_row_t_at_step_t_with_the_safeguard_too():
    """Guards against the safeguarded loop using a learned-rate bundle's row t-1 at step t: where nothing is
    rejected, safeguard on and off are the same steps, with rates row 0, 1, 2, and the same parameters bit for bit."""
    rates = np.array([[0.1, 0.05], [0.2, 0.1], [0.3, 0.15]], np.float32)  # (steps, adapted tensors)
    results = {}
    for safeguard in (False, True):
        graphs, images, labels, params = _regression_task()
        trajectory = run_steps(graphs, images, labels, params, 3, rates, safeguard=safeguard)
        assert trajectory.rejected is None and len(trajectory.lrs) == 3
        assert trajectory.losses[-1] < trajectory.losses[0]  # the steps descend: nothing for the safeguard to reject
        assert graphs.rates == rates.astype(np.float64).tolist(), (safeguard, graphs.rates)
        results[safeguard] = trajectory.params
    for name in results[False]:
        assert np.array_equal(results[True][name], results[False][name]), name


def test_a_step_that_leaves_the_loss_unchanged_is_kept():
    """Guards against judging a step by a strict fall (new < old): a step that leaves the support loss exactly as
    it was (rate 0 here; a converged or very confident head in practice) is not a rise, last step included."""
    for steps in (1, 2, 3):
        graphs, images, labels, params = _regression_task()
        trajectory = run_steps(graphs, images, labels, params, steps, 0.0, safeguard=True)
        assert trajectory.rejected is None and len(trajectory.lrs) == steps, (steps, trajectory.rejected)
        assert len(set(trajectory.losses)) == 1


def test_a_rise_within_the_float32_resolution_of_the_loss_is_not_a_rise():
    """Guards against a zero tolerance between steps: step.onnx's float32 loss is only known to
    _loss_resolution(ways), so a mid step whose reported loss rises by less is kept, and by more is rejected."""
    resolution = _loss_resolution(3)
    for rise, kept in ((0.9 * resolution, True), (2 * resolution, False)):
        graphs, images, labels, params = _regression_task()
        real, calls = graphs.step, []

        def step(*args, rise=rise, real=real, calls=calls, **kwargs):
            loss, new = real(*args, **kwargs)
            calls.append(loss)
            return (loss + rise if len(calls) == 2 else loss), new  # call 2 judges step 1 (rate 0: no real change)

        graphs.step = step
        trajectory = run_steps(graphs, images, labels, params, 3, 0.0, safeguard=True)
        if kept:
            assert trajectory.rejected is None and len(trajectory.lrs) == 3, trajectory.rejected
        else:
            assert trajectory.rejected["step"] == 1 and trajectory.lrs == [], trajectory.rejected
