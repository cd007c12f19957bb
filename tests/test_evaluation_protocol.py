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


def test_mean_ci95_is_the_mean_and_1_96_sample_std_over_sqrt_n():
    """Guards the CI formula (every reported ±): sample std (ddof=1), divided by sqrt(n), not n."""
    import math

    from fastadapt.evaluation import mean_ci95

    # values 1..5: mean 3, sum of squared deviations 10, sample variance 10 / 4 = 2.5, n = 5
    mean, ci = mean_ci95([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0
    assert math.isclose(ci, 1.96 * math.sqrt(2.5) / math.sqrt(5), rel_tol=1e-12)
    # 0/1 accuracies: mean 0.5, sample variance (4 * 0.25) / 3 = 1/3, n = 4
    mean, ci = mean_ci95([0.0, 1.0, 0.0, 1.0])
    assert mean == 0.5 and math.isclose(ci, 1.96 * math.sqrt(1 / 3) / 2, rel_tol=1e-12)
    mean, ci = mean_ci95([0.25])  # one value: no spread to estimate
    assert mean == 0.25 and math.isnan(ci)


def test_evaluate_seed_picks_the_test_tasks():
    """Guards `evaluate --seed` being ignored: the sampler of seed s draws TaskSampler(test classes, seed=s)'s tasks."""
    import numpy as np

    from fastadapt.data.sampler import TaskSampler
    from fastadapt.evaluation import unseen_class_sampler, unseen_classes

    test = unseen_classes("synthetic", "split", 0, 100, None)
    tasks = []
    for seed in (0, 1):
        sampler = unseen_class_sampler("synthetic", "split", 0, 100, None, 5, 1, 2, seed=seed)
        assert sampler.seed == seed and sampler.data.names == test.names
        want, got = TaskSampler(test, 5, 1, 2, seed=seed).task(3), sampler.task(3)
        assert np.array_equal(got.classes, want.classes) and np.array_equal(got.support_x, want.support_x)
        assert np.array_equal(got.query_x, want.query_x)
        tasks.append(got)
    assert not np.array_equal(tasks[0].support_x, tasks[1].support_x)  # other seeds, other tasks


def test_a_bundle_is_split_with_its_own_run_seed_val_classes_and_ways():
    """Which classes are test classes depends on the training run's split seed, validation
    class count and ways, read from the bundle's provenance (nested "config" or flat); a bundle without them was
    trained with the defaults. A fixed seed would score a seed-7 model partly on its own training classes."""
    from fastadapt.data.sources import DEFAULT_SEED, DEFAULT_VAL_CLASSES, DEFAULT_WAYS
    from fastadapt.runtime.evaluate import split_settings

    assert split_settings({"provenance": {"config": {"seed": 7, "val_classes": 3, "ways": 4}}}) == \
        {"split_seed": 7, "val_classes": 3, "split_ways": 4}
    assert split_settings({"provenance": {"seed": 11, "val_classes": 2, "ways": 6}})["split_seed"] == 11
    assert split_settings({}) == {"split_seed": DEFAULT_SEED, "val_classes": DEFAULT_VAL_CLASSES,
                                  "split_ways": DEFAULT_WAYS}
