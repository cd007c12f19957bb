"""The benchmark suite's report: RESULTS.md is exactly what results.json renders to (never hand-edited),
and the suite's command line refuses unknown sections. Speed itself is never asserted."""

import json
import os
import subprocess
import sys

import pytest

from sample_data import REPO

RESULTS = REPO / "benchmarks" / "results.json"


@pytest.mark.skipif(not RESULTS.exists(), reason="no benchmark results committed yet")
def test_results_md_is_rendered_from_results_json():
    from benchmarks.report import render

    assert (REPO / "benchmarks" / "RESULTS.md").read_text() == render(json.loads(RESULTS.read_text()))


def test_render_marks_missing_sections():
    from benchmarks.report import render

    text = render({})
    for section in ("training", "adaptation", "footprint", "time", "before"):
        assert f"python -m benchmarks --only {section}" in text


def test_unknown_section_is_a_one_line_error():
    result = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "bogus"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "unknown section(s) bogus" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_gpu_sections_trainer_parts_run_on_a_cpu(monkeypatch):
    """The GPU section runs only on a rarely lent GPU machine: a broken import there (it happened once, a module
    renamed under it) wastes the whole loan. Its trainer-side parts run here on a CPU with a tiny config."""
    pytest.importorskip("torch")
    from benchmarks import gpu
    from fastadapt.meta_train.run_setup import make_samplers

    monkeypatch.setattr(gpu, "DEVICE", "cpu")
    c = gpu.config("fomaml", dict(ways=3, shots=1, query=2, meta_batch=2, width=4, inner_steps=1), 3, "synthetic")
    with gpu.shared_data():
        assert gpu.fastadapt_rate(c) > 0
        assert gpu.flops_per_task(c, make_samplers(c)) > 0


def test_the_adaptation_benchmarks_support_sets_fit_each_models_input():
    """The shipped default moved to 32x32 while the benchmark's support sets stayed at the sampler's 28x28:
    ``python -m benchmarks --only adaptation`` then failed at its first row. Support sets follow the model."""
    import fastadapt
    from benchmarks import adaptation
    from fastadapt.images import to_float

    model = fastadapt.load("characters")
    sx, sy = adaptation.support_set("synthetic", 5, 1, model=model)
    assert sx.shape[1:] == (model.preprocess.channels, model.preprocess.size, model.preprocess.size)
    adapted = model.adapt_arrays(to_float(sx, model.preprocess), sy, [str(c) for c in range(5)], steps=1)
    assert adapted.probabilities(to_float(sx, model.preprocess)).shape == (5, 5)


def test_the_before_section_runs_on_the_old_commit(tmp_path):
    """``--only before`` measures commit 956070f with today's benchmark modules: renames since (parts.py ->
    run_setup.py, the samplers' API) broke it unseen for two days. Its adaptation half runs here on the old
    package (one step per shape; the training half, minutes long, is replaced by a stub after importing)."""
    pytest.importorskip("torch")
    import numpy as np

    from benchmarks import adaptation, before

    archive = subprocess.run(["git", "archive", before.BEFORE, "fastadapt"], cwd=REPO, capture_output=True)
    if archive.returncode:
        pytest.skip(f"commit {before.BEFORE} is not in this checkout (a shallow clone)")
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive.stdout, check=True)
    sets = tmp_path / "support_sets.npz"
    np.savez(sets, **{f"{xy}{ways}_{shots}": array for ways, shots in adaptation.SHAPES
                      for xy, array in zip("xy", adaptation.support_set("synthetic", ways, shots))})
    code = ("import json; from benchmarks.before import alias_renamed_modules, measure; alias_renamed_modules(); "
            "import benchmarks.training as t, benchmarks.adaptation as a; t.run = lambda iterations: {}; "
            f"a.STEPS = (1,); print('RESULT ' + json.dumps(measure({str(tmp_path)!r}, {str(sets)!r}, 2)))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-800:]
    rows = json.loads(done.stdout.split("RESULT ", 1)[1])["adaptation"]
    assert [(r["ways"], r["shots"]) for r in rows] == list(adaptation.SHAPES)
    assert all(r["runtime_ms"] > 0 and r["torch_ms"] > 0 for r in rows)
