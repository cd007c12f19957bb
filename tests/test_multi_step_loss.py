"""MAML++'s multi-step loss (--multi-step-loss N): the meta-objective sum_t w_t L_query(phi_t).

Its gradient is checked against its definition: the weighted sum of the ordinary meta-gradients of
the same tasks adapted for t = 1..k steps (float64, loop and batched paths).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastadapt.errors import FastadaptError
from fastadapt.meta_train.algorithms import meta_gradient, multi_step_weights
from fastadapt.meta_train.run_setup import check_config
from fastadapt.meta_train.run import TrainConfig
from fastadapt.meta_train.trainer import train

from test_batched import CLASSIFICATION, DEVICES, setup

EPS64 = torch.finfo(torch.float64).eps


def test_weights_start_uniform_and_anneal_to_the_last_step():
    assert multi_step_weights(3, 0, 100) == pytest.approx((1 / 3,) * 3)
    half = (1 / 3 + 0.01) / 2  # halfway from 1/k to the floor 0.03/k
    assert multi_step_weights(3, 50, 100) == pytest.approx((half, half, 1 - 2 * half))
    for it in (100, 10**6):  # MAML++'s floor: 0.03/k for the earlier steps
        assert multi_step_weights(3, it, 100) == pytest.approx((0.01, 0.01, 0.98))
    assert all(sum(multi_step_weights(5, it, 7)) == pytest.approx(1.0) for it in range(10))


@pytest.mark.parametrize("device", DEVICES)  # scripts/gpu_check.sh runs this file on CUDA too
@pytest.mark.parametrize("vectorize", [False, True])
@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "anil"])
def test_gradient_is_the_weighted_sum_of_each_steps_meta_gradient(one_thread, device, algorithm, vectorize):
    c = TrainConfig(algorithm=algorithm, head_init="prototype", **{**CLASSIFICATION, "inner_steps": 3})
    model, params, recipe, tasks = setup(c, device, torch.float64)
    weights = (0.2, 0.3, 0.5)
    got, loss, acc = meta_gradient(algorithm, model, params, tasks, recipe, vectorize=vectorize, step_weights=weights)
    parts = [meta_gradient(algorithm, model, params, tasks, dataclasses.replace(recipe, steps=t))
             for t in (1, 2, 3)]
    size = max(v.abs().max().item() for v in parts[-1][0].values())
    assert size > 1e-3
    for k in got:
        expected = sum(w * part[0][k] for w, part in zip(weights, parts))
        # float64 summation-order differences of one computation: a few thousand ulps of the largest value
        torch.testing.assert_close(got[k], expected, rtol=0, atol=1e4 * EPS64 * size)
    # the loss and accuracy reported are the last step's, as without the multi-step loss
    assert loss == pytest.approx(parts[-1][1], rel=1e-12) and acc == pytest.approx(parts[-1][2])


def test_last_step_only_weights_are_the_ordinary_meta_gradient(one_thread):
    c = TrainConfig(algorithm="maml", **CLASSIFICATION)
    model, params, recipe, tasks = setup(c, "cpu", torch.float64)
    plain = meta_gradient("maml", model, params, tasks, recipe)
    weighted = meta_gradient("maml", model, params, tasks, recipe, step_weights=(0.0, 1.0))
    for k in plain[0]:
        torch.testing.assert_close(weighted[0][k], plain[0][k], rtol=0, atol=0)


def test_trainer_flag_and_refusals(tmp_path, one_thread, monkeypatch):
    import fastadapt.meta_train.trainer as trainer

    seen, real = [], trainer.meta_gradient

    def spy(*args, **kwargs):
        seen.append(kwargs["step_weights"])
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "meta_gradient", spy)
    summary = train(TrainConfig(data="synthetic", width=8, meta_batch=2, query=2, val_tasks=2, val_every=3,
                                iterations=3, multi_step_loss=2, algorithm="fomaml"), str(tmp_path / "run"), quiet=True)
    assert summary["iterations"] == 3
    # the trainer anneals the weights with the iteration (guards weights frozen at iteration 0): 3 inner steps
    # (the default), annealed over 2 iterations: steps 1 and 2 fall from 1/3 by (1/3 - 0.01) / 2 per iteration
    # to MAML++'s floor 0.03/3, and the last step takes the rest
    assert TrainConfig().inner_steps == 3 and len(seen) == 3
    for got, other in zip(seen, (1 / 3, 1 / 3 - (1 / 3 - 0.01) / 2, 0.01)):
        assert got == pytest.approx((other, other, 1 - 2 * other), abs=1e-12)
    with pytest.raises(FastadaptError, match="--multi-step-loss"):
        check_config(TrainConfig(algorithm="reptile", multi_step_loss=10))
    with pytest.raises(ValueError, match="one weight per inner step"):
        model, params, recipe, tasks = setup(TrainConfig(**CLASSIFICATION), "cpu", torch.float32)
        meta_gradient("maml", model, params, tasks, recipe, step_weights=(1.0,))
