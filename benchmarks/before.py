"""Before/after: the training and adaptation benchmarks run on the code of an earlier commit
(default: 956070f, the last commit before the performance work), so the results table can show
what the optimisations changed. The old package is unpacked with ``git archive`` into a temporary
folder and measured in a subprocess that imports it instead of this checkout's ``fastadapt``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from . import adaptation
from .common import REPO, data_source

BEFORE = "956070f"


def alias_renamed_modules() -> None:
    """The benchmark modules import today's names; give the old package those names too (8abc2c3 renamed
    ``meta_train/parts.py`` to ``run_setup.py`` and ``to_batch`` to ``to_tensors``, same functions)."""
    import importlib

    try:
        importlib.import_module("fastadapt.meta_train.run_setup")
    except ModuleNotFoundError:
        parts = importlib.import_module("fastadapt.meta_train.parts")
        parts.to_tensors = getattr(parts, "to_tensors", parts.to_batch)
        sys.modules["fastadapt.meta_train.run_setup"] = parts


def measure(old_root: str, support_sets: str, iterations: int = 6) -> dict:
    """Runs inside the subprocess, with the old ``fastadapt`` (unpacked in ``old_root``) first on the path.
    ``support_sets``: an .npz of the support sets, sampled by today's code in the parent (the old package's
    sampling API differs)."""
    import fastadapt

    if not fastadapt.__file__.startswith(old_root):
        raise RuntimeError(f"imported {fastadapt.__file__}, not the old package in {old_root}")
    alias_renamed_modules()

    from . import training
    from fastadapt.images import to_float

    old_model = os.path.join(os.path.dirname(fastadapt.__file__), "assets", "default.fadapt")
    model = adaptation.runtime_model(old_model, 2)
    torch_adapt = adaptation.torch_adapter(old_model, 2)
    sets = np.load(support_sets)
    rows = []
    for ways, shots in adaptation.SHAPES:
        sx, sy = sets[f"x{ways}_{shots}"], sets[f"y{ways}_{shots}"]
        if sx.shape[-1] != model.preprocess.size:
            raise RuntimeError(f"support sets of {sx.shape[-1]} pixels; the old model takes {model.preprocess.size}")
        x, classes = to_float(sx, model.preprocess), [str(c) for c in range(ways)]
        for steps in adaptation.STEPS:
            ort_ms, torch_ms = adaptation.time_side_by_side(lambda: model.adapt_arrays(x, sy, classes, steps=steps),
                                                            lambda: torch_adapt(x, sy, ways, steps))
            rows.append({"adapt": "full", "ways": ways, "shots": shots, "steps": steps,
                         "runtime_ms": ort_ms, "torch_ms": torch_ms})
    return {"training": training.run(iterations=iterations), "adaptation": rows}


def run(rev: str = BEFORE, iterations: int = 6) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", rev, "fastadapt"], cwd=REPO, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        support_sets = os.path.join(tmp, "support_sets.npz")  # at the sampler's default size, the old model's
        np.savez(support_sets, **{f"{xy}{ways}_{shots}": array for ways, shots in adaptation.SHAPES
                                  for xy, array in zip("xy", adaptation.support_set(data_source(), ways, shots))})
        code = (f"import json; from benchmarks.before import measure; "
                f"print('RESULT ' + json.dumps(measure({tmp!r}, {support_sets!r}, {iterations})))")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([tmp, str(REPO)]))
        # run from tmp: "python -c" puts the working folder first on sys.path, ahead of PYTHONPATH
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the benchmark of {rev} failed: {done.stderr[-800:]}")
        result = json.loads(next(line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")))
    return {"rev": rev, **result}
