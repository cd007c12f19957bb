"""What is written once stays one thing: the model card is the one text of what a model is good for, and
the tolerance rule's torch-free copy (standalone.agrees) answers as meta_train.verification.agrees."""

from __future__ import annotations

import numpy as np
import pytest

import fastadapt
from fastadapt.runtime.model import _good_for
from sample_data import REPO

DEFAULT = REPO / "fastadapt" / "assets" / "default.fadapt"


@pytest.mark.skipif(not DEFAULT.exists(), reason="no default model shipped")
def test_what_a_model_is_good_for_comes_from_its_model_card():
    import fastadapt.runtime.model as model_module

    assert not hasattr(model_module, "DEFAULT_GOOD_FOR")  # no second copy of the shipped card's text
    model = fastadapt.load()
    intended = model.model_card()["intended_use"]
    first = intended.split(". ")[0]
    assert _good_for(model) == f"{first[0].lower()}{first[1:]} (its model card: 'fastadapt info')"
    adapted = model.adapt(str(REPO / "examples" / "shots"))
    assert _good_for(adapted._meta_model()) == _good_for(model)  # the meta model an adapted bundle keeps
    assert _good_for(fastadapt.load("photos")).startswith("colour photos")


@pytest.mark.skipif(not DEFAULT.exists(), reason="no default model shipped")
def test_a_model_without_a_card_is_described_by_its_data_and_input():
    from fastadapt.bundle import Bundle
    from fastadapt.runtime.model import Model

    model = fastadapt.load()
    manifest = {k: v for k, v in model.manifest.items() if k != "model_card"}
    manifest["provenance"] = {**(manifest.get("provenance") or {}), "data": "my glyphs"}
    bare = Model(Bundle(manifest, model.bundle.forward_onnx, model.bundle.step_onnx, model.params, None), model.graphs)
    assert _good_for(bare) == "images like its training data (my glyphs), seen as 28x28 grayscale (see 'fastadapt info')"
    manifest["model_card"] = {"intended_use": "MNIST digits. Nothing else."}
    assert _good_for(Model(Bundle(manifest, model.bundle.forward_onnx, model.bundle.step_onnx, model.params, None),
                           model.graphs)).startswith("MNIST digits (")  # an acronym keeps its case


def test_the_torch_free_tolerance_rule_answers_as_the_trainers():
    pytest.importorskip("torch")
    from fastadapt import standalone
    from fastadapt.meta_train import verification

    assert standalone.VERIFY_TOL == verification.VERIFY_TOL
    if standalone.agrees is verification.agrees:  # one definition: nothing left to compare
        return
    rng = np.random.default_rng(0)
    cases = [(np.zeros(3), np.zeros(3)), (np.ones(2) * 1e-4, np.zeros(2)), (np.ones(2) * 1.01e-4, np.zeros(2)),
             (np.array([1000.1]), np.array([1000.0])), (np.array([1000.2]), np.array([1000.0])),
             (np.array([np.nan]), np.array([0.0])), (np.array([np.inf]), np.array([1.0])),
             (np.float32(0.5), np.float64(0.50005))]
    for scale in (1e-3, 1.0, 1e3):
        reference = rng.normal(size=(4, 5)) * scale
        for noise in (1e-6, 5e-5, 1e-4, 2e-4, 1e-2):
            cases.append((reference + noise * max(1.0, scale) * rng.choice([-1, 1], reference.shape), reference))
            cases.append(((reference + noise * scale).astype(np.float32), reference))
    for value, reference in cases:
        for tol in (1e-4, 1e-6, 0.5):
            assert standalone.agrees(value, reference, tol) == verification.agrees(value, reference, tol), \
                (value, reference, tol)
        assert standalone.agrees(value, reference) == verification.agrees(value, reference)
    answers = {standalone.agrees(v, r) for v, r in cases}
    assert answers == {True, False}  # the cases test both sides of the bound
