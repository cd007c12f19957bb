"""Export a meta-trained model as a ``.fadapt`` bundle: trace, verify through the runtime, then write.

One job: put the pieces together. ``tracing`` builds the two graphs, the bundle is assembled in memory,
``verification`` adapts a task with it through the runtime and against torch, and only then is it
written (atomically, ``bundle.save_bundle``): a bundle that fails verification never reaches the disk.
"""

from __future__ import annotations

import copy

from ..bundle import Bundle, save_bundle
from . import inner_loop as il
from .tracing import build_graphs, check_supported, with_head
from .verification import verify


def export_bundle(out_path, model, spec, recipe: il.InnerLoop, params: dict, preprocess, provenance: dict,
                  evaluation: list, steps: int | None = None, task: tuple | None = None,
                  say=lambda stage: None) -> dict:
    """Build both graphs, verify them against torch for ``steps`` (default: the recipe's) SGD steps on
    ``task`` (default: a synthetic one), then write the bundle atomically. Returns the manifest. Writes
    nothing when verification fails. ``say(stage)``: called as each stage starts (progress for the CLI)."""
    check_supported(spec, recipe)
    steps = recipe.steps if steps is None else steps
    # no head: the runtime makes one per task
    meta = {k: v.detach().float().cpu() for k, v in il.body_params(params).items()}
    rates = params.get(il.LEARNED_LRS)  # learned inner rates: into the manifest, one lr input per tensor
    model = copy.deepcopy(model).cpu()  # leave the caller's model where it is
    say("tracing the forward and SGD-step graphs to ONNX (most of the time)")
    forward_bytes, step_bytes = build_graphs(model, spec, recipe, meta, per_tensor_lr=rates is not None)
    bundle = meta_bundle(model, spec, recipe, meta, forward_bytes, step_bytes, preprocess, provenance, evaluation)
    if rates is not None:
        bundle.manifest["inner_loop"]["learned_lrs"] = rates.detach().double().cpu().tolist()
    say(f"verifying: {steps} SGD step{'' if steps == 1 else 's'} through the runtime against torch")
    bundle.manifest["verification"] = {"max_abs_diff": verify(bundle, model, steps, task), "steps": steps}
    save_bundle(out_path, bundle)
    return bundle.manifest


def meta_bundle(model, spec, recipe: il.InnerLoop, meta: dict, forward_bytes: bytes, step_bytes: bytes, preprocess,
                provenance: dict, evaluation: list) -> Bundle:
    """The kind "meta" bundle, in memory: ``meta`` are the body parameters (torch tensors, on the CPU)."""
    manifest = {
        "kind": "meta",
        "architecture": {**spec.to_dict(), "feature_dim": int(model.feature_dim)},
        "preprocess": preprocess.to_dict(),
        "inner_loop": {**recipe.to_dict(), "adapted": recipe.adapted_names(with_head(model, meta, 1))},
        "classes": None,
        "provenance": provenance,
        "evaluation": evaluation,
    }
    return Bundle(manifest, forward_bytes, step_bytes, {k: v.numpy() for k, v in meta.items()})
