"""predict(..., unknown=...): the in-set score, the calibrated threshold, strict JSON, and answers that
never depend on the other images of a call."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
from PIL import Image

import fastadapt
from fastadapt.errors import FastadaptError
from fastadapt.runtime import sessions
from fastadapt.runtime.unknown import THRESHOLD, auroc

from conftest import ROOT
from test_cli_runtime import run_cli

SHOTS = os.path.join(ROOT, "examples", "shots")
QUERIES = sorted(glob.glob(os.path.join(ROOT, "examples", "queries", "*", "*.png")))
KNOWN = ("arrow", "circle", "cross", "star")


@pytest.fixture(scope="module")
def shapes():
    """The shipped model adapted to 4 of the 8 example shapes, one drawing each."""
    return fastadapt.load().adapt({k: [os.path.join(SHOTS, k, f"{k}_1.png")] for k in KNOWN})


def split_queries():
    known = [q for q in QUERIES if os.path.basename(os.path.dirname(q)) in KNOWN]
    return known, [q for q in QUERIES if q not in known]


def test_unknown_shapes_are_rejected_and_known_ones_kept(shapes):
    assert shapes.manifest["unknown"]["threshold"] == THRESHOLD == shapes.unknown_threshold
    known, others = split_queries()
    accepted = shapes.predict(known, unknown=True)
    rejected = shapes.predict(others, unknown=True)
    assert not any(p.unknown for p in accepted)
    assert sum(p.unknown for p in rejected) > len(rejected) / 2
    # the closest class and the score are kept for an unknown image
    p = next(p for p in rejected if p.unknown)
    assert p.label in KNOWN and p.score < THRESHOLD and p.probability == p.top[0][1]
    # off by default; a number is a threshold of its own
    assert not any(p.unknown for p in shapes.predict(others))
    assert all(p.unknown for p in shapes.predict(others, unknown=0.0))
    # above every score: a mistake (1 or np.True_ meant as True), not a threshold
    for mistaken in (1, 0.5):
        with pytest.raises(FastadaptError, match=r"would mark every image unknown: .*at most 0 .*pass True"):
            shapes.predict(others, unknown=mistaken)
    assert [p.unknown for p in shapes.predict(others, unknown=np.True_)] == [p.unknown for p in rejected]
    assert not any(p.unknown for p in shapes.predict(others, unknown=np.False_))
    assert not any(p.unknown for p in shapes.predict(others, unknown=-1e9))
    assert auroc([s.score for s in accepted], [s.score for s in rejected]) > 0.9


def test_a_score_equal_to_the_threshold_is_not_unknown(shapes):
    """Guards against ties counted as unknown: an image is unknown when not score >= threshold, so a threshold
    equal to its score keeps it, and the next float above rejects it."""
    score = shapes.predict(QUERIES[0]).score
    assert score < 0  # a valid threshold (scores are at most 0)
    assert shapes.predict(QUERIES[0], unknown=score).unknown is False
    assert shapes.predict(QUERIES[0], unknown=float(np.nextafter(score, 0.0))).unknown is True


def test_single_image_equals_batch_exactly(shapes):
    x = np.stack([fastadapt.images.to_float(fastadapt.images.to_uint8(q, shapes.preprocess)[None],
                                            shapes.preprocess)[0] for q in QUERIES])
    probabilities, scores = shapes.scores(x)
    assert np.isfinite(scores).all() and np.allclose(probabilities.sum(1), 1)
    for i in (0, 7, len(x) - 1):
        alone_p, alone_s = shapes.scores(x[i:i + 1])
        assert np.array_equal(alone_p[0], probabilities[i]) and alone_s[0] == scores[i]
    assert np.array_equal(shapes.scores(x[::-1])[0][::-1], probabilities)


def test_auroc():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 30), rng.integers(0, 5, 20)
    brute = np.mean([(x > y) + 0.5 * (x == y) for x in a for y in b])
    assert auroc(a, b) == pytest.approx(brute, abs=1e-12)


def test_bad_calls(shapes, bundles, glyphs):
    for bad in (None, 42, [42], {"a": 1}):
        with pytest.raises(FastadaptError, match="predict"):
            shapes.predict(bad)
    for bad in ("yes", float("nan"), [0.5]):
        with pytest.raises(FastadaptError, match="unknown"):
            shapes.predict(QUERIES[0], unknown=bad)
    for bad in ("", None, 3):
        with pytest.raises(FastadaptError, match="save"):
            shapes.save(bad)
    # a zero head has no prototypes: the score is the top probability and there is no calibrated threshold
    zero = fastadapt.load(bundles["zero"]).adapt(glyphs["shots"])
    assert zero.manifest["unknown"]["threshold"] is None
    with pytest.raises(FastadaptError, match="pass a number as unknown, e.g. 0.9"):
        zero.predict(QUERIES[0], unknown=True)
    p = zero.predict(QUERIES[0], unknown=0.999999)
    assert p.score == p.probability and p.unknown
    with pytest.raises(FastadaptError, match="at most 1 .*top class probability"):
        zero.predict(QUERIES[0], unknown=1.5)


def test_cli_unknown_and_strict_json(tmp_path, capsys):
    model = tmp_path / "shapes.fadapt"
    shots = tmp_path / "shots"
    for k in KNOWN:
        os.makedirs(shots / k)
        Image.open(os.path.join(SHOTS, k, f"{k}_1.png")).save(shots / k / "1.png")
    code, out, err = run_cli(capsys, "adapt", "--shots", shots, "--out", model)
    assert code == 0, err
    blank = tmp_path / "blank.png"
    Image.new("L", (40, 40), 255).save(blank)
    code, out, err = run_cli(capsys, "predict", "--model", model, blank, QUERIES[0], "--unknown")
    assert code == 0, err
    assert "unknown (closest: " in out.splitlines()[0] and "unknown" not in out.splitlines()[1]

    def strict(text):
        raise ValueError(f"not strict JSON: {text}")

    code, out, err = run_cli(capsys, "predict", "--model", model, blank, "--json", "--unknown-threshold", "-0.1")
    row = json.loads(out.splitlines()[0], parse_constant=strict)
    assert row["unknown"] is True and isinstance(row["score"], float) and row["label"] in KNOWN
    code, out, err = run_cli(capsys, "predict", "--model", model, blank, "--unknown-threshold", "nan")
    assert code != 0 and "--unknown-threshold" in err and "Traceback" not in err


def test_threads_capped_at_the_cores(monkeypatch, capsys):
    monkeypatch.setenv("FASTADAPT_THREADS", "100000")
    assert sessions.configured_threads() == sessions.available_cores()
    assert "FASTADAPT_THREADS" in capsys.readouterr().err
    for bad in ("0", "-3", "many"):
        monkeypatch.setenv("FASTADAPT_THREADS", bad)
        with pytest.raises(FastadaptError, match="FASTADAPT_THREADS"):
            sessions.configured_threads()


def test_evaluate_unknown_runs_on_any_data(bundles):
    from fastadapt.runtime import evaluate_unknown

    result = evaluate_unknown(bundles["prototype"], "synthetic", ways=2, shots=2, query=2, tasks=2)
    assert 0 <= result["auroc"] <= 1 and 0 <= result["calibrated_false_accept"] <= 1
    assert result["threshold"] == THRESHOLD and result["tasks"] == 2
    json.dumps(result, allow_nan=False)
    for share in (2, -1, 0, float("nan"), "0.05", True):  # checked before any task, not a ValueError after one
        with pytest.raises(FastadaptError, match="false_accept must be a share of the unknowns between 0 and 1"):
            evaluate_unknown(bundles["prototype"], "synthetic", false_accept=share, tasks=2)
    with pytest.raises(FastadaptError, match="samples 2 x ways classes per task"):
        evaluate_unknown(bundles["prototype"], "synthetic", ways=600, tasks=2)


def test_accuracy_at_far_lets_false_accept_of_the_unknowns_through(monkeypatch):
    """Guards against the accuracy_at_far threshold taken at the wrong quantile (false_accept, letting 90% of the
    unknowns through, instead of 1 - false_accept): recomputed by hand from each task's queries and scores."""
    from fastadapt.evaluation import TaskSampler
    from fastadapt.runtime import DEFAULT_MODEL, evaluate_unknown
    from fastadapt.runtime.model import AdaptedModel

    tasks, outputs = [], []
    task_of, scores_of = TaskSampler.task, AdaptedModel.scores
    monkeypatch.setattr(TaskSampler, "task", lambda self, i: tasks.append(task_of(self, i)) or tasks[-1])
    monkeypatch.setattr(AdaptedModel, "scores", lambda self, x: outputs.append(scores_of(self, x)) or outputs[-1])
    ways = 3
    result = evaluate_unknown(DEFAULT_MODEL, "synthetic", ways=ways, shots=1, query=7, tasks=2, false_accept=0.1)
    assert len(tasks) == len(outputs) == 2
    expected = []
    for task, (probabilities, scores) in zip(tasks, outputs):
        in_set = task.query_y < ways
        unknowns = np.sort(scores[~in_set])
        assert len(unknowns) == 21  # so the 0.9 quantile is exactly the 19th lowest score, and 2 of 21 lie above it
        threshold = unknowns[18]
        assert (unknowns > threshold).sum() == 2
        right_and_accepted = (probabilities.argmax(1) == task.query_y) & (scores > threshold)
        expected.append(right_and_accepted[in_set].mean())
    assert result["accuracy_at_far"] == pytest.approx(np.mean(expected), abs=5e-5)  # the result is rounded to 4 places
    assert result["accuracy_at_far"] < result["accuracy_closed_set"]  # the threshold rejects some right answers here


def test_predict_warns_once_about_light_strokes_on_dark(bundles, glyphs, capsys):
    from PIL import ImageOps

    adapted = fastadapt.load(bundles["prototype"]).adapt(glyphs["shots"])
    capsys.readouterr()
    queries = [im for items in glyphs["images"].values() for im in items[3:]]
    adapted.predict([ImageOps.invert(im.convert("L")) for im in queries[:3]] + queries[3:])
    err = capsys.readouterr().err
    assert err.count("light strokes on a dark background") == 1 and "3 of 10" in err
    adapted.predict(queries)
    assert "light strokes" not in capsys.readouterr().err


def test_the_score_reads_the_same_with_a_scaled_prototype_head(tmp_path):
    """A head scale s multiplies the logits by s; the score divides them back, so before any step (where the
    heads differ only by s) the scores agree to float32 rounding of the terms they are computed from."""
    from conftest import rewrite_manifest

    scaled_path = str(tmp_path / "scaled.fadapt")
    rewrite_manifest(fastadapt.runtime.DEFAULT_MODEL, scaled_path, inner_loop={"head_scale": 0.1})
    shots = {k: [os.path.join(SHOTS, k, f"{k}_1.png")] for k in KNOWN}
    plain, scaled = (fastadapt.load(p).adapt(shots, steps=0) for p in (fastadapt.runtime.DEFAULT_MODEL, scaled_path))
    assert scaled.manifest["unknown"]["scale"] == pytest.approx(plain.manifest["unknown"]["scale"], rel=1e-5)
    x = np.stack([fastadapt.images.to_float(fastadapt.images.to_uint8(q, plain.preprocess)[None],
                                            plain.preprocess)[0] for q in QUERIES])
    (p_plain, s_plain), (p_scaled, s_scaled) = plain.scores(x), scaled.scores(x)
    assert np.array_equal(p_plain.argmax(1), p_scaled.argmax(1)) and not np.allclose(p_plain, p_scaled)
    logits, features = plain.graphs.forward(x, plain.params)
    # the score subtracts |f|^2 from the top logit: float32 rounding of either, relative to the prototype spacing
    magnitude = (np.abs(logits).max() + (features.astype(np.float64) ** 2).sum(1).max()) / plain._scale
    np.testing.assert_allclose(s_scaled, s_plain, rtol=0, atol=64 * np.finfo(np.float32).eps * magnitude)


def test_identical_prototypes_fall_back_to_raw_distances():
    """Guards the spacing's fallback: when every prototype is the same, the median squared distance is 0, and
    dividing scores by it would give inf/NaN; the scale is then 1 (raw distances)."""
    from fastadapt.runtime.unknown import prototype_scale

    same = {"head.weight": np.ones((3, 4), np.float32)}
    assert prototype_scale(same) == 1.0
    apart = {"head.weight": np.array([[2, 0], [0, 2], [0, 0]], np.float32)}  # prototypes (1,0), (0,1), (0,0)
    assert prototype_scale(apart) == pytest.approx(1.0)  # squared distances 2, 1, 1: median 1
    assert prototype_scale(apart, head_scale=0.5) == pytest.approx(4.0)  # rows / (2 * 0.5): (2,0), (0,2), (0,0)

