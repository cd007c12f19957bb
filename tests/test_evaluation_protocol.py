"""Evaluation uses the test classes of the split a model was trained with: "auto" is the trained protocol
on the training data (a vinyals-trained model scored on lake's test classes was scored three quarters on
its own training characters); an explicit other protocol warns."""

import json
import warnings

import pytest

from fastadapt.errors import FastadaptWarning
from fastadapt.evaluation import evaluation_protocol

from sample_data import omniglot_root


def test_auto_is_the_trained_protocol_on_the_training_data(monkeypatch):
    import fastadapt.evaluation as evaluation

    monkeypatch.setattr(evaluation, "is_omniglot", lambda data: data == "omniglot-copy")
    assert evaluation_protocol("auto", "vinyals", "omniglot-copy", same_data=False) == "vinyals"  # any copy
    assert evaluation_protocol("auto", "split", "folder", same_data=True) == "split"
    assert evaluation_protocol("auto", "split", "other", same_data=False) == "auto"  # other data: its default
    assert evaluation_protocol("auto", "vinyals", "folder", same_data=True) == "auto"  # not Omniglot
    assert evaluation_protocol("auto", "auto", "omniglot-copy", same_data=True) == "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluation_protocol("vinyals", "vinyals", "omniglot-copy", same_data=True) == "vinyals"
        assert evaluation_protocol("all", "split", "other", same_data=False) == "all"  # new data: no warning
    with pytest.warns(FastadaptWarning, match="not the vinyals split this model was trained with"):
        assert evaluation_protocol("lake", "vinyals", "omniglot-copy", same_data=True) == "lake"
    with pytest.warns(FastadaptWarning, match="not the split split"):
        assert evaluation_protocol("all", "split", "folder", same_data=True) == "all"


def test_a_bundle_knows_its_training_protocol_and_data_from_its_provenance(monkeypatch):
    """The bundle records the trainer's absolute path; the same folder or file name elsewhere is the same data."""
    from types import SimpleNamespace

    import fastadapt.evaluation as evaluation
    from fastadapt.runtime.evaluate import bundle_protocol

    monkeypatch.setattr(evaluation, "is_omniglot", lambda data: False)
    model = SimpleNamespace(manifest={"provenance": {"protocol": "split", "data": "/srv/trainer/data/tin500"}})
    assert bundle_protocol(model, "auto", "../data/tin500/") == "split"
    assert bundle_protocol(model, "auto", "tiny-imagenet.zip") == "auto"
    with pytest.warns(FastadaptWarning, match="not the split split"):
        assert bundle_protocol(model, "all", "tin500") == "all"
    assert bundle_protocol(SimpleNamespace(manifest={}), "auto", "tin500") == "auto"  # no provenance


@pytest.mark.omniglot
@pytest.mark.skipif(omniglot_root() is None, reason="real Omniglot not present")
def test_a_vinyals_run_is_evaluated_on_vinyals_test_classes(tmp_path):
    from typer.testing import CliRunner

    from fastadapt.cli import app

    runner = CliRunner()
    run, data = str(tmp_path / "run"), omniglot_root()
    tiny = ["--width", "4", "--iterations", "1", "--meta-batch", "1", "--val-tasks", "2", "--ways", "3", "--shots",
            "1", "--query", "1", "--quiet"]
    assert runner.invoke(app, ["train", "--data", data, "--protocol", "vinyals", *tiny, "--out", run]).exit_code == 0
    result = runner.invoke(app, ["evaluate", run, "--ways", "3", "--tasks", "2", "--query", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["protocol"] == "vinyals"
