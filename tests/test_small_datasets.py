"""Small custom datasets: a split rule that keeps --ways feasible, the same split for big datasets as before,
one home for the training defaults, and the run's bookkeeping (chance warning, curves)."""

import json
import warnings

import numpy as np
import pytest

from fastadapt.data.sources import load_splits, split_sizes
from fastadapt.errors import FastadaptError, FastadaptWarning
from fastadapt.meta_train.run import SINUSOID_DEFAULTS, TrainConfig
from fastadapt.meta_train.trainer import train
from fastadapt.runtime.evaluate import split_settings

from sample_data import write_glyph_folders
from test_outputs import one_error, run_cli

FAST = dict(width=8, meta_batch=2, val_tasks=4, iterations=2)  # defaults otherwise: 5-way 1-shot, 15 queries


def old_rule(classes: int, val_classes: int = 100) -> tuple:
    """The split rule before ways entered it (test, validation, train)."""
    n_test, n_val = max(2, round(0.2 * classes)), max(2, min(val_classes, round(0.1 * classes)))
    return n_test, n_val, classes - n_test - n_val


def test_big_datasets_split_as_before():
    """From 50 classes (5-way) the rule gives today's numbers, so shipped runs and bundles keep their split:
    Tiny ImageNet's 200 classes stay 140 train / 20 validation / 40 test."""
    assert split_sizes(200, 100, 5) == (40, 20, 140)
    for classes in range(50, 3000, 7):
        for val_classes in (5, 20, 100):
            if val_classes == 100 or val_classes <= round(0.1 * classes):  # the default, or lowering it
                assert split_sizes(classes, val_classes, 5) == old_rule(classes, val_classes), classes
    for classes in range(6, 300):  # every split that trained before still does, with the same numbers
        for ways in (2, 3, 5, 10):
            if old_rule(classes)[1] >= ways:
                assert split_sizes(classes, 100, ways) == old_rule(classes), (classes, ways)


def test_small_datasets_give_every_part_ways_classes():
    assert split_sizes(21, 100, 5) == (5, 5, 11)
    assert split_sizes(10, 100, 3) == (3, 3, 4)
    assert split_sizes(10, 100, 2) == (2, 2, 6)
    assert split_sizes(14, 100, 5) is None and split_sizes(15, 100, 5) == (5, 5, 5)


def test_an_explicit_val_classes_is_honoured_both_ways():
    """--val-classes N (not the default) is the validation size as given, above 10% as well as below; the
    default (100) stays 10% of the classes, at most 100; the test part never depends on it."""
    assert split_sizes(21, 6, 5) == (5, 6, 10) and split_sizes(21, 100, 5) == (5, 5, 11)
    assert split_sizes(100, 30, 5) == (20, 30, 50) and split_sizes(100, 4, 5) == (20, 5, 75)  # floor: --ways
    assert split_sizes(2000, 100, 5) == (400, 100, 1500) and split_sizes(2000, 150, 5) == (400, 150, 1450)
    assert split_sizes(21, 11, 5) == (5, 11, 5) and split_sizes(21, 12, 5) is None
    for classes in range(15, 400, 3):
        for val_classes in (0, 3, 7, 20, 99, 101, 250):
            sizes = split_sizes(classes, val_classes, 5)
            if sizes is not None:
                assert sizes[0] == split_sizes(classes, 100, 5)[0] and min(sizes) >= 5 and sum(sizes) == classes


def test_raised_val_classes_splits_the_folder(tmp_path):
    root = str(write_glyph_folders(tmp_path / "data", 21, 4))
    default, raised = load_splits(root, "auto", 0, 100, False), load_splits(root, "auto", 0, 6, False)
    assert (len(raised.test), len(raised.val), len(raised.train)) == (5, 6, 10)
    assert raised.test.names == default.test.names and set(default.val.names) < set(raised.val.names)
    assert not set(raised.val.names) & set(raised.train.names)


def test_too_large_val_classes_is_one_error_naming_the_fix(tmp_path, capsys, one_thread):
    root = write_glyph_folders(tmp_path / "data", 21, 4)
    code, out, err = run_cli(capsys, "train", "--data", root, "--val-classes", "12", "--out", tmp_path / "run",
                             "--quiet")
    one_error(code, out, err, "--val-classes 12 leaves 4 of the 21 classes", "--ways 5 needs 5",
              "use --val-classes 11 or fewer")
    assert not (tmp_path / "run").exists()
    # evaluation needs only the test classes, which do not depend on --val-classes
    assert load_splits(str(root), "auto", 0, 12, False, need_train=False).test.names == \
        load_splits(str(root), "auto", 0, 100, False).test.names


def test_too_few_classes_says_how_many_are_needed(tmp_path, capsys, one_thread):
    root = write_glyph_folders(tmp_path / "ten", 10, 16)
    code, out, err = run_cli(capsys, "train", "--data", root, "--out", tmp_path / "run", "--quiet")
    line = one_error(code, out, err, "10 classes are too few for --ways 5", "15 in all", "--ways 3")
    assert "--val-classes" not in line  # raising it could not help
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("classes, ways", [(10, 3), (21, 5)])
def test_small_folders_train_and_evaluate_on_the_same_split(tmp_path, capsys, one_thread, classes, ways):
    root = write_glyph_folders(tmp_path / "data", classes, 16)
    out = tmp_path / "run"
    summary = train(TrainConfig.with_defaults(data=str(root), ways=ways, **FAST), str(out), quiet=True)
    assert summary["best"] is not None
    n_test, n_val, n_train = split_sizes(classes, 100, ways)
    splits = load_splits(str(root), "auto", 0, 100, False, ways=ways)
    assert (len(splits.test), len(splits.val), len(splits.train)) == (n_test, n_val, n_train)
    code, stdout, err = run_cli(capsys, "evaluate", out, "--ways", ways, "--tasks", "3", "--json")
    assert code == 0, err
    assert json.loads(stdout)["ways"] == ways


def test_bundles_record_the_split_settings():
    assert split_settings({}) == {"split_seed": 0, "val_classes": 100, "split_ways": 5}
    manifest = {"provenance": {"config": TrainConfig(ways=3, seed=7, val_classes=9).to_dict()}}
    assert split_settings(manifest) == {"split_seed": 7, "val_classes": 9, "split_ways": 3}


def test_defaults_live_in_the_library():
    sinusoid = TrainConfig.with_defaults(data="sinusoid", shots=5)
    assert sinusoid.shots == 5 and sinusoid.query == SINUSOID_DEFAULTS["query"]
    assert sinusoid.inner_lr == SINUSOID_DEFAULTS["inner_lr"] and sinusoid.meta_batch == 25
    assert TrainConfig.with_defaults(algorithm="reptile").meta_lr == 1.0
    assert TrainConfig.with_defaults(algorithm="reptile", meta_lr=0.5).meta_lr == 0.5
    assert TrainConfig.with_defaults() == TrainConfig()
    with pytest.raises(FastadaptError, match="--shots must be"):
        TrainConfig.with_defaults(shots=0)


def test_cli_train_uses_the_library_defaults(tmp_path, capsys, one_thread):
    out = tmp_path / "sin"
    code, _, err = run_cli(capsys, "train", "--data", "sinusoid", "--algorithm", "reptile", "--iterations", "1",
                           "--meta-batch", "2", "--val-tasks", "2", "--out", out, "--quiet")
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())
    expected = TrainConfig.with_defaults(data="sinusoid", algorithm="reptile", iterations=1, meta_batch=2,
                                         val_tasks=2).to_dict()
    assert {k: v for k, v in saved.items() if k != "command"} == {k: v for k, v in expected.items() if k != "command"}


def test_chance_warning_after_two_validations_at_chance(tmp_path):
    from fastadapt.meta_train.recorder import RunRecorder

    record = RunRecorder(str(tmp_path), TrainConfig(ways=2), None, 0.0, False, lambda msg: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for it, accuracy in enumerate([50.0, 50.0, 52.0, 70.0, 50.0, 50.5], 1):  # ci 1.0 each
            record._check_chance({"iteration": it, "val_accuracy": accuracy, "val_ci95": 1.0})
    messages = [str(w.message) for w in caught if issubclass(w.category, FastadaptWarning)]
    assert len(messages) == 1 and "up to iteration 6" in messages[0]  # the first validation does not count
    assert "at chance (50% for 2-way" in messages[0] and "head_init prototype" in messages[0]


def test_training_rows_record_accuracy_in_percent_and_the_world_size(tmp_path):
    # guards against metrics.jsonl rows holding accuracy as a fraction (0.46) while validation rows and the
    # curves use percent (46.0), and against rows that drop the loss's rounding or the process count
    import json

    from fastadapt.meta_train.recorder import RunRecorder

    record = RunRecorder(str(tmp_path), TrainConfig(ways=5), None, 0.0, True, lambda msg: None)
    status = record.training_row(3, 0.1234567, 0.4567, 12.5, 2)
    record.close()
    (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert set(row) == {"iteration", "loss", "tasks_per_s", "world_size", "accuracy"}
    assert row["iteration"] == 3 and row["world_size"] == 2 and row["tasks_per_s"] == 12.5
    assert row["loss"] == pytest.approx(0.12346, abs=1e-9) and row["accuracy"] == pytest.approx(45.67, abs=1e-9)
    assert "acc  45.7%" in status
    regression = RunRecorder(str(tmp_path / "r"), TrainConfig(ways=5, data="sinusoid"), None, 0.0, False, None)
    assert regression.key == "val_mse" and regression.chance is None


def test_curves_smooth_training_and_show_chance(tmp_path):
    from fastadapt.meta_train.plotting import moving_average, plot_curves

    smoothed = moving_average([1.0, 1.0, 3.0], 0.5)
    assert smoothed[0] == 1.0 and 1.0 < smoothed[2] < 3.0
    np.testing.assert_allclose(moving_average([2.0] * 5, 0.9), 2.0)
    rows = [{"iteration": i, "loss": 1.0 / i, "accuracy": 20 + i} for i in range(1, 30)]
    rows.append({"iteration": 29, "val_accuracy": 40.0, "val_ci95": 2.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_curves(str(tmp_path), chance=20.0)
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_train_help_shows_the_library_defaults():
    """--help states the defaults the library applies (TrainConfig, defaults_for), not a copy that can drift."""
    import inspect
    import re

    from fastadapt.cli.train_commands import train as train_command

    options = inspect.signature(train_command).parameters
    plain = TrainConfig()

    def shown(name):  # "[default: 1; sinusoid 10]" -> (1.0, "sinusoid", 10.0)
        default, case, value = re.search(r"\[default: ([^;]+); (\w+) ([^\]]+)\]", options[name].default.help).groups()
        return float(default), case, float(value)

    for name in ("shots", "query", "inner_lr", "meta_batch"):
        assert shown(name) == (getattr(plain, name), "sinusoid", SINUSOID_DEFAULTS[name]), name
    assert shown("meta_lr") == (plain.meta_lr, "reptile", TrainConfig.with_defaults(algorithm="reptile").meta_lr)
