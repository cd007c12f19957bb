"""Shared fixtures: small exported bundles and folders of synthetic glyph images.

Bundles come from the real exporter (``fastadapt.meta_train.bundle_export.export_bundle``) on a random,
seeded width-16 Conv4 with InnerLoop(steps=3, lr=0.4). Exporting takes ~20 s, so the result is kept
in pytest's cache (.pytest_cache), keyed by the sources that shape it and the torch version;
``pytest --cache-clear`` rebuilds it (with the cache plugin off, ``-p no:cacheprovider``, it is
built once per session in a temporary folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE_SOURCES = ("fastadapt/meta_train/bundle_export.py", "fastadapt/meta_train/tracing.py",
                  "fastadapt/meta_train/onnx_rewrites.py", "fastadapt/meta_train/verification.py",
                  "fastadapt/meta_train/inner_loop.py",
                  "fastadapt/models/networks.py", "fastadapt/bundle.py", "fastadapt/images.py", "tests/conftest.py")
WIDTH, STEPS, LR = 16, 3, 0.4


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Inside each test, fastadapt's warnings (FastadaptWarning) print as the CLI prints them, one line
    "warning: ..." on stderr, so tests read them with capsys; pytest.warns still records them."""
    from fastadapt.errors import cli_warnings

    with cli_warnings():
        yield


def _cache_key() -> str:
    import torch

    digest = hashlib.sha256(torch.__version__.encode())
    for name in BUNDLE_SOURCES:
        with open(os.path.join(ROOT, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def rewrite_manifest(src: str, dst: str, **changes) -> None:
    """Copy a bundle with manifest keys changed (members untouched, so checksums still hold)."""
    with zipfile.ZipFile(src) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(members["manifest.json"])
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(manifest.get(key), dict):
            manifest[key] = {**manifest[key], **value}
        else:
            manifest[key] = value
    members["manifest.json"] = json.dumps(manifest).encode()
    members["manifest.sha256"] = hashlib.sha256(members["manifest.json"]).hexdigest().encode()
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _export(folder: str) -> None:
    import torch

    from fastadapt.images import Preprocess
    from fastadapt.meta_train.bundle_export import export_bundle
    from fastadapt.meta_train.inner_loop import InnerLoop
    from fastadapt.models import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(width=WIDTH)
    model = build_model(spec)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    recipe = InnerLoop(steps=STEPS, lr=LR, head_init="zero")
    provenance = {"algorithm": "none (random init, tests)", "config": {"seed": 0, "val_classes": 100}}
    evaluation = [{"accuracy_pct": 20.0, "ci95_pct": 1.5, "ways": 5, "shots": 1, "query": 15, "tasks": 600,
                   "evaluated_with": "torch"}]
    tmp = os.path.join(folder, "zero.fadapt.partial")
    export_bundle(tmp, model, spec, recipe, params, Preprocess(), provenance, evaluation)
    os.replace(tmp, os.path.join(folder, "zero.fadapt"))
    # The graphs do not depend on the head initialisation (the runtime builds the head), so the
    # prototype bundle is the same bundle with inner_loop.head_init changed.
    rewrite_manifest(os.path.join(folder, "zero.fadapt"), os.path.join(folder, "prototype.fadapt"),
                     inner_loop={"head_init": "prototype"})


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> str:
    """The shipped characters model adapted to the 8 example shapes (as 'fastadapt adapt --shots examples/shots'),
    saved once per test module (a module may define its own ``shapes``)."""
    import fastadapt

    path = tmp_path_factory.mktemp("shapes") / "shapes.fadapt"
    fastadapt.load().adapt(os.path.join(ROOT, "examples", "shots")).save(str(path))
    return str(path)


@pytest.fixture(scope="session")
def bundles(request, tmp_path_factory) -> dict:
    """{"zero": path, "prototype": path} of meta bundles (kind "meta"), shared by the session."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider: export once per session
    root = cache.mkdir("fastadapt-bundles") if cache is not None else tmp_path_factory.mktemp("bundle-cache")
    folder = os.path.join(str(root), _cache_key())
    if not os.path.exists(os.path.join(folder, "prototype.fadapt")):
        os.makedirs(folder, exist_ok=True)
        _export(folder)
    out = tmp_path_factory.mktemp("bundles")
    paths = {}
    for name in ("zero", "prototype"):
        paths[name] = str(out / f"{name}.fadapt")
        shutil.copyfile(os.path.join(folder, f"{name}.fadapt"), paths[name])
    return paths


def glyph_images(classes: int, per_class, seed: int = 0) -> dict:
    """{"class00": [PIL images], ...}; ``per_class`` is an int or a list (unbalanced)."""
    from fastadapt.data.synthetic import draw_glyph, glyph_strokes

    rng = np.random.default_rng(seed)
    counts = [per_class] * classes if isinstance(per_class, int) else list(per_class)
    out = {}
    for c, n in enumerate(counts):
        strokes = glyph_strokes(rng)
        out[f"class{c:02d}"] = [draw_glyph(strokes, rng) for _ in range(n)]
    return out


def save_folder(images: dict, root) -> str:
    """Write {label: [PIL images]} as root/<label>/<i>.png."""
    for label, items in images.items():
        os.makedirs(os.path.join(root, label), exist_ok=True)
        for i, image in enumerate(items):
            image.save(os.path.join(root, label, f"{i}.png"))
    return str(root)


@pytest.fixture(scope="session")
def glyphs(tmp_path_factory) -> dict:
    """A 5-class shots folder (3 images each) and a query folder (2 per class) of the same glyphs."""
    images = glyph_images(5, 5, seed=1)
    root = tmp_path_factory.mktemp("glyphs")
    shots = save_folder({k: v[:3] for k, v in images.items()}, root / "shots")
    queries = save_folder({k: v[3:] for k, v in images.items()}, root / "queries")
    return {"shots": shots, "queries": queries, "images": images}


@pytest.fixture
def one_thread():
    """Tiny models: intra-op threads only add synchronisation (10x slower on busy, shared cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def finished_run(tmp_path_factory, **config):
    """A finished 2-iteration run folder (last.npz and best.npz at iteration 2) of ``TrainConfig(**config)``."""
    import torch

    from fastadapt.meta_train.run import TrainConfig
    from fastadapt.meta_train.trainer import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add synchronisation on shared cores
    run = tmp_path_factory.mktemp("runs") / "run"
    try:
        train(TrainConfig(iterations=2, **config), str(run), quiet=True)
    finally:
        torch.set_num_threads(threads)
    return run


def copy_of_run(run, tmp_path):
    """A copy of a module's finished run that one test may damage."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def run_files(run) -> dict:
    """Every file of the run folder but its lock file (which holds the pid of its last trainer)."""
    return {name: (run / name).read_bytes() for name in sorted(os.listdir(run))
            if (run / name).is_file() and name != "train.lock"}
