"""The benchmark suite's report: RESULTS.md is exactly what results.json renders to (never hand-edited),
and the suite's command line refuses unknown sections. Speed itself is never asserted."""

import json
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
