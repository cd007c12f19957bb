"""Export: the ONNX step graph is the torch inner loop (parity, dynamic shapes), refusals, bundle I/O."""

import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from fastadapt.bundle import read_bundle  # noqa: E402
from fastadapt.errors import FastadaptError  # noqa: E402
from fastadapt.images import Preprocess  # noqa: E402
from fastadapt.meta_train import bundle_export, verification  # noqa: E402
from fastadapt.meta_train import inner_loop as il  # noqa: E402
from fastadapt.meta_train import onnx_rewrites as rw  # noqa: E402
from fastadapt.meta_train.tracing import build_graphs  # noqa: E402
from fastadapt.models import ModelSpec, build_model  # noqa: E402
from numerics import EPS32, assert_float32_close  # noqa: E402

aten = torch.ops.aten

SPEC = ModelSpec(width=16)


def _model_and_params(spec=SPEC):
    torch.manual_seed(0)
    model = build_model(spec)
    return model, il.body_params({k: v.detach() for k, v in model.named_parameters()})


@pytest.fixture(scope="module", params=["all", "head"])
def exported(request):
    """Graphs built once per adapted subset; the head initialisation is not part of the graphs."""
    model, params = _model_and_params()
    recipe = il.InnerLoop(adapt=request.param, steps=3, lr=0.4)
    forward_bytes, step_bytes = build_graphs(model, SPEC, recipe, params)
    return model, params, recipe, forward_bytes, step_bytes


def _float64(model, params: dict) -> tuple:
    """The same network and parameters in float64: the reference the float32 paths are measured against."""
    return copy.deepcopy(model).double(), {k: v.detach().double() for k, v in params.items()}


def _in_memory(exported, recipe):
    model, params, _, forward_bytes, step_bytes = exported
    return bundle_export.meta_bundle(model, SPEC, recipe, params, forward_bytes, step_bytes, Preprocess(), {}, [])


@pytest.mark.parametrize("head_init, head_scale", [("zero", 1.0), ("prototype", 1.0), ("prototype", 0.1)])
def test_three_steps_match_torch(exported, head_init, head_scale):
    model, _, recipe, _, _ = exported
    recipe = il.InnerLoop(adapt=recipe.adapt, head_init=head_init, head_scale=head_scale, steps=3, lr=0.4)
    assert verification.verify(_in_memory(exported, recipe), model, steps=3) <= 1e-4


def test_head_scale_multiplies_the_prototype_head_in_torch_and_the_runtime(exported):
    """Both heads scale by head_scale (so the parity above covers a scaled head, not an ignored scale), and the
    bundle says format version 2 exactly when it needs it."""
    from fastadapt.runtime import Model
    from fastadapt.runtime.head import init_head

    model, params, recipe, _, _ = exported
    support_x, support_y, _ = verification.sample_task((1, 28, 28))
    heads = {}
    for scale in (1.0, 0.1):
        scaled = il.InnerLoop(adapt=recipe.adapt, head_init="prototype", head_scale=scale, steps=3, lr=0.4)
        bundle = _in_memory(exported, scaled)
        runtime = Model(bundle)
        heads[scale] = (il.init_head(model, params, support_x, support_y, 5, scaled),
                        init_head(bundle.manifest, runtime.params, runtime.graphs, support_x.numpy(), support_y.numpy(), 5, "t"))
    for name in il.HEAD:
        torch_1, torch_01 = heads[1.0][0][name].numpy(), heads[0.1][0][name].numpy()
        runtime_1, runtime_01 = heads[1.0][1][name], heads[0.1][1][name]
        assert np.abs(torch_1).max() > 0 and not np.allclose(torch_01, torch_1)
        np.testing.assert_allclose(torch_01, 0.1 * torch_1, rtol=1e-6, atol=0)
        np.testing.assert_allclose(runtime_01, 0.1 * runtime_1, rtol=1e-6, atol=0)


@pytest.mark.parametrize("head_scale, version", [(1.0, 1), (0.1, 2)])
def test_format_version_is_the_lowest_that_describes_the_bundle(exported, tmp_path, head_scale, version):
    model, _, recipe, _, _ = exported
    scaled = il.InnerLoop(adapt=recipe.adapt, head_init="prototype", head_scale=head_scale, steps=3, lr=0.4)
    path = tmp_path / "b.fadapt"
    from fastadapt.bundle import save_bundle

    save_bundle(str(path), _in_memory(exported, scaled))
    manifest = read_bundle(str(path)).manifest
    assert manifest["format_version"] == version and manifest["inner_loop"]["head_scale"] == head_scale


def test_head_scale_needs_a_prototype_head():
    with pytest.raises(ValueError, match="head_scale"):
        il.InnerLoop(head_init="zero", head_scale=0.5)
    with pytest.raises(ValueError, match="head_scale"):
        il.InnerLoop(head_init="prototype", head_scale=0.0)
    assert il.InnerLoop.from_dict({"steps": 1, "lr": 0.1, "adapt": "all", "loss": "cross_entropy",
                                   "head_init": "prototype"}).head_scale == 1.0  # bundles from before the field


def test_verify_adapts_through_the_runtime(exported, monkeypatch):
    """The graphs are checked through the shipped adaptation code, not a copy of it."""
    from fastadapt.runtime import Model

    model, _, recipe, _, _ = exported
    calls = []
    adapt_arrays = Model.adapt_arrays
    monkeypatch.setattr(Model, "adapt_arrays", lambda self, *a, **k: calls.append(k) or adapt_arrays(self, *a, **k))
    verification.verify(_in_memory(exported, recipe), model, steps=2)
    # (0 steps: the runtime's head initialisation, called directly; adapt refuses 0 steps of a zero head)
    assert calls == [{"steps": t, "safeguard": False, "quiet": True, "colour": "off"} for t in range(1, 3)]


def test_a_runtime_failure_is_a_verification_failure(exported):
    model, _, recipe, _, _ = exported
    bundle = _in_memory(exported, recipe)
    first = next(iter(bundle.params))
    bundle.params[first] = np.full_like(bundle.params[first], np.nan)
    with pytest.raises(FastadaptError, match="verification failed: the runtime could not adapt .*not finite"):
        verification.verify(bundle, model, steps=3)


def test_graph_signatures(exported):
    _, params, recipe, forward_bytes, step_bytes = exported
    names = list(params) + ["head.weight", "head.bias"]
    forward, step = ort.InferenceSession(forward_bytes), ort.InferenceSession(step_bytes)
    assert [i.name for i in forward.get_inputs()] == ["images"] + names
    assert [o.name for o in forward.get_outputs()] == ["logits", "features"]
    assert [i.name for i in step.get_inputs()] == ["images", "labels", "lr"] + names
    adapted = names if recipe.adapt == "all" else ["head.weight", "head.bias"]
    assert [o.name for o in step.get_outputs()] == ["loss"] + [f"new.{k}" for k in adapted]


@pytest.mark.parametrize("counts", [[5] * 5, [2] * 3, [1] * 12, [5] * 20, [1] * 50, [1, 4, 2, 7]],
                         ids=["5x5", "3x2", "12x1", "20x5", "50x1", "unbalanced"])
def test_dynamic_images_and_classes(exported, counts):
    model, params, recipe, forward_bytes, step_bytes = exported
    ways = len(counts)
    gen = torch.Generator().manual_seed(len(counts) + sum(counts))
    labels = torch.arange(ways).repeat_interleave(torch.tensor(counts))
    images = torch.randn(len(labels), SPEC.channels, SPEC.image_size, SPEC.image_size, generator=gen)
    current = {**params, "head.weight": 0.1 * torch.randn(ways, model.feature_dim, generator=gen),
               "head.bias": 0.1 * torch.randn(ways, generator=gen)}
    feed = {"images": images.numpy(), "labels": labels.numpy(), "lr": np.asarray(0.4, np.float32),
            **{k: v.numpy() for k, v in current.items()}}
    loss, *new = ort.InferenceSession(step_bytes).run(None, feed)
    # onnxruntime against float64, by tests/numerics.py's rule: 4x torch's own float32 error plus 8 ulps of the
    # values' size (instance norm over the last 3x3 maps amplifies rounding, by an amount that depends on the CPU)
    model64, current64 = _float64(model, current)
    names = recipe.adapted_names(current)
    expected = il.sgd_step(model, current, images, labels, recipe, 0.4, first_order=True)
    expected64 = il.sgd_step(model64, current64, images.double(), labels, recipe, 0.4, first_order=True)
    assert [value.shape for value in new] == [tuple(current[name].shape) for name in names]
    assert_float32_close(dict(zip(names, new)), expected, {k: expected64[k] for k in names}, what="new ")
    feed.pop("labels"), feed.pop("lr")
    logits, features = ort.InferenceSession(forward_bytes).run(None, feed)
    assert logits.shape == (len(labels), ways) and features.shape == (len(labels), model.feature_dim)
    with torch.no_grad():
        logit_bound = assert_float32_close(logits, il.forward(model, current, images),
                                           il.forward(model64, current64, images.double()), what="logits")
        loss64 = float(il.task_loss(model64, current64, images.double(), labels, "cross_entropy"))
    # the step's loss is the mean cross-entropy of these logits, which moves by at most 2 max|logit change| (the
    # label's logit and the log-sum-exp each by at most max|change|), plus its own rounding
    assert abs(float(loss) - loss64) <= 2 * logit_bound + 8 * EPS32 * abs(loss64)


def test_step_graph_uses_its_lr_input(exported):
    """Guards a step graph that bakes the recipe's rate in and ignores its ``lr`` input (every other test feeds the
    recipe's 0.4, so it would pass). lr 0: the parameters come back exactly (p - 0 * g is p in float32); lr 0.1:
    the torch step at 0.1, against float64 by tests/numerics.py's rule."""
    model, params, recipe, _, step_bytes = exported
    gen = torch.Generator().manual_seed(3)
    labels = torch.arange(4).repeat_interleave(2)
    images = torch.randn(len(labels), SPEC.channels, SPEC.image_size, SPEC.image_size, generator=gen)
    current = {**params, "head.weight": 0.1 * torch.randn(4, model.feature_dim, generator=gen),
               "head.bias": 0.1 * torch.randn(4, generator=gen)}
    names = recipe.adapted_names(current)
    session = ort.InferenceSession(step_bytes)
    feed = {"images": images.numpy(), "labels": labels.numpy(), **{k: v.numpy() for k, v in current.items()}}
    _, *same = session.run(None, {**feed, "lr": np.asarray(0.0, np.float32)})
    for name, value in zip(names, same):
        assert np.array_equal(value, current[name].numpy()), name
    _, *new = session.run(None, {**feed, "lr": np.asarray(0.1, np.float32)})
    model64, current64 = _float64(model, current)
    expected = il.sgd_step(model, current, images, labels, recipe, 0.1, first_order=True)
    expected64 = il.sgd_step(model64, current64, images.double(), labels, recipe, 0.1, first_order=True)
    assert_float32_close(dict(zip(names, new)), expected, {k: expected64[k] for k in names}, what="new ")


def test_forward_with_one_row_head(exported):
    """The runtime reads features through a dummy one-row head: onnxruntime's features against float64 by
    tests/numerics.py's rule (as above)."""
    model, params, _, forward_bytes, _ = exported
    images = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    feed = {"images": images.numpy(), **{k: v.numpy() for k, v in params.items()},
            "head.weight": np.zeros((1, model.feature_dim), np.float32), "head.bias": np.zeros(1, np.float32)}
    _, features = ort.InferenceSession(forward_bytes).run(None, feed)
    model64, params64 = _float64(model, params)
    with torch.no_grad():
        assert_float32_close(features, il.features(model, params, images),
                             il.features(model64, params64, images.double()), what="features")


@pytest.mark.parametrize("spec,recipe", [
    (ModelSpec(width=16, norm="batch"), il.InnerLoop()),
    (ModelSpec(width=16), il.InnerLoop(loss="mse")),
    (ModelSpec(name="mlp"), il.InnerLoop(loss="mse", head_init="learned")),
    (ModelSpec(width=16), il.InnerLoop(head_init="learned")),
], ids=["batch-norm", "mse", "mlp", "learned-head"])
def test_refuses_unsupported(tmp_path, spec, recipe):
    """A learned head is regression's (--data sinusoid), whose runs 'fastadapt export' refuses first."""
    model, params = _model_and_params(spec)
    out = tmp_path / "m.fadapt"
    what = "head_init 'zero' or 'prototype'" if recipe.head_init == "learned" and spec.name == "conv4" else \
        "export supports Conv4 or ResNet-12 classification with per-sample norm"
    with pytest.raises(FastadaptError, match=what):
        bundle_export.export_bundle(out, model, spec, recipe, params, Preprocess(), {}, [])
    assert not out.exists()


def _cached_graphs(monkeypatch, exported):
    model, params, recipe, forward_bytes, step_bytes = exported
    monkeypatch.setattr(bundle_export, "build_graphs", lambda *args, **kwargs: (forward_bytes, step_bytes))
    return model, params, recipe


def test_bundle_round_trip(tmp_path, monkeypatch, exported):
    model, params, recipe = _cached_graphs(monkeypatch, exported)
    recipe = il.InnerLoop(adapt=recipe.adapt, head_init="prototype", steps=3, lr=0.4)
    with_head = {**params, "head.weight": torch.zeros(5, model.feature_dim), "head.bias": torch.zeros(5)}
    out = tmp_path / "m.fadapt"
    manifest = bundle_export.export_bundle(out, model, SPEC, recipe, with_head, Preprocess(), {"algorithm": "fomaml"},
                                [{"ways": 5, "shots": 1, "accuracy": 0.9}])
    bundle = read_bundle(out)
    assert bundle.manifest == manifest
    assert manifest["kind"] == "meta" and manifest["classes"] is None
    assert manifest["architecture"]["feature_dim"] == model.feature_dim
    assert manifest["architecture"]["width"] == 16
    assert manifest["preprocess"] == Preprocess().to_dict()
    assert manifest["inner_loop"]["head_init"] == "prototype"
    assert manifest["inner_loop"]["adapted"] == recipe.adapted_names(with_head)
    assert manifest["verification"]["steps"] == 3 and manifest["verification"]["max_abs_diff"] <= 1e-4
    assert list(bundle.params) == list(params)  # no head: the runtime creates it per task
    for k, v in params.items():
        np.testing.assert_array_equal(bundle.params[k], v.numpy())


def test_bundle_records_the_steps_it_verified_and_the_runs_provenance(tmp_path, monkeypatch, exported):
    # guards against the manifest claiming the recipe's step count when verification ran another (export with
    # --eval-inner-steps, or steps=1 to save time), and against dropping what the run said about itself
    model, params, recipe = _cached_graphs(monkeypatch, exported)
    provenance, evaluation = {"algorithm": "fomaml", "seed": 7}, [{"ways": 5, "shots": 1, "accuracy": 0.9}]
    out = tmp_path / "m.fadapt"
    manifest = bundle_export.export_bundle(out, model, SPEC, recipe, params, Preprocess(), provenance, evaluation,
                                           steps=1)
    assert recipe.steps == 3 and manifest["inner_loop"]["steps"] == 3  # the device still adapts with 3
    assert manifest["verification"]["steps"] == 1
    assert manifest["provenance"] == provenance and manifest["evaluation"] == evaluation
    assert read_bundle(out).manifest == manifest


def test_failed_verification_writes_nothing(tmp_path, monkeypatch, exported):
    model, params, recipe = _cached_graphs(monkeypatch, exported)
    monkeypatch.setattr(verification, "agrees", lambda *args: False)  # no difference can pass
    monkeypatch.setattr(verification, "within_rounding", lambda *args: False)
    out = tmp_path / "m.fadapt"
    with pytest.raises(FastadaptError, match="verification failed: at SGD step 0 of 3"):
        bundle_export.export_bundle(out, model, SPEC, recipe, params, Preprocess(), {}, [])
    assert not out.exists()


def test_verify_falls_back_to_float64_only_within_rounding(exported, monkeypatch):
    """Where agrees() fails (an ill-conditioned recipe on another CPU), a correct bundle still passes on the
    float64 reference, and a wrong step graph still fails."""
    model, _, recipe, _, _ = exported
    monkeypatch.setattr(verification, "agrees", lambda *args: False)  # every comparison goes to float64
    for head_init in ("zero", "prototype"):
        right = il.InnerLoop(adapt=recipe.adapt, head_init=head_init, steps=3, lr=0.4)
        verification.verify(_in_memory(exported, right), model, steps=3)
    if recipe.adapt == "head":
        wrong = il.InnerLoop(adapt="all", head_init="prototype", steps=3, lr=0.4)
        with pytest.raises(FastadaptError, match="at SGD step 1 of 3 .*float64 reference"):
            verification.verify(_in_memory(exported, wrong), model, steps=3)


def test_within_rounding_is_relative_to_torchs_own_float32_error():
    exact = np.linspace(-3, 3, 50)
    torch32 = exact + 1e-3  # an ill-conditioned computation: torch's float32 itself is 1e-3 off
    assert verification.within_rounding(exact - 3e-3, torch32, exact)
    assert not verification.within_rounding(exact + 5e-3, torch32, exact)  # farther than 4x torch's error
    assert not verification.within_rounding(exact + 1e-4, exact, exact)  # torch exact: only ulps allowed


def test_verify_catches_a_wrong_step_graph(exported):
    """A graph that leaves the body unchanged is not the 'all' inner loop, even on an ill-conditioned task."""
    model, _, recipe, _, _ = exported
    if recipe.adapt != "head":
        pytest.skip("needs the head-only graph")
    wrong = il.InnerLoop(adapt="all", head_init="prototype", steps=3, lr=0.4)
    with pytest.raises(FastadaptError, match="verification failed: at SGD step 1 of 3"):
        verification.verify(_in_memory(exported, wrong), model, steps=3)


@pytest.mark.parametrize("exported", ["all"], indirect=True)  # one tracing: the forward graph is the same for both
def test_verify_catches_a_wrong_forward_graph(exported, monkeypatch):
    """The step graphs are right but the forward graph's logits are not torch's (here shifted by 5% of their
    size, 500x the tolerance): verification must compare the runtime's logits with torch's, not torch's with
    themselves."""
    from fastadapt.runtime.sessions import Graphs

    model, _, recipe, _, _ = exported
    forward = Graphs.forward

    def wrong_logits(self, images, params):
        logits, features = forward(self, images, params)
        return logits + 0.05 * max(1.0, float(np.abs(logits).max())), features

    bundle = _in_memory(exported, recipe)
    verification.verify(bundle, model, steps=2)  # the right graphs pass
    monkeypatch.setattr(Graphs, "forward", wrong_logits)
    with pytest.raises(FastadaptError, match="verification failed: after 2 SGD steps .* logits differ"):
        verification.verify(bundle, model, steps=2)


def test_a_run_validates_and_exports_with_its_eval_inner_steps(tmp_path, monkeypatch, one_thread):
    """Trained with 1 inner step and --eval-inner-steps 3: validation adapts with 3 steps and the bundle's recipe
    has 3 (the device adapts as the model was evaluated; MAML trains with 1 and tests with 3). Guards the training
    step count leaking into either. (export_bundle, which traces and verifies, is recorded, not run.)"""
    import inspect

    import fastadapt.meta_train.export_run as export_run
    import fastadapt.meta_train.trainer as trainer
    from fastadapt.meta_train.run import TrainConfig

    validated, exported, evaluate = [], [], trainer.evaluate_classification

    def validation(*args, **kwargs):
        validated.append(inspect.signature(evaluate).bind(*args, **kwargs).arguments["steps"])
        return evaluate(*args, **kwargs)

    def export(*args, **kwargs):
        exported.append(inspect.signature(bundle_export.export_bundle).bind(*args, **kwargs).arguments["recipe"])
        return {}

    monkeypatch.setattr(trainer, "evaluate_classification", validation)
    monkeypatch.setattr(export_run, "export_bundle", export)
    run = tmp_path / "run"
    trainer.train(TrainConfig(data="synthetic", algorithm="fomaml", width=8, meta_batch=2, query=2, val_tasks=4,
                              iterations=1, inner_steps=1, eval_inner_steps=3), str(run), quiet=True)
    export_run.export_run(str(run), str(tmp_path / "m.fadapt"))
    assert validated == [3]
    assert [recipe.steps for recipe in exported] == [3]


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 3, 7, 7), (1, 2, 3, 3), (2, 2, 6, 5)])
def test_pool_decompositions_equal_torch_with_ties_and_odd_sizes(shape):
    """Ties are common in Omniglot's flat backgrounds: the gradient must go to torch's (first) maximum."""
    torch.manual_seed(0)
    x = torch.randn(*shape).round(decimals=1)
    x[:, :, :4, :4] = 0.5  # a flat region: four-way ties
    values, indices = aten.max_pool2d_with_indices(x, [2, 2], [2, 2])
    ours = rw._max_pool2d_with_indices(x, [2, 2], [2, 2])
    assert torch.equal(ours[0], values) and torch.equal(ours[1], indices)
    grad = torch.randn_like(values)
    expected = aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)
    assert torch.equal(rw._max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices),
                       expected)
    with pytest.raises(FastadaptError, match="2x2, stride-2 max pooling"):
        rw._max_pool2d_with_indices(x, [3, 3], [2, 2])


def test_conv_and_relu_backward_decompositions_equal_torch():
    torch.manual_seed(0)
    x, weight, grad = torch.randn(3, 4, 9, 9), torch.randn(5, 4, 3, 3), torch.randn(3, 5, 9, 9)
    expected = aten.convolution_backward(grad, x, weight, [5], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                         [True, True, True])
    ours = rw._conv_backward(grad, x, weight, [5], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, True])
    # Entry by entry: each gradient entry is a float32 sum of K products (grad_input: 5 output channels x 3x3 taps;
    # grad_weight and grad_bias: 3 images x 9x9 positions), rounded off the exact sum by at most K u sum|terms|
    # (u = eps/2), and by ~sqrt(K) u sum|terms| when the rounding errors add like a random walk (Higham & Mary
    # 2019), in whatever order a CPU's kernels sum. Both sides round: 4 sqrt(K) eps sum|terms| allows each 4 such.
    # sum|terms| per entry is the same backward on absolute values. (A dropped term is off by ~sum|terms|/K.)
    magnitudes = aten.convolution_backward(grad.abs(), x.abs(), weight.abs(), [5], [1, 1], [1, 1], [1, 1], False,
                                           [0, 0], 1, [True, True, True])
    for a, b, magnitude, terms in zip(ours, expected, magnitudes, (5 * 3 * 3, 3 * 9 * 9, 3 * 9 * 9)):
        assert a.shape == b.shape
        assert ((a - b).abs() <= 4 * math.sqrt(terms) * EPS32 * magnitude).all()
    out = torch.relu(torch.randn(4, 6))
    torch.testing.assert_close(rw._threshold_backward(grad[0, 0, :4, :6], out, 0),
                               aten.threshold_backward(grad[0, 0, :4, :6], out, 0))


@pytest.mark.parametrize("kernel, padding, dilation", [((3, 3), (0, 0), (1, 1)), ((1, 1), (0, 0), (1, 1)),
                                                       ((3, 3), (2, 2), (2, 2)), ((3, 1), (1, 0), (1, 1))],
                         ids=["unpadded", "1x1-shortcut", "dilated", "asymmetric"])
def test_conv_backward_decomposition_for_other_stride_1_geometries(kernel, padding, dilation):
    """The rewrite is written for any stride-1 ungrouped convolution (ResNet-12's 1x1 shortcut among them), but the
    test above only takes Conv4's 3x3 / padding 1, where padding p and the input gradient's d (k - 1) - p coincide,
    and dilation 1 and symmetric padding hide swapped or ignored dilation / padding. Float64 against torch's own
    backward: the same sums in another order, ~1e-15 relative; a wrong geometry is off by order 1."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 9, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(5, 4, *kernel, generator=g, dtype=torch.float64)
    out_shape = torch.nn.functional.conv2d(x, weight, None, 1, padding, dilation).shape
    grad = torch.randn(out_shape, generator=g, dtype=torch.float64)
    args = ([5], [1, 1], list(padding), list(dilation), False, [0, 0], 1, [True, True, True])
    expected = aten.convolution_backward(grad, x, weight, *args)
    ours = rw._conv_backward(grad, x, weight, *args)
    for a, b in zip(ours, expected):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_pool_rewrite_refuses_ceil_mode():
    """ceil_mode pools a last, partial window that the quarters form drops: refused, never a smaller output."""
    x = torch.randn(1, 1, 5, 5)
    for op in (rw._max_pool2d_with_indices, rw._max_pool2d_with_indices_backward):
        args = (x, [2, 2], [2, 2], [0, 0], [1, 1], True)
        with pytest.raises(FastadaptError):
            op(*args) if op is rw._max_pool2d_with_indices else op(torch.ones(1, 1, 3, 3), *args, None)


def test_the_graph_cache_tells_apart_what_changes_the_step_graph(monkeypatch):
    """build_graphs reuses graphs traced in this process; the step graph differs with the adapted subset and with a
    scalar or per-tensor lr, so each must be traced on its own. Guards a cache key without recipe.adapt (an ANIL
    export after a MAML one would get outputs for every parameter) or without per_tensor_lr (a learned-rates export
    would get a scalar lr input). The tracer is replaced by one that names what it was asked for."""
    from fastadapt.meta_train import tracing

    traced = []

    def fake_trace(graph, model, spec, recipe, params, per_tensor_lr, ways, batch):
        traced.append((graph, recipe.adapt, per_tensor_lr))
        return repr(traced[-1]).encode()

    monkeypatch.setattr(tracing, "_TRACED", {})
    monkeypatch.setattr(tracing, "_trace", fake_trace)
    model, params = _model_and_params()
    cases = [("all", False), ("head", False), ("all", True), ("head", True)]
    steps = [build_graphs(model, SPEC, il.InnerLoop(adapt=adapt), params, per_tensor_lr=per)[1] for adapt, per in cases]
    assert steps == [repr(("step", adapt, per)).encode() for adapt, per in cases]
    assert [t for t in traced if t[0] == "forward"] == [("forward", "all", False)]  # one forward graph serves all
    build_graphs(model, SPEC, il.InnerLoop(adapt="head", lr=0.01, steps=7), params, per_tensor_lr=True)
    assert len(traced) == 5  # the rate's and the steps' values are graph inputs / loops: no new trace


def test_export_run_reads_the_checkpoint_it_is_asked_for(monkeypatch):
    """Guards 'fastadapt export --checkpoint last' exporting the best checkpoint."""
    import fastadapt.meta_train.export_run as export_run

    class Stop(Exception):
        pass

    asked = []

    def load(rundir, checkpoint, device):
        asked.append(checkpoint)
        raise Stop

    monkeypatch.setattr(export_run, "load_meta_params", load)
    for checkpoint in ("last", "best"):
        with pytest.raises(Stop):
            export_run.export_run("somewhere", "m.fadapt", checkpoint=checkpoint)
    assert asked == ["last", "best"]
