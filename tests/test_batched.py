"""Batched tasks (one computation per meta-batch, fastadapt.meta_train.task_batched) against the per-task loop, on every device torch sees.

The trainer batches on CUDA by default, so each combination the trainer accepts (algorithm x head
initialisation x adapt mode, classification and regression, per-sample and batch-statistics norm) is
checked here: on CPU in CI, and on CUDA where there is one (scripts/gpu_check.sh runs this file there).

Tolerances are derived from the computation, not tuned: both float32 paths are compared with the same
computation in float64, and the batched path may be off from it by at most a few times what the
per-task loop is off (its own float32 rounding of this very computation), plus a few float32 ulps of
the values' size.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

import fastadapt.meta_train.algorithms as alg
from fastadapt.data.classes import ImageClasses
from fastadapt.data.sampler import Task, TaskSampler
from fastadapt.errors import FastadaptError
from fastadapt.images import Preprocess, to_float
from fastadapt.meta_train.algorithms import TaskTensors, Chunks, meta_gradient
from fastadapt.meta_train.run_setup import (DeviceTasks, batched_path, check_config, model_spec_of, recipe_of,
                                       resolve_device, to_tensors)
from fastadapt.meta_train.run import TrainConfig
from fastadapt.meta_train.task_batched import TaskBatched
from fastadapt.models import build_model
from numerics import EPS32, assert_float32_close, decided, float32_bound

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --------------------------------------------------------------------------- helpers

def setup(c: TrainConfig, device, dtype, tasks: int = 3, seed: int = 0):
    """The trainer's model, meta-parameters and recipe for config ``c``, and random tasks, in ``dtype``."""
    resolve_device(str(device))  # on CUDA: true float32, as the trainer runs (no TF32)
    torch.manual_seed(seed)
    model = build_model(model_spec_of(c))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial norm affine parameters
        for k, v in params.items():
            if v.dim() == 1:
                v.add_(0.3 * torch.randn(v.shape, generator=g))
    if c.regression:
        params["head.weight"] = 0.5 * torch.randn(1, model.feature_dim, generator=g)
        params["head.bias"] = 0.1 * torch.randn(1, generator=g)
    model = model.to(device=device, dtype=dtype)
    params = {k: v.to(device=device, dtype=dtype).requires_grad_() for k, v in params.items()}
    batches = []
    for _ in range(tasks):
        if c.regression:
            xs, xq = torch.rand(c.shots, 1, generator=g) * 10 - 5, torch.rand(c.query, 1, generator=g) * 10 - 5
            amp, phase = torch.rand(2, generator=g) * 3
            ys, yq = amp * torch.sin(xs - phase), amp * torch.sin(xq - phase)
            ways = 1
        else:
            side, ways = c.image_size, c.ways
            ys, yq = torch.arange(ways).repeat_interleave(c.shots), torch.arange(ways).repeat_interleave(c.query)
            xs = torch.rand(len(ys), c.channels, side, side, generator=g)
            xq = torch.rand(len(yq), c.channels, side, side, generator=g)
        cast = lambda t: t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)  # noqa: E731
        batches.append(TaskTensors(cast(xs), cast(ys), cast(xq), cast(yq), ways))
    return model, params, recipe_of(c), batches


def deviation(got: tuple, exact: tuple) -> dict:
    """Largest |got - exact| per gradient tensor, and for the loss."""
    out = {k: (got[0][k].double() - exact[0][k]).abs().max().item() for k in exact[0]}
    out["loss"] = abs(got[1] - exact[1])
    return out


def assert_as_close_as_the_loop(batched: tuple, loop: tuple, exact: tuple, factor: float = 4.0) -> None:
    """``batched`` is within ``factor`` times the loop's own float32 error (plus a few ulps of the values'
    size) of the float64 result, tensor by tensor; accuracies agree up to near-tied predictions.

    With the query outputs and labels (as ``run_all`` returns them), the batched logits are held to the same
    rule, and predicted labels are compared only on queries no logit error within that bound can flip
    (``numerics.decided``). Without them (3-tuples), the accuracies must be equal.

    The loop's error is taken as its largest over all gradient tensors: the float32 noise of this
    computation. Per tensor it can be far smaller by luck of cancellation on one CPU (on an AMD EPYC the
    loop's layers.13.weight of MAML with a prototype head was off by 1.6e-6 while its worst tensor was off
    by 9.7e-5, and the batched path, summing in another order, by 8.6e-6 there)."""
    err_b, err_l = deviation(batched, exact), deviation(loop, exact)
    # rounding in any tensor is relative to the largest values flowing through the computation (a
    # gradient that is 0 in exact arithmetic, such as a conv bias before a norm, still gets that noise)
    size = max(v.abs().max().item() for v in exact[0].values())
    sizes = {k: size for k in exact[0]}
    sizes["loss"] = abs(exact[1])
    noise = max(err_l[k] for k in exact[0])
    for k in err_b:
        bound = float32_bound(err_l[k] if k == "loss" else noise, sizes[k], factor)
        assert err_b[k] <= bound, f"{k}: batched off by {err_b[k]:.3g}, loop by {err_l[k]:.3g}, size {sizes[k]:.3g}"
    if not math.isnan(exact[2]):
        if len(exact) > 3:
            # a query whose float64 top-2 margin is within twice the logits' allowed error is a near tie that
            # another CPU's rounding may flip: only the others must be predicted alike; the accuracy reported is
            # that of the batched path's own predictions (a mean over equal-sized query sets; averaged in float32)
            logit_bound = assert_float32_close(batched[3], loop[3], exact[3], factor, "query logits")
            keep = decided(exact[3], logit_bound)
            predicted, labels = batched[3].argmax(-1).numpy(), batched[4]
            assert np.array_equal(predicted[keep], exact[3].argmax(-1).numpy()[keep])
            assert abs(batched[2] - (predicted == labels).mean()) <= 8 * EPS32
            assert abs(exact[2] - (exact[3].argmax(-1).numpy() == labels).mean()) <= 8 * EPS32
        else:  # the same predictions (a flipped near tie would show here)
            assert abs(batched[2] - exact[2]) <= 8 * EPS32  # + a few ulps: accuracies are averaged in float32
    assert size > 1e-3  # a gradient worth comparing


@contextlib.contextmanager
def query_outputs():
    """Collects the query outputs the meta-gradient computes its loss and accuracy from (the last inner step's;
    no multi-step loss), as one float64 CPU tensor (tasks, queries, outputs) in the list it yields."""
    parts, real = [], alg.forward

    def recording(model, *args, **kwargs):
        out = real(model, *args, **kwargs)
        part = out.detach().double().cpu()
        parts.append(part if isinstance(model, TaskBatched) else part[None])  # the loop: one task at a time
        return out

    alg.forward, collected = recording, []
    try:
        yield collected
    finally:
        alg.forward = real
    collected.append(torch.cat(parts))


def run_all(algorithm, c, device, tasks=3, chunks=None, monkeypatch=None):
    """(batched float32, loop float32, float64) results of the same meta-gradient, each with its query outputs and
    the query labels (tasks, queries) appended: (grads, loss, accuracy, outputs, labels)."""
    model, params, recipe, batch = setup(c, device, torch.float32, tasks)
    with query_outputs() as loop_out:
        loop = meta_gradient(algorithm, model, params, batch, recipe, vectorize=False)
    model64, params64, _, batch64 = setup(c, device, torch.float64, tasks)
    with query_outputs() as exact_out:
        exact = meta_gradient(algorithm, model64, params64, batch64, recipe, vectorize=False)
    if monkeypatch is not None:
        monkeypatch.setattr(alg, "_meta_gradient_loop", None)  # the vectorised path really runs
    with query_outputs() as vec_out:
        vec = meta_gradient(algorithm, model, params, batch, recipe, vectorize=True, chunks=chunks)
    labels = torch.stack([t.query_y for t in batch]).cpu().numpy()
    return vec + (vec_out[0], labels), loop + (loop_out[0], labels), exact + (exact_out[0], labels)


CLASSIFICATION = dict(width=4, image_size=16, ways=3, shots=2, query=2, inner_steps=2, inner_lr=0.4)


# --------------------------------------------------------------------------- batched == loop

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("head_init", ["zero", "prototype"])
@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile", "anil"])
def test_batched_equals_loop_for_classification(one_thread, monkeypatch, device, algorithm, head_init):
    """Every algorithm (anil: head-only adaptation) x head initialisation the trainer accepts."""
    c = TrainConfig(algorithm=algorithm, head_init=head_init, **CLASSIFICATION)
    assert recipe_of(c).adapt == ("head" if algorithm == "anil" else "all")
    vec, loop, exact = run_all(algorithm, c, device, monkeypatch=monkeypatch)
    assert_as_close_as_the_loop(vec, loop, exact)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_batched_equals_loop_for_resnet12(one_thread, monkeypatch, device, algorithm):
    """The residual body (--arch resnet12): shortcuts and the spatial mean batch like Conv4's layers.

    Both paths in float64 against float64 arithmetic's own rounding: in float32 this small random network
    sits on kinks. After one inner step, max-pooling near-ties and ReLUs near 0 can flip on a rounding
    difference of 1e-6. Measured: the batched and the loop's step-1 weights were within 2e-6 of float64,
    and given the same step-1 weights their step-2 gradients agreed to 2e-6. Yet the loop's step-2
    gradient of the first convolution was 1e-5 from float64 and the batched one's 6e-3, because the two
    rounded step 1 differently. (Conv4's float32 checks above have no such kinks in reach.) 32x32 images:
    at 16x16 the last block's instance norm sees 2x2 maps, whose variance of 4 numbers is ill-conditioned."""
    c = TrainConfig(algorithm=algorithm, head_init="prototype", **{**CLASSIFICATION, "image_size": 32}, arch="resnet12")
    assert_float64_paths_agree(algorithm, c, device, monkeypatch)


def assert_float64_paths_agree(algorithm: str, c: TrainConfig, device, monkeypatch) -> None:
    """The batched and the loop meta-gradients of the same tasks, both in float64, agree to 1e-9 of the gradient's
    size: float32's ~1e-5 relative error scaled to float64 (x 1e-9) is ~1e-14, so 1e-9 is loose, and any mistake
    in the batched computation would be off by a sizeable part of the gradient."""
    model, params, recipe, batch = setup(c, device, torch.float64)
    loop = meta_gradient(algorithm, model, params, batch, recipe, vectorize=False)
    monkeypatch.setattr(alg, "_meta_gradient_loop", None)  # the vectorised path really runs
    vec = meta_gradient(algorithm, model, params, batch, recipe, vectorize=True)
    size = max(v.abs().max().item() for v in loop[0].values())
    for k in loop[0]:
        assert (vec[0][k] - loop[0][k]).abs().max().item() <= 1e-9 * size, k
    assert vec[1] == pytest.approx(loop[1], rel=1e-12)
    assert vec[2] == pytest.approx(loop[2], abs=1e-6)  # the loop averages accuracies in float32
    assert size > 1e-6  # a gradient to compare (with no norm this small random network's is ~2e-5), not 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", [dict(head_scale=0.1), dict(channels=3), dict(norm="layer"), dict(norm="none")],
                         ids=["head-scale", "colour", "layer-norm", "no-norm"])
def test_batched_equals_loop_for_the_other_model_choices(one_thread, monkeypatch, device, variant):
    """--head-scale, colour input, layer norm and no norm, in float64 as for the ResNet above: in float32 some of
    these small random networks are ill-conditioned (measured: MAML with no norm, batched off from float64 by 8x the
    loop's own float32 error, while the two float64 paths agreed to 5e-13), which a float32 bound would misread."""
    c = TrainConfig(algorithm="maml", head_init="prototype", **{**CLASSIFICATION, **variant})
    assert_float64_paths_agree("maml", c, device, monkeypatch)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("head_init", ["zero", "prototype"])
@pytest.mark.parametrize("algorithm", ["fomaml", "reptile", "anil"])
def test_batched_equals_loop_with_batch_statistics_norm(one_thread, monkeypatch, device, algorithm, head_init):
    c = TrainConfig(algorithm=algorithm, head_init=head_init, norm="batch", **CLASSIFICATION)
    vec, loop, exact = run_all(algorithm, c, device, monkeypatch=monkeypatch)
    assert_as_close_as_the_loop(vec, loop, exact)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile"])
def test_batched_equals_loop_for_sinusoid_regression(one_thread, monkeypatch, device, algorithm):
    c = TrainConfig(data="sinusoid", algorithm=algorithm, head_init="learned", ways=1, shots=10, query=10,
                    inner_steps=2, inner_lr=0.01)
    vec, loop, exact = run_all(algorithm, c, device, tasks=4, monkeypatch=monkeypatch)
    assert_as_close_as_the_loop(vec, loop, exact)
    assert math.isnan(vec[2])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("head_init", ["zero", "prototype"])
def test_maml_with_batch_statistics_norm_is_batched(one_thread, monkeypatch, device, head_init):
    """Second order through per-task batch statistics (torch.func.vmap got this gradient wrong, so it used to
    take the loop): the batched path is as close to float64 as the loop."""
    c = TrainConfig(algorithm="maml", norm="batch", head_init=head_init, **CLASSIFICATION)
    assert batched_path(c, "cuda")[0] is True
    vec, loop, exact = run_all("maml", c, device, monkeypatch=monkeypatch)
    assert_as_close_as_the_loop(vec, loop, exact)


# --------------------------------------------------------------------------- chunks and out of memory

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_chunked_equals_unchunked(one_thread, device, algorithm):
    """5 tasks in chunks of 2 (2 + 2 + 1): the same gradient as one computation over all 5."""
    c = TrainConfig(algorithm=algorithm, head_init="prototype", **CLASSIFICATION)
    chunks = Chunks(size=2)
    vec, loop, exact = run_all(algorithm, c, device, tasks=5, chunks=chunks)
    assert chunks.size == 2
    assert_as_close_as_the_loop(vec, loop, exact)


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"),
                                   RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
                                   RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate")],
                         ids=["torch", "cudnn", "cublas"])
def test_out_of_memory_halves_the_chunks_and_keeps_the_gradient(one_thread, monkeypatch, error):
    """A CUDA out-of-memory error (simulated: more than 2 tasks at once; torch's own, or a cuDNN / cuBLAS
    workspace allocation failing) is retried in smaller chunks; the size is kept for the rest of the run; a
    single task that does not fit is one line; any other error goes through unchanged."""
    c = TrainConfig(algorithm="fomaml", **CLASSIFICATION)
    model, params, recipe, batch = setup(c, "cpu", torch.float32, tasks=5)
    expected = meta_gradient("fomaml", model, params, batch, recipe, vectorize=True, chunks=Chunks(size=2))
    real, calls = alg._meta_gradient_batched, []

    def tight_memory(algorithm, model, meta_params, tasks, recipe, *rest):
        calls.append(len(tasks))
        if len(tasks) > 2:
            raise error
        return real(algorithm, model, meta_params, tasks, recipe, *rest)

    monkeypatch.setattr(alg, "_meta_gradient_batched", tight_memory)
    chunks = Chunks()
    got = meta_gradient("fomaml", model, params, batch, recipe, vectorize=True, chunks=chunks)
    assert chunks.size == 2 and calls == [5, 3, 2, 2, 1]  # 5 -> 3 -> 2 tasks at once
    for k in expected[0]:
        assert torch.equal(got[0][k], expected[0][k]), k
    assert got[1:] == expected[1:]
    calls.clear()
    meta_gradient("fomaml", model, params, batch, recipe, vectorize=True, chunks=chunks)
    assert calls == [2, 2, 1]  # learned once, not retried every iteration

    def no_memory(*args):
        raise error

    monkeypatch.setattr(alg, "_meta_gradient_batched", no_memory)
    with pytest.raises(FastadaptError, match="single task: lower --ways"):
        meta_gradient("fomaml", model, params, batch, recipe, vectorize=True, chunks=Chunks())

    def another_error(*args):
        raise RuntimeError("shapes do not match")

    monkeypatch.setattr(alg, "_meta_gradient_batched", another_error)
    with pytest.raises(RuntimeError, match="shapes do not match"):
        meta_gradient("fomaml", model, params, batch, recipe, vectorize=True, chunks=Chunks())


# --------------------------------------------------------------------------- which path, and the flag

def test_a_network_it_cannot_batch_takes_the_loop(one_thread, monkeypatch):
    """A layer task_batched has no batched form for (here a reflect-padded convolution): the per-task loop,
    never a wrong batched result."""
    from torch import nn

    from fastadapt.meta_train.task_batched import TaskBatched, supports

    c = TrainConfig(algorithm="fomaml", **CLASSIFICATION)
    model, params, recipe, batch = setup(c, "cpu", torch.float32)
    assert supports(model)
    model.layers[0] = nn.Conv2d(1, c.width, 3, padding=1, padding_mode="reflect")
    assert not supports(model)
    with pytest.raises(ValueError, match="cannot be batched over tasks"):
        TaskBatched(model, 3)
    expected = meta_gradient("fomaml", model, params, batch, recipe, vectorize=False)
    monkeypatch.setattr(alg, "_meta_gradient_batched", None)
    got = meta_gradient("fomaml", model, params, batch, recipe, vectorize=True)
    assert all(torch.equal(got[0][k], expected[0][k]) for k in expected[0]) and got[1:] == expected[1:]


def test_which_path_runs_and_why():
    c = TrainConfig(algorithm="fomaml")
    assert batched_path(c, "cuda")[0] is True and "automatic on CUDA" in batched_path(c, "cuda")[1]
    assert batched_path(c, "cpu")[0] is False and "automatic on a CPU" in batched_path(c, "cpu")[1]
    assert batched_path(TrainConfig(batched=True), "cpu") == (True, "batched tasks (--batched)")
    assert batched_path(TrainConfig(batched=False), "cuda") == (False, "per-task loop (--no-batched)")
    assert batched_path(TrainConfig(algorithm="maml", norm="batch"), "cuda")[0] is True  # per-task statistics
    check_config(TrainConfig(algorithm="maml", norm="batch", batched=True))  # accepted since task_batched
    with pytest.raises(FastadaptError, match="--batched must be a boolean"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "batched": "yes"})
    old = TrainConfig().to_dict()
    del old["batched"]  # a run folder from before the field: automatic
    assert TrainConfig.from_dict(old).batched is None


def test_trainer_logs_the_path_and_batched_training_runs(tmp_path, capsys, one_thread):
    from fastadapt.meta_train.trainer import train

    tiny = dict(data="synthetic", width=8, meta_batch=2, query=2, val_tasks=4, val_every=2, inner_steps=2,
                algorithm="fomaml", device="cpu")
    train(TrainConfig(iterations=2, batched=True, **tiny), str(tmp_path / "run"), quiet=False)
    assert "meta-batch: batched tasks (--batched)" in capsys.readouterr().err
    # --batched may change on --resume (only the summation order differs)
    train(TrainConfig(iterations=3, batched=False, **tiny), str(tmp_path / "run"), resume=True, quiet=False,
          given={"iterations", "batched"})
    assert "meta-batch: per-task loop (--no-batched)" in capsys.readouterr().err


def test_pretraining_then_batched_meta_training(tmp_path, one_thread):
    """--pretrain-epochs then meta-training (the default's recipe, which the GPU benchmark times): the run
    reads its pretrain.npz (progress in epochs) back for the summary."""
    from fastadapt.meta_train.trainer import train

    c = TrainConfig(data="synthetic", width=8, meta_batch=2, query=2, val_tasks=2, val_every=2, inner_steps=1,
                    algorithm="fomaml", head_init="prototype", pretrain_epochs=1, iterations=2, batched=True,
                    device="cpu")
    summary = train(c, str(tmp_path / "run"), quiet=True)
    assert summary["pretrain_seconds"] >= 0 and summary["iterations"] == 2


def test_pretraining_anneals_over_all_epochs_smooths_and_is_seeded(tmp_path, monkeypatch, one_thread):
    """Guards, in pretrain.py: the cosine schedule restarting each epoch (indexed by the batch within the epoch,
    not the batch over all epochs), --pretrain-smoothing not reaching the loss, and the temporary head drawn from
    the global RNG instead of the run's seed (pre-training not reproducible)."""
    import fastadapt.meta_train.pretrain as pretrain
    from fastadapt.meta_train.run import load_checkpoint
    from fastadapt.models import ModelSpec

    classes = random_classes(1, side=16)  # 40 images: 3 batches of 16 per epoch
    model = build_model(ModelSpec(image_size=16, width=4))
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    lrs, smoothing = [], []
    real_step, real_ce = torch.optim.Adam.step, torch.nn.functional.cross_entropy

    def step(self, *args, **kwargs):  # the rate each optimizer step really uses
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    def cross_entropy(*args, **kwargs):
        smoothing.append(kwargs.get("label_smoothing", 0.0))
        return real_ce(*args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)
    trained = []
    for run, global_seed in (("a", 123), ("b", 456)):  # the global RNG differs; the run's seed does not
        torch.manual_seed(global_seed)
        (tmp_path / run).mkdir()
        params = {k: v.clone().requires_grad_() for k, v in start.items()}
        pretrain.pretrain_body(model, params, classes, classes.spec, epochs=2, rundir=str(tmp_path / run), seed=5,
                               device="cpu", lr=1e-2, batch_size=16, quiet=True, smoothing=0.1, schedule="cosine")
        trained.append(load_checkpoint(str(tmp_path / run / "pretrain.npz")).params)
    total = 2 * 3
    want = [1e-2 * 0.5 * (1 + math.cos(math.pi * b / total)) for b in range(total)]  # annealed to 0 over both epochs
    assert lrs[:total] == pytest.approx(want, rel=1e-12, abs=0)
    assert smoothing == [0.1] * (2 * total)
    assert trained[0].keys() == trained[1].keys()
    assert all(np.array_equal(trained[0][k], trained[1][k]) for k in trained[0])  # head "w", "b" included


def test_cli_flags(tmp_path, capsys):
    import json

    from test_outputs import one_error, run_cli

    base = ["train", "--iterations", "1", "--width", "8", "--meta-batch", "2", "--query", "2", "--val-tasks", "2",
            "--algorithm", "fomaml", "--device", "cpu", "--quiet"]
    code, _, err = run_cli(capsys, *base, "--batched", "--out", tmp_path / "run")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["batched"] is True
    bundle = tmp_path / "m.fadapt"
    bundle.write_bytes(b"not read: the flag is refused first")
    code, out, err = run_cli(capsys, "evaluate", bundle, "--data", "synthetic", "--no-batched")
    one_error(code, out, err, "--batched/--no-batched apply to run folders")


# --------------------------------------------------------------------------- tasks assembled on the device

def old_task(sampler: TaskSampler, index: int) -> Task:
    """TaskSampler.task as it was before ``choose`` (the reference the task stream must keep)."""
    rng = np.random.default_rng([sampler.seed, index])
    classes = rng.choice(len(sampler.data), size=sampler.ways, replace=False)
    sx, sy, qx, qy = [], [], [], []
    for label, c in enumerate(classes):
        images = sampler.data.images[c]
        pick = rng.choice(len(images), size=sampler.shots + sampler.query, replace=False)
        sx.append(images[pick[: sampler.shots]])
        qx.append(images[pick[sampler.shots:]])
        sy += [label] * sampler.shots
        qy += [label] * sampler.query
    return Task(np.concatenate(sx), np.asarray(sy, np.int64), np.concatenate(qx), np.asarray(qy, np.int64), classes)


def random_classes(channels: int, seed: int = 0, side: int = 8) -> ImageClasses:
    rng = np.random.default_rng(seed)
    counts = [5, 7, 6, 9, 5, 8]  # unbalanced: each class's offset in the device copy matters
    images = [rng.integers(0, 256, (n, channels, side, side), dtype=np.uint8) for n in counts]
    spec = Preprocess(size=side, channels=channels, mean=(0.2, 0.5, 0.1)[:channels], std=(0.7, 0.3, 1.1)[:channels])
    return ImageClasses([f"c{i}" for i in range(len(counts))], images, spec)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
def test_device_tasks_are_the_samplers_tasks(device, channels):
    data = random_classes(channels)
    sampler = TaskSampler(data, ways=4, shots=2, query=3, seed=7)
    preprocess = data.spec
    indices = [0, 1, 5, 1234, 99]
    tasks = DeviceTasks(sampler, preprocess, device).tasks(indices)
    for i, got in zip(indices, tasks):
        before = old_task(sampler, i)
        now = sampler.task(i)
        for f in ("support_x", "support_y", "query_x", "query_y", "classes"):
            assert np.array_equal(getattr(now, f), getattr(before, f)), f  # the same task stream as before
        expected = to_tensors(before, preprocess, "cpu", sampler.ways)
        assert got.ways == expected.ways and got.support_x.device.type == torch.device(device).type
        for f in ("support_y", "query_y"):
            assert torch.equal(getattr(got, f).cpu(), getattr(expected, f)), f
        for f in ("support_x", "query_x"):  # the same float32 operations: equal to rounding at most
            a, b = getattr(got, f).cpu(), getattr(expected, f)
            assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
            assert (a - b).abs().max().item() <= 2 * EPS32 * b.abs().max().item(), f
    assert np.array_equal(to_float(old_task(sampler, 3).query_x, preprocess),
                          DeviceTasks(sampler, preprocess, "cpu").tasks([3])[0].query_x.numpy())


def test_a_tasks_support_and_query_get_their_own_distortions():
    """Guards one augmentation key for both halves of a task (run_setup.DeviceTasks: the draws keyed by (seed, 9,
    task, half)): with as many support as query images, image k of the query would get image k of the support's
    distortion. Every image is the same, so the halves differ only by their distortions."""
    base = np.random.default_rng(0).integers(0, 256, (1, 1, 16, 16), dtype=np.uint8)
    spec = Preprocess(size=16, channels=1)
    data = ImageClasses([f"c{i}" for i in range(4)], [np.repeat(base, 6, 0) for _ in range(4)], spec)
    sampler = TaskSampler(data, ways=3, shots=2, query=2, seed=4)
    plain = DeviceTasks(sampler, spec, "cpu").tasks([0])[0]
    assert torch.equal(plain.support_x, plain.query_x)
    augmented = DeviceTasks(sampler, spec, "cpu", "affine").tasks([0])[0]
    assert not torch.equal(augmented.support_x, augmented.query_x)


# --------------------------------------------------------------------------- batched evaluation

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm,transductive", [("instance", False), ("layer", False), ("batch", True)])
def test_batched_evaluation_equals_the_loop(one_thread, device, norm, transductive):
    from fastadapt.meta_train.evaluate import adapt_and_predict, adapt_and_predict_tasks

    c = TrainConfig(algorithm="fomaml", head_init="prototype", norm=norm, **CLASSIFICATION)
    outs = {}
    for dtype in (torch.float32, torch.float64):
        model, params, recipe, batches = setup(c, device, dtype, tasks=4)
        loop = torch.stack([adapt_and_predict(model, params, recipe, b, 3, None, norm, transductive) for b in batches])
        outs[dtype] = (loop, adapt_and_predict_tasks(model, params, recipe, batches, 3, None))
    exact = outs[torch.float64][0]
    assert torch.allclose(outs[torch.float64][1], exact, rtol=0, atol=1e3 * torch.finfo(torch.float64).eps
                          * exact.abs().max().item())
    loop, vec = outs[torch.float32]
    assert_float32_close(vec, loop, exact)


def test_non_transductive_batch_norm_predicts_each_query_with_the_support_set(one_thread):
    """--norm batch, not transductive: query i is normalised together with the support set alone, so its
    outputs are its row of forward(query i + support set), in any order (batch statistics are
    permutation-equivariant). Guards predicting every query from another row (a support image's)."""
    from fastadapt.meta_train.evaluate import predict_queries
    from fastadapt.meta_train.inner_loop import forward

    c = TrainConfig(algorithm="fomaml", head_init="prototype", norm="batch", **CLASSIFICATION)
    model, params, _, (batch,) = setup(c, "cpu", torch.float64, tasks=1)
    params = {k: v.detach() for k, v in params.items()}
    params["head.weight"] = torch.randn(c.ways, model.feature_dim, generator=torch.Generator().manual_seed(5),
                                        dtype=torch.float64)  # a non-zero head: outputs that tell rows apart
    params["head.bias"] = torch.zeros(c.ways, dtype=torch.float64)
    got = predict_queries(model, params, batch, "batch", transductive=False)
    with torch.no_grad():
        want = torch.stack([forward(model, params, torch.cat([q[None], batch.support_x]))[0] for q in batch.query_x])
        transductive = forward(model, params, batch.query_x)
    tol = 1e3 * torch.finfo(torch.float64).eps * want.abs().max().item()
    assert got.shape == want.shape and torch.allclose(got, want, rtol=0, atol=tol)
    assert (transductive - want).abs().max() > 1e-3  # the statistics differ: the test can tell them apart


def test_evaluate_classification_batched_gives_the_loops_predictions(one_thread, monkeypatch):
    """Tasks from the sampler (through DeviceTasks), chunks of EVAL_CHUNK with a short last one: the same
    predictions (the test above bounds the outputs' difference), except on near ties, which another CPU's
    rounding may flip: labels are compared on the queries ``numerics.decided`` keeps, with the float32 logit
    error bounded as above (from the loop's own float32 error against float64)."""
    import fastadapt.meta_train.evaluate as ev
    from numerics import recorded_predictions

    data = random_classes(1, side=16)
    sampler = TaskSampler(data, ways=3, shots=2, query=3, seed=3)
    c = TrainConfig(algorithm="fomaml", head_init="prototype", width=4, image_size=16, ways=3, shots=2, query=3)
    model, params, recipe, _ = setup(c, "cpu", torch.float32, tasks=0)
    model64, params64, _, _ = setup(c, "cpu", torch.float64, tasks=0)
    kw = dict(tasks=20, steps=2, norm="instance")
    predictions = recorded_predictions(monkeypatch, ev)
    loop = ev.evaluate_classification(model, params, recipe, sampler, data.spec, "cpu", **kw)
    vec = ev.evaluate_classification(model, params, recipe, sampler, data.spec, "cpu", batched=True, **kw)
    loop_labels, vec_labels = np.stack(predictions[:20]), np.stack(predictions[20:])
    logits32, logits64 = [], []
    for i in range(20):
        b = to_tensors(sampler.task(i), data.spec, "cpu", 3)
        b64 = TaskTensors(b.support_x.double(), b.support_y, b.query_x.double(), b.query_y, b.ways)
        logits32.append(ev.adapt_and_predict(model, params, recipe, b, 2, None, "instance", False).double())
        logits64.append(ev.adapt_and_predict(model64, params64, recipe, b64, 2, None, "instance", False))
    logits32, logits64 = torch.stack(logits32), torch.stack(logits64)
    noise, size = (logits32 - logits64).abs().max().item(), logits64.abs().max().item()
    keep = decided(logits64, float32_bound(noise, size))
    exact_labels = logits64.argmax(-1).numpy()
    assert np.array_equal(loop_labels[keep], exact_labels[keep])
    assert np.array_equal(vec_labels[keep], exact_labels[keep])
    left_out = (~keep).sum(1) / keep.shape[1]  # per task: each query left out may move its accuracy by 1/query
    assert np.all(np.abs(np.subtract(vec["per_task_accuracy"], loop["per_task_accuracy"])) <= left_out + 1e-12)
    assert len(set(loop["per_task_accuracy"])) > 1  # not a degenerate constant answer
    statistics = ("per_task_accuracy", "accuracy_pct", "ci95_pct")  # derived from the per-task accuracies
    assert {k: v for k, v in vec.items() if k not in statistics} == \
        {k: v for k, v in loop.items() if k not in statistics}


def test_tf32_is_opt_in_and_recorded(tmp_path):
    """CUDA precision follows --tf32 (default off: true float32); on a CPU the flag changes nothing."""
    c = TrainConfig.from_dict({**TrainConfig().to_dict(), "tf32": True})
    assert c.tf32 is True and TrainConfig().tf32 is False
    before = torch.backends.cudnn.allow_tf32
    try:
        from fastadapt.meta_train.run_setup import cuda_precision

        cuda_precision(True)
        assert torch.backends.cudnn.allow_tf32 is True
        cuda_precision(False)
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"),
                                   RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")], ids=["torch", "cudnn"])
def test_out_of_memory_task_by_task_is_one_line_naming_the_flags(tmp_path, monkeypatch, error):
    """The per-task loop has no smaller chunk to retry with: the run stops with the flags that shrink a task."""
    import fastadapt.meta_train.trainer as trainer

    def no_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(trainer, "meta_gradient", no_memory)
    c = TrainConfig(data="synthetic", algorithm="fomaml", width=4, meta_batch=2, query=2, iterations=2, val_tasks=2,
                    inner_steps=1, device="cpu")
    with pytest.raises(FastadaptError, match="out of GPU memory at iteration 1 with one task at a time: lower --ways"):
        trainer.train(c, str(tmp_path / "run"), quiet=True)


@pytest.mark.parametrize("stride, padding, dilation, bias", [(1, 1, 1, True), (2, 0, 1, False), (1, 2, 2, True)])
def test_conv_as_matrix_product_is_the_grouped_convolution(stride, padding, dilation, bias):
    """The GPU candidate (task_batched.CONV_AS_MATRIX_PRODUCT): im2col + one batched matrix product over tasks
    computes the grouped convolution, task by task, with their own kernels (float64: only the order of sums differs)."""
    from fastadapt.meta_train.task_batched import _conv_as_matrix_product

    g = torch.Generator().manual_seed(0)
    tasks, n, channels, out = 3, 4, 5, 6
    x = torch.randn(n, tasks * channels, 9, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(tasks, out, channels, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(tasks, out, generator=g, dtype=torch.float64) if bias else None
    pair = lambda v: (v, v)  # noqa: E731  (nn.Conv2d keeps them as pairs)
    got = _conv_as_matrix_product(x, weight, b, pair(stride), pair(padding), pair(dilation))
    for t in range(tasks):  # each task's output channels: its own images and kernels
        expected = torch.nn.functional.conv2d(x[:, t * channels:(t + 1) * channels], weight[t],
                                              None if b is None else b[t], stride, padding, dilation)
        torch.testing.assert_close(got[:, t * out:(t + 1) * out], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_meta_gradient_with_convolutions_as_matrix_products_is_the_same(one_thread, monkeypatch, algorithm):
    """The whole batched meta-gradient (second order for MAML) is the same with either convolution (float64)."""
    import fastadapt.meta_train.task_batched as tb

    c = TrainConfig(algorithm=algorithm, head_init="prototype", **CLASSIFICATION)
    model, params, recipe, tasks = setup(c, "cpu", torch.float64)
    grouped = meta_gradient(algorithm, model, params, tasks, recipe, vectorize=True)
    monkeypatch.setattr(tb, "CONV_AS_MATRIX_PRODUCT", True)
    calls, real = [], tb._conv_as_matrix_product
    monkeypatch.setattr(tb, "_conv_as_matrix_product", lambda *a: calls.append(1) or real(*a))
    product = meta_gradient(algorithm, model, params, tasks, recipe, vectorize=True)
    assert calls  # the matrix products really ran
    for k in grouped[0]:
        torch.testing.assert_close(product[0][k], grouped[0][k], rtol=1e-9, atol=1e-12)
    assert abs(product[1] - grouped[1]) <= 1e-12 * max(1.0, abs(grouped[1]))
