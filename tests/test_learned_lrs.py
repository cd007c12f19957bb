"""Learned inner learning rates (--learn-inner-lr: one rate per adapted tensor and step, MAML++'s LSLR).

The rates are meta-parameters: their meta-gradient is checked against finite differences in float64,
the batched path against the loop, the trainer learns, checkpoints and resumes them, and the exported
bundle carries them so that the runtime repeats exactly the torch inner loop (runtime == torch).
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
import torch

from fastadapt.errors import FastadaptError
from fastadapt.meta_train import inner_loop as il
from fastadapt.meta_train.algorithms import cosine_step, meta_gradient
from fastadapt.meta_train.run_setup import check_config, init_meta_params
from fastadapt.meta_train.run import TrainConfig, load_checkpoint
from fastadapt.meta_train.trainer import train

from conftest import rewrite_manifest
from test_batched import CLASSIFICATION, DEVICES, assert_as_close_as_the_loop, query_outputs, setup
from test_cli_runtime import run_cli

TINY = dict(data="synthetic", width=8, meta_batch=4, query=2, val_tasks=4, val_every=4, checkpoint_every=2,
            inner_steps=2, inner_lr=0.3, meta_lr=0.01)


def with_rates(params: dict, recipe, steps: int, seed: int = 0) -> dict:
    """``params`` plus non-uniform learned rates (0.1..0.5) for ``steps`` steps, as a leaf that needs grad."""
    names = recipe.adapted_names({**params, **dict.fromkeys(il.HEAD)})
    g = torch.Generator().manual_seed(seed)
    like = next(iter(params.values()))
    rates = (0.1 + 0.4 * torch.rand(steps, len(names), generator=g)).to(like)
    return {**params, il.LEARNED_LRS: rates.requires_grad_()}


@pytest.mark.parametrize("algorithm", ["maml", "anil"])
def test_rates_meta_gradient_matches_finite_differences(one_thread, algorithm):
    """Second order through both steps, in float64: the central difference along a random direction of the
    rates equals the gradient's projection (truncation error O(h^2) ~ 1e-8 relative, far below the bound)."""
    c = TrainConfig(algorithm=algorithm, head_init="prototype", **CLASSIFICATION)
    model, params, recipe, tasks = setup(c, "cpu", torch.float64)
    params = with_rates(params, recipe, c.inner_steps)
    grads, _, _ = meta_gradient(algorithm, model, params, tasks, recipe)
    direction = torch.randn(params[il.LEARNED_LRS].shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h = 1e-5

    def loss_at(shift: float) -> float:
        moved = {**params, il.LEARNED_LRS: (params[il.LEARNED_LRS] + shift * direction).detach().requires_grad_()}
        return meta_gradient(algorithm, model, moved, tasks, recipe)[1]

    numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
    analytic = float((grads[il.LEARNED_LRS] * direction).sum())
    assert abs(analytic) > 1e-4  # the rates really move the query loss
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic))


@pytest.mark.parametrize("device", DEVICES)  # scripts/gpu_check.sh runs this file on CUDA too
@pytest.mark.parametrize("head_init", ["zero", "prototype"])
@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "anil"])
def test_batched_equals_loop_with_learned_rates(one_thread, monkeypatch, device, algorithm, head_init):
    c = TrainConfig(algorithm=algorithm, head_init=head_init, **CLASSIFICATION)
    results = []
    for dtype in (torch.float32, torch.float64):
        model, params, recipe, tasks = setup(c, device, dtype)
        params = with_rates(params, recipe, c.inner_steps)
        results.append((model, params, recipe, tasks))
    (model, params, recipe, tasks), (model64, params64, _, tasks64) = results
    outputs = []
    for m, p, t, vectorize in ((model, params, tasks, False), (model64, params64, tasks64, False),
                               (model, params, tasks, True)):
        with query_outputs() as out:  # predicted labels compared only where no rounding can flip them
            result = meta_gradient(algorithm, m, p, t, recipe, vectorize=vectorize)
        outputs.append(result + (out[0], torch.stack([task.query_y for task in t]).cpu().numpy()))
    loop, exact, vec = outputs
    assert_as_close_as_the_loop(vec, loop, exact)
    assert exact[0][il.LEARNED_LRS].abs().max() > 1e-4  # the rates get a gradient


def test_adapt_uses_each_steps_rates_and_the_last_row_beyond(one_thread):
    """adapt with learned rates == explicit SGD steps at row t's per-tensor rates (row 1 again for step 3)."""
    c = TrainConfig(algorithm="maml", head_init="prototype", **CLASSIFICATION)
    model, params, recipe, tasks = setup(c, "cpu", torch.float64)
    params = with_rates(params, recipe, 2)
    task = tasks[0]
    got = il.adapt(model, params, task.support_x, task.support_y, task.ways, recipe, steps=3, first_order=True)
    rates = params[il.LEARNED_LRS].detach()
    manual = il.init_head(model, il.network_params(params), task.support_x, task.support_y, task.ways, recipe)
    for row in (0, 1, 1):
        manual = il.sgd_step(model, manual, task.support_x, task.support_y, recipe, rates[row], first_order=True)
    for k in got:
        torch.testing.assert_close(got[k], manual[k], rtol=0, atol=1e-12)
    # an explicit lr replaces the learned rates, one rate for every tensor and step
    plain = il.adapt(model, params, task.support_x, task.support_y, task.ways, recipe, lr=0.2, first_order=True)
    reference = il.adapt(model, il.network_params(params), task.support_x, task.support_y, task.ways, recipe,
                         lr=0.2, first_order=True)
    for k in plain:
        torch.testing.assert_close(plain[k], reference[k], rtol=0, atol=0)


def test_trainer_learns_checkpoints_and_resumes_the_rates(tmp_path, one_thread):
    run = str(tmp_path / "run")
    # a constant meta lr: resuming a cosine schedule with other --iterations is refused (it would reshape it)
    c = TrainConfig(algorithm="fomaml", head_init="prototype", iterations=4, learn_inner_lr=True, **TINY)
    first = init_meta_params(None, c, "cpu")[il.LEARNED_LRS]
    assert first.shape == (2, 18) and torch.all(first == 0.3)  # Conv4: 16 body tensors + head weight and bias
    train(c, run, quiet=True)
    rates = load_checkpoint(os.path.join(run, "last.npz")).params[il.LEARNED_LRS]
    assert rates.shape == (2, 18) and np.abs(rates - 0.3).max() > 1e-4  # learned
    train(TrainConfig(**{**c.to_dict(), "iterations": 6}), run, resume=True, quiet=True,
          given={"iterations"})
    resumed = load_checkpoint(os.path.join(run, "last.npz"))
    assert resumed.progress["iteration"] == 6 and not np.array_equal(resumed.params[il.LEARNED_LRS], rates)
    # a run without learned rates as --init-from: the body is copied, the rates start at --inner-lr
    plain = str(tmp_path / "plain")
    train(TrainConfig(algorithm="fomaml", head_init="prototype", iterations=1, **TINY), plain, quiet=True)
    init = str(tmp_path / "init")
    train(TrainConfig(**{**c.to_dict(), "iterations": 1, "init_from": plain}), init, quiet=True)
    assert il.LEARNED_LRS in load_checkpoint(os.path.join(init, "last.npz")).params


def test_cosine_schedule():
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([p], lr=1.0)
    for it, expected in ((0, 1e-3), (50, 5e-4), (100, 0.0)):
        cosine_step(opt, 1e-3, it, 100)
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)


def test_the_trainer_anneals_adams_lr_with_the_cosine_schedule(tmp_path, one_thread):
    """Guards --meta-lr-schedule cosine being accepted but never applied: the last iteration (index 2 of 3)
    ran with meta_lr * (1 + cos(2 pi / 3)) / 2 = meta_lr / 4, the lr saved with Adam's state in last.npz."""
    import math

    c = TrainConfig(algorithm="fomaml", iterations=3, meta_lr_schedule="cosine", **{**TINY, "meta_batch": 2})
    train(c, str(tmp_path / "run"), quiet=True)
    lr = load_checkpoint(str(tmp_path / "run" / "last.npz")).optimizer_state["param_groups"][0]["lr"]
    assert lr == pytest.approx(c.meta_lr * 0.5 * (1 + math.cos(2 * math.pi / 3)), rel=1e-12)
    assert lr == pytest.approx(c.meta_lr / 4, rel=1e-12)


def test_reptile_and_bad_schedules_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(FastadaptError, match="reptile"):
        check_config(TrainConfig(algorithm="reptile", learn_inner_lr=True))
    with pytest.raises(FastadaptError, match="--meta-lr-schedule must be constant or cosine"):
        check_config(TrainConfig(meta_lr_schedule="linear"))
    code, out, err = run_cli(capsys, "train", "--algorithm", "reptile", "--learn-inner-lr", "--out", str(tmp_path / "r"))
    assert code != 0 and "reptile" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def learned_bundle(tmp_path_factory):
    """A width-16 Conv4 bundle with non-uniform learned rates for 2 steps, through the real exporter (which
    verifies runtime == torch before writing). Width 16 is conftest's: its forward graph is traced once."""
    from fastadapt.images import Preprocess
    from fastadapt.meta_train.bundle_export import export_bundle
    from fastadapt.models import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(width=16)
    model = build_model(spec)
    recipe = il.InnerLoop(steps=2, lr=0.3, head_init="prototype")
    params = with_rates({k: v.detach().clone() for k, v in model.named_parameters()}, recipe, 2)
    path = str(tmp_path_factory.mktemp("learned") / "learned.fadapt")
    manifest = export_bundle(path, model, spec, recipe, params, Preprocess(), {"algorithm": "none (tests)"}, [])
    return path, model, recipe, params, manifest


def test_bundle_carries_the_rates_and_the_runtime_repeats_them(learned_bundle, one_thread):
    import fastadapt
    from fastadapt.meta_train.verification import agrees

    path, model, recipe, params, manifest = learned_bundle
    np.testing.assert_allclose(manifest["inner_loop"]["learned_lrs"], params[il.LEARNED_LRS].detach().numpy(),
                               rtol=1e-7)
    runtime = fastadapt.load(path)
    g = np.random.default_rng(1)
    images = g.random((6, 1, 28, 28), dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    # the meta-trained steps, one beyond them (row 1 again), an explicit lr. (Further steps of this random
    # net at these rates reach max-pool/ReLU kinks where float32 rounding picks a different branch.)
    for steps, lr in ((2, None), (3, None), (2, 0.05)):
        adapted = runtime.adapt_arrays(images, labels, ["a", "b", "c"], steps=steps, lr=lr, safeguard=False,
                                       quiet=True)
        reference = il.adapt(model, params, x, y, 3, recipe, steps=steps, lr=lr, first_order=True)
        for k, v in reference.items():
            assert agrees(adapted.params[k], v.detach().numpy()), (steps, lr, k)
        assert adapted.adaptation["lr"] == ("learned" if lr is None else lr)
    assert len(adapted.adaptation["lrs"]) == 2 and adapted.adaptation["lrs"][0] == [pytest.approx(0.05)] * 18


def test_hostile_learned_rates_are_one_line_errors(learned_bundle, bundles, tmp_path):
    import fastadapt

    path = learned_bundle[0]
    with zipfile.ZipFile(path) as z:
        rows = json.loads(z.read("manifest.json"))["inner_loop"]["learned_lrs"]
    bad = str(tmp_path / "bad.fadapt")
    for rates, message in (([row[:-1] for row in rows], "inner_loop.learned_lrs"), ([], "inner_loop.learned_lrs"),
                           ([[1e9] * 18], "inner_loop.learned_lrs")):
        rewrite_manifest(path, bad, inner_loop={"learned_lrs": rates})
        with pytest.raises(FastadaptError, match=message):
            fastadapt.load(bad)
    # rates in the manifest of a bundle whose step graph takes one lr: refused when adapting, in one line
    rewrite_manifest(bundles["prototype"], bad, inner_loop={"learned_lrs": [[0.1] * 18] * 3})
    with pytest.raises(FastadaptError, match="step.onnx takes lr of shape"):
        fastadapt.load(bad).adapt_arrays(np.zeros((4, 1, 28, 28), np.float32), np.array([0, 0, 1, 1]), ["a", "b"],
                                         quiet=True)
