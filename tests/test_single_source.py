"""What is written once stays one thing: the model card is the one text of what a model is good for, and
the tolerance rule has one definition (standalone.agrees, torch-free), which export verification uses."""

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
    size = model.preprocess.size
    assert _good_for(bare) == (f"images like its training data (my glyphs), seen as {size}x{size} grayscale "
                               "(see 'fastadapt info')")
    manifest["model_card"] = {"intended_use": "MNIST digits. Nothing else."}
    assert _good_for(Model(Bundle(manifest, model.bundle.forward_onnx, model.bundle.step_onnx, model.params, None),
                           model.graphs)).startswith("MNIST digits (")  # an acronym keeps its case


def test_one_tolerance_rule_for_export_verification_and_the_standalone_export():
    pytest.importorskip("torch")
    from fastadapt import standalone
    from fastadapt.meta_train import verification

    assert verification.agrees is standalone.agrees and verification.VERIFY_TOL == standalone.VERIFY_TOL
    agrees = standalone.agrees  # relative above size 1, absolute below; NaN/inf never agree
    assert agrees(np.ones(2) * 1e-4, np.zeros(2)) and not agrees(np.ones(2) * 1.01e-4, np.zeros(2))
    assert agrees(np.array([1000.05]), np.array([1000.0])) and not agrees(np.array([1000.2]), np.array([1000.0]))
    assert not agrees(np.array([np.nan]), np.array([0.0])) and not agrees(np.array([np.inf]), np.array([1.0]))
    assert agrees(np.float32(0.5), np.float64(0.50005)) and agrees(np.array([0.6]), np.array([0.0]), tol=0.5) is False
