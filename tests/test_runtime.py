"""The torch-free runtime: adapt/predict/save through onnxruntime, equal to the torch inner loop."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastadapt
from fastadapt.errors import FastadaptError
from fastadapt.images import Preprocess, preprocess

from conftest import LR, ROOT, STEPS, glyph_images

TORCH_BLOCKER = '''
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name.startswith("torchvision"):
            raise ImportError(f"torch is blocked in this test (tried to import {name})")
        return None

sys.meta_path.insert(0, NoTorch())
'''


def test_runtime_never_imports_torch(bundles, glyphs, tmp_path):
    """load -> adapt -> predict -> save -> reload -> predict, and the CLI, with torch unimportable."""
    script = TORCH_BLOCKER + textwrap.dedent(f'''
        import json, sys
        import fastadapt
        from fastadapt.cli import app          # registers every command: none may import torch eagerly
        model = fastadapt.load({bundles["prototype"]!r})
        adapted = model.adapt({glyphs["shots"]!r})
        one = adapted.predict({os.path.join(glyphs["queries"], "class00", "0.png")!r}, top=3)
        adapted.save({str(tmp_path / "adapted.fadapt")!r})
        again = fastadapt.load({str(tmp_path / "adapted.fadapt")!r})
        two = again.predict({os.path.join(glyphs["queries"], "class00", "0.png")!r}, top=3)
        assert type(again).__name__ == "AdaptedModel", type(again)
        assert one.label == two.label and abs(one.probability - two.probability) < 1e-6
        sys.argv = ["fastadapt", "predict", "--model", {str(tmp_path / "adapted.fadapt")!r},
                    {glyphs["queries"]!r}, "--json"]
        from fastadapt.cli import main
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        print("TORCH-FREE", one.label)
    ''')
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "TORCH-FREE" in done.stdout
    assert len([line for line in done.stdout.splitlines() if line.startswith("{")]) == 10  # 5 classes x 2


def test_import_fastadapt_is_light():
    code = "import sys, fastadapt; assert 'onnxruntime' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": ROOT})


@pytest.mark.parametrize("ways", [2, 5, 20, 50])
def test_any_number_of_classes_and_unbalanced_shots(bundles, ways):
    counts = [1 + (c % 3) for c in range(ways)]  # 1, 2, 3, 1, 2, 3 ... shots per class
    images = glyph_images(ways, counts, seed=ways)
    model = fastadapt.load(bundles["prototype"])
    adapted = model.adapt(images, steps=2)
    assert adapted.classes == list(images)
    assert adapted.params["head.weight"].shape == (ways, 16)
    assert adapted.manifest["adaptation"]["shots_per_class"] == dict(zip(images, counts))
    assert all(np.isfinite(v).all() for v in adapted.params.values())
    result = adapted.predict(images["class00"][0], top=3)
    assert result.label in adapted.classes
    assert len(result.top) == min(3, ways)
    assert [p for _, p in result.top] == sorted((p for _, p in result.top), reverse=True)
    probabilities = adapted.probabilities(preprocess([images["class00"][0]], adapted.preprocess))
    assert probabilities.shape == (1, ways) and abs(probabilities.sum() - 1) < 1e-6


@pytest.mark.parametrize("chunk,threads", [(32, "1"), (3, "1"), (3, "3")],
                         ids=["one-piece", "chunked", "chunked-parallel"])
@pytest.mark.parametrize("head_init", ["zero", "prototype"])
def test_runtime_adapt_equals_torch_inner_loop(bundles, head_init, chunk, threads, monkeypatch):
    """Also when the support set runs through the step graph in chunks (uneven: 10 images by 3),
    one after the other or side by side on threads, and through the forward graph (the prototype head's
    features, the queries' logits) in chunks."""
    torch = pytest.importorskip("torch")
    import fastadapt.runtime.sessions as sessions

    monkeypatch.setattr(sessions, "STEP_CHUNK", chunk)
    monkeypatch.setattr(sessions, "FORWARD_CHUNK", chunk)
    monkeypatch.setenv("FASTADAPT_THREADS", threads)
    from fastadapt.bundle import read_bundle
    from fastadapt.meta_train import inner_loop as il
    from fastadapt.meta_train.verification import agrees
    from fastadapt.models import ModelSpec, build_model

    images = glyph_images(4, [3, 1, 2, 4], seed=7)
    queries = glyph_images(4, 2, seed=7)  # same glyph seeds: new instances of the same classes
    bundle = read_bundle(bundles[head_init])
    spec = ModelSpec.from_dict({k: v for k, v in bundle.manifest["architecture"].items() if k != "feature_dim"})
    recipe = il.InnerLoop.from_dict(bundle.manifest["inner_loop"])
    assert (recipe.steps, recipe.lr, recipe.head_init) == (STEPS, LR, head_init)
    model = build_model(spec)
    meta = {k: torch.from_numpy(v) for k, v in bundle.params.items()}
    pre = Preprocess.from_dict(bundle.manifest["preprocess"])
    x = preprocess([im for items in images.values() for im in items], pre)
    y = np.repeat(np.arange(4), [3, 1, 2, 4])
    qx = preprocess([im for items in queries.values() for im in items], pre)

    # The reference is torch in float64: each float32 implementation's own rounding is then measured
    # against the exact result, with the export verification's rule (relative to the values' size).
    model = model.double()
    meta64 = {k: v.double() for k, v in meta.items()}
    expected = il.adapt(model, meta64, torch.from_numpy(x).double(), torch.from_numpy(y), 4, recipe, first_order=True)
    with torch.no_grad():
        expected_logits = il.forward(model, expected, torch.from_numpy(qx).double()).numpy()
    adapted = fastadapt.load(bundles[head_init]).adapt(images, safeguard=False)
    assert adapted.manifest["adaptation"]["steps"] == STEPS
    assert set(adapted.params) == set(expected)
    for name, value in expected.items():
        assert agrees(adapted.params[name], value.detach().numpy()), name
    logits, _ = adapted.graphs.forward(qx, adapted.params)
    assert agrees(logits, expected_logits), float(np.abs(logits - expected_logits).max())


def test_only_the_step_threads_flush_subnormal_floats():
    """Subnormals made the photos model's SGD steps 4x slower. The step threads flush them to zero; the
    caller's thread (the host program's arithmetic) must not change. A fresh process: onnxruntime sets the
    mode once, at the process's first session."""
    code = (
        "import numpy as np, fastadapt\n"
        "def kept(): return float(np.array([1e-39], np.float32)[0] * np.float32(1)) != 0\n"
        "model = fastadapt.load('characters')\n"
        "rng = np.random.default_rng(0)\n"
        "size = model.preprocess.size\n"
        "adapted = model.adapt_arrays(rng.random((10, 1, size, size), dtype=np.float32), np.arange(10) % 5, list('abcde'),"
        " steps=2)\n"
        "print(kept(), model.graphs._pool.submit(kept).result())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    caller_kept, step_thread_kept = out.stdout.split()
    assert caller_kept == "True", out.stdout + out.stderr
    if platform.machine().lower() in ("x86_64", "amd64"):  # onnxruntime can flush only on x86 (SSE)
        assert step_thread_kept == "False", out.stdout + out.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_adapts_with_models_loaded_before_and_after_the_fork():
    """A child has none of its parent's threads; the runtime's step threads must not be waited on there."""
    code = textwrap.dedent("""
        import os, signal, numpy as np, fastadapt
        model = fastadapt.load('characters')
        size = model.preprocess.size
        images, labels = np.random.default_rng(0).random((10, 1, size, size), dtype=np.float32), np.arange(10) % 5
        model.adapt_arrays(images, labels, list('abcde'), steps=1)
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)  # a hang fails the test instead of blocking it
            model.adapt_arrays(images, labels, list('abcde'), steps=1)
            fastadapt.load('characters').adapt_arrays(images, labels, list('abcde'), steps=1)
            os._exit(0)
        print(os.waitpid(pid, 0)[1])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stdout + out.stderr


def test_single_image_equals_batch_and_threads(bundles, glyphs):
    adapted = fastadapt.load(bundles["zero"]).adapt(glyphs["shots"], steps=5)
    queries = [im for items in glyphs["images"].values() for im in items[3:]]
    batch = adapted.predict(queries, top=5)
    singles = [adapted.predict(q, top=5) for q in queries]
    assert [r.label for r in batch] == [r.label for r in singles]
    for b, s in zip(batch, singles):
        assert [label for label, _ in b.top] == [label for label, _ in s.top]
        np.testing.assert_allclose([p for _, p in b.top], [p for _, p in s.top], atol=1e-6)
    # reversed order and a different batch composition give the same answers
    assert [r.label for r in adapted.predict(queries[::-1])] == [r.label for r in batch][::-1]
    # many threads predicting at once see the same results (no shared mutable state)
    results, errors = {}, []

    def work(i):
        try:
            results[i] = [r.label for r in adapted.predict(queries)]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and all(v == [r.label for r in batch] for v in results.values())


def test_inputs_paths_pil_and_arrays_agree(bundles, glyphs):
    adapted = fastadapt.load(bundles["zero"]).adapt(glyphs["shots"])
    path = os.path.join(glyphs["queries"], "class02", "0.png")
    from PIL import Image

    image = Image.open(path)
    array = np.asarray(image)
    answers = [adapted.predict(x) for x in (path, image, array)]
    assert len({a.label for a in answers}) == 1
    assert max(a.probability for a in answers) - min(a.probability for a in answers) < 1e-6
    assert adapted.predict([]) == []
    assert answers[0]["label"] == answers[0].label  # dict-style access
    assert set(answers[0].to_dict()) == {"label", "probability", "top", "unknown", "score"}


def test_dict_shots_equal_folder_shots(bundles, glyphs):
    model = fastadapt.load(bundles["prototype"])
    from_folder = model.adapt(glyphs["shots"])
    from_dict = model.adapt({k: v[:3] for k, v in glyphs["images"].items()})
    assert from_folder.classes == from_dict.classes
    for name in from_folder.params:
        np.testing.assert_allclose(from_folder.params[name], from_dict.params[name], atol=1e-6)


def test_save_and_reload_adapted(bundles, glyphs, tmp_path):
    adapted = fastadapt.load(bundles["zero"]).adapt(glyphs["shots"], steps=4, lr=0.2, safeguard=False)
    out = tmp_path / "mine.fadapt"
    adapted.save(out)
    again = fastadapt.load(out)
    assert isinstance(again, fastadapt.AdaptedModel)
    assert again.kind == "adapted" and again.classes == adapted.classes
    assert again.manifest["adaptation"]["steps"] == 4 and again.manifest["adaptation"]["lr"] == 0.2
    for name in adapted.params:
        np.testing.assert_array_equal(again.params[name], adapted.params[name])
    assert [f for f in os.listdir(tmp_path)] == ["mine.fadapt"]  # no temp files left
    assert isinstance(fastadapt.load(bundles["zero"]), fastadapt.Model)


def test_zero_steps_prototype_is_nearest_mean(bundles, glyphs):
    """With no SGD step a prototype head is a prototypical network: the nearest class mean wins."""
    model = fastadapt.load(bundles["prototype"])
    adapted = model.adapt(glyphs["shots"], steps=0)
    pre = adapted.preprocess
    queries = [im for items in glyphs["images"].values() for im in items[3:]]
    _, qf = adapted.graphs.forward(preprocess(queries, pre), adapted.params)
    support = {k: preprocess(v[:3], pre) for k, v in glyphs["images"].items()}
    means = np.stack([adapted.graphs.forward(x, adapted.params)[1].mean(0) for x in support.values()])
    nearest = ((qf[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert [r.label for r in adapted.predict(queries)] == [adapted.classes[i] for i in nearest]


def test_api_errors(bundles, glyphs, tmp_path, monkeypatch):
    model = fastadapt.load(bundles["zero"])
    with pytest.raises(FastadaptError, match="adapt it first"):
        model.predict(os.path.join(glyphs["queries"], "class00", "0.png"))
    adapted = model.adapt(glyphs["shots"])
    with pytest.raises(FastadaptError, match="already adapted"):
        adapted.adapt(glyphs["shots"])
    with pytest.raises(FastadaptError, match="at least 2 classes"):
        model.adapt({"only": glyphs["images"]["class00"]})
    with pytest.raises(FastadaptError, match="has no images"):
        model.adapt({"a": glyphs["images"]["class00"], "b": []})
    with pytest.raises(FastadaptError, match="^lr must be a positive number"):  # the parameter, not a CLI flag
        model.adapt(glyphs["shots"], lr=-1.0)
    with pytest.raises(FastadaptError, match="^steps must be"):
        model.adapt(glyphs["shots"], steps=-2)
    from fastadapt.runtime import loading

    monkeypatch.setattr(loading, "ASSETS", str(tmp_path))  # an installation without its shipped models
    with pytest.raises(FastadaptError, match="built-in model 'characters' is not in this installation"):
        fastadapt.load()


def test_evaluate_bundle_matches_torch_evaluation(bundles, one_thread, monkeypatch):
    """Same tasks on both sides (split and task seeds): the same predicted labels, so per-task accuracies agree.

    Except on near ties, which another CPU's rounding may flip: labels are compared on the queries whose float64
    top-2 logit margin exceeds twice the float32 logit error allowed by tests/numerics.py's rule (4x torch's own
    float32 error against float64, plus 8 ulps of the logits' size); each query left out may move its task's
    accuracy by 1/query."""
    torch = pytest.importorskip("torch")
    import fastadapt.meta_train.evaluate as torch_evaluation
    import fastadapt.runtime.evaluate as runtime_evaluation
    from fastadapt.bundle import read_bundle
    from fastadapt.meta_train import inner_loop as il
    from fastadapt.meta_train.algorithms import TaskTensors
    from fastadapt.meta_train.run_setup import to_tensors
    from fastadapt.evaluation import unseen_class_sampler
    from fastadapt.models import ModelSpec, build_model
    from numerics import decided, float32_bound, recorded_predictions

    onnx_labels = recorded_predictions(monkeypatch, runtime_evaluation)
    torch_labels = recorded_predictions(monkeypatch, torch_evaluation)
    result = runtime_evaluation.evaluate_bundle(bundles["prototype"], "synthetic", "split", ways=5, shots=1, query=3,
                                                tasks=6, seed=3)
    assert result["tasks"] == 6 and result["evaluated_with"] == "onnxruntime"
    bundle = read_bundle(bundles["prototype"])
    spec = ModelSpec.from_dict({k: v for k, v in bundle.manifest["architecture"].items() if k != "feature_dim"})
    recipe = il.InnerLoop.from_dict(bundle.manifest["inner_loop"])
    pre = Preprocess.from_dict(bundle.manifest["preprocess"])
    sampler = unseen_class_sampler("synthetic", "split", 0, 100, pre, 5, 1, 3, 3)
    meta = {k: torch.from_numpy(v) for k, v in bundle.params.items()}
    model = build_model(spec)
    reference = torch_evaluation.evaluate_classification(model, meta, recipe, sampler, pre, torch.device("cpu"), 6,
                                                         recipe.steps)
    model64, meta64 = build_model(spec).double(), {k: v.double() for k, v in meta.items()}
    logits32, logits64 = [], []
    for i in range(6):
        b = to_tensors(sampler.task(i), pre, "cpu", 5)
        b64 = TaskTensors(b.support_x.double(), b.support_y, b.query_x.double(), b.query_y, b.ways)
        logits32.append(torch_evaluation.adapt_and_predict(model, meta, recipe, b, recipe.steps, None, "layer", False))
        logits64.append(torch_evaluation.adapt_and_predict(model64, meta64, recipe, b64, recipe.steps, None, "layer",
                                                           False))
    logits32, logits64 = torch.stack(logits32).double(), torch.stack(logits64)
    keep = decided(logits64, float32_bound((logits32 - logits64).abs().max().item(), logits64.abs().max().item()))
    exact = logits64.argmax(-1).numpy()
    for labels in (np.stack(onnx_labels), np.stack(torch_labels)):
        assert labels.shape == exact.shape and np.array_equal(labels[keep], exact[keep])
    left_out = (~keep).sum(1) / keep.shape[1]
    assert np.all(np.abs(np.subtract(result["per_task_accuracy"], reference["per_task_accuracy"])) <= left_out + 1e-12)


def test_the_one_call_adapt_passes_safeguard_on():
    """`fastadapt.adapt(..., safeguard=False)` runs the plain recipe, as Model.adapt does with
    it; a one-call API that always safeguarded would silently differ from the two-call one."""
    adapted = fastadapt.adapt(os.path.join(ROOT, "examples", "shots"), safeguard=False, steps=1)
    assert adapted.adaptation["safeguard"] is False


def test_threads_one_over_the_cores_are_capped_and_the_cores_themselves_kept(monkeypatch):
    """FASTADAPT_THREADS above the cores this process may use is capped at them (more only
    adds contention), from cores + 1 on; up to the cores it is taken as given."""
    import warnings

    from fastadapt.runtime import sessions

    monkeypatch.setattr(sessions, "available_cores", lambda: 2)
    monkeypatch.setattr(sessions, "_warned_threads", set())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for given, used in (("1", 1), ("2", 2), ("3", 2)):
            monkeypatch.setenv("FASTADAPT_THREADS", given)
            assert sessions.configured_threads() == used, given


def test_step_sessions_get_the_threads_they_ask_for(monkeypatch):
    """A session made with threads=N (the step graph's: 1, its parallelism is across chunks)
    gets N intra-op threads, not FASTADAPT_THREADS / the cores; without N it gets those."""
    from fastadapt.runtime import sessions

    monkeypatch.setattr(sessions, "available_cores", lambda: 3)
    monkeypatch.delenv("FASTADAPT_THREADS", raising=False)
    assert sessions._session_options(1).intra_op_num_threads == 1
    assert sessions._session_options().intra_op_num_threads == 3
