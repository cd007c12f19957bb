"""On-device adaptation and prediction latency: the runtime (onnxruntime) vs torch eager.

Both adapt the same meta-parameters on the same support set with the same recipe: the head
initialisation, then k SGD steps (torch: ``inner_loop.adapt``, the function the model was trained
with; runtime: ``Model.adapt_arrays``, the exported step graph). Both run with the same number of
intra-op threads. Images are already preprocessed, so this times the adaptation itself; the
end-to-end rows add reading PNG files from a folder, as ``fastadapt adapt --shots DIR`` does.

Full-network adaptation uses the shipped default model; head-only (ANIL) adaptation uses an ANIL
bundle made here by a 2-iteration ``fastadapt train --algorithm anil`` + ``fastadapt export`` (latency
does not depend on how well the weights are trained).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from .common import REPO, data_source, median, percentile, repeat_ms, sgemm_peak_gflops

CACHE = REPO / "benchmarks" / ".cache"
SHAPES = ((5, 5), (20, 1))  # (ways, shots)
STEPS = (1, 5, 10)


def anil_bundle(data: str) -> str:
    """An exported ANIL (head-only) bundle, made once and cached."""
    path = CACHE / "anil.fadapt"
    if path.exists():
        return str(path)
    from fastadapt.meta_train.export_run import export_run
    from fastadapt.meta_train.run import TrainConfig
    from fastadapt.meta_train.trainer import train

    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rundir = os.path.join(tmp, "anil")
        train(TrainConfig(data=data, algorithm="anil", iterations=2, meta_batch=2, val_tasks=5, inner_steps=5,
                          head_init="prototype", device="cpu"), rundir, quiet=True)
        export_run(rundir, str(path))
    return str(path)


def support_set(data: str, ways: int, shots: int, seed: int = 0, model=None):
    """A real few-shot support set (uint8) from the held-out classes (Omniglot evaluation alphabets), at
    ``model``'s input size (the default and the ANIL bundle made here differ), else the sampler's default."""
    from fastadapt.data.sources import DEFAULT_SEED, DEFAULT_VAL_CLASSES
    from fastadapt.evaluation import unseen_class_sampler

    task = unseen_class_sampler(data, "auto", DEFAULT_SEED, DEFAULT_VAL_CLASSES,
                                getattr(model, "preprocess", None), ways, shots, 1, seed).task(0)
    return task.support_x, task.support_y


def torch_adapter(model_path: str, threads: int):
    """fn(images, labels, ways, steps): torch eager adaptation with the bundle's parameters and recipe."""
    import torch

    from fastadapt.bundle import read_bundle
    from fastadapt.meta_train import inner_loop as il
    from fastadapt.models import ModelSpec, build_model

    torch.set_num_threads(threads)
    manifest = read_bundle(model_path).manifest
    bundle = read_bundle(model_path)
    arch = {k: v for k, v in manifest["architecture"].items() if k != "feature_dim"}
    model = build_model(ModelSpec.from_dict(arch))
    params = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in bundle.params.items()}
    recipe = il.InnerLoop.from_dict(manifest["inner_loop"])

    def adapt(images, labels, ways, steps):
        x, y = torch.from_numpy(images), torch.from_numpy(labels)
        return il.adapt(model, params, x, y, ways, recipe, steps=steps, first_order=True)

    return adapt


def runtime_model(model_path: str, threads: int):
    os.environ["FASTADAPT_THREADS"] = str(threads)  # read when the sessions are made
    import fastadapt

    return fastadapt.load(model_path)


def time_side_by_side(runtime_fn, torch_fn, repeats: int = 15) -> tuple:
    """Median ms of each; interleaved rounds of consecutive calls, so drift on a shared machine hits both."""
    runtime_ms, torch_ms = [], []
    for _ in range(3):
        runtime_ms += repeat_ms(runtime_fn, repeats // 3 or 1, warmup=1)
        torch_ms += repeat_ms(torch_fn, repeats // 3 or 1, warmup=1)
    return median(runtime_ms), median(torch_ms)


def adaptation_rows(data: str, threads: int, repeats: int = 15) -> list:
    from fastadapt.images import to_float

    rows = []
    for kind, path in (("full", str(REPO / "fastadapt" / "assets" / "default.fadapt")), ("head-only", anil_bundle(data))):
        model = runtime_model(path, threads)
        torch_adapt = torch_adapter(path, threads)
        for ways, shots in SHAPES:
            sx, sy = support_set(data, ways, shots, model=model)
            images, classes = to_float(sx, model.preprocess), [str(c) for c in range(ways)]
            for steps in STEPS:
                ort_fn = lambda: model.adapt_arrays(images, sy, classes, steps=steps)  # noqa: E731
                torch_fn = lambda: torch_adapt(images, sy, ways, steps)  # noqa: E731
                ort_ms, torch_ms = time_side_by_side(ort_fn, torch_fn, repeats)
                rows.append({"adapt": kind, "ways": ways, "shots": shots, "steps": steps, "threads": threads,
                             "runtime_ms": ort_ms, "torch_ms": torch_ms, "ratio": ort_ms / torch_ms})
                print(rows[-1], flush=True)
    return rows


def write_shots(root: str, sx: np.ndarray, sy: np.ndarray) -> str:
    from PIL import Image

    for i, (image, label) in enumerate(zip(sx, sy)):
        folder = os.path.join(root, f"class{label:02d}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(255 - image[0]).save(os.path.join(folder, f"{i}.png"))  # back to dark-on-light
    return root


def end_to_end_rows(data: str, threads: int, repeats: int = 10) -> list:
    """``model.adapt(folder)`` from PNG files, with the bundle's own recipe (its number of steps)."""
    rows = []
    for kind, path in (("full", str(REPO / "fastadapt" / "assets" / "default.fadapt")), ("head-only", anil_bundle(data))):
        model = runtime_model(path, threads)
        sx, sy = support_set(data, 5, 5, model=model)
        with tempfile.TemporaryDirectory() as tmp:
            folder = write_shots(tmp, sx, sy)
            times = repeat_ms(lambda: model.adapt(folder), repeats)
        rows.append({"adapt": kind, "ways": 5, "shots": 5, "steps": int(model.recipe["steps"]), "threads": threads,
                     "end_to_end_ms": median(times)})
        print(rows[-1], flush=True)
    return rows


def prediction_rows(data: str, threads: int, repeats: int = 300) -> dict:
    """Latency of one image (preprocessed array, and a PNG path) and throughput of batches."""
    from fastadapt.images import to_float

    model = runtime_model(str(REPO / "fastadapt" / "assets" / "default.fadapt"), threads)
    sx, sy = support_set(data, 5, 5, model=model)
    adapted = model.adapt_arrays(to_float(sx, model.preprocess), sy, [str(c) for c in range(5)])
    x = to_float(sx, model.preprocess)
    one = x[:1]
    array_ms = repeat_ms(lambda: adapted.probabilities(one), repeats, warmup=10)
    with tempfile.TemporaryDirectory() as tmp:
        png = os.path.join(tmp, "q.png")
        from PIL import Image

        Image.fromarray(255 - sx[0, 0]).save(png)
        path_ms = repeat_ms(lambda: adapted.predict(png), repeats, warmup=10)
    batch = np.concatenate([x] * 11)[:256]
    batch_ms = repeat_ms(lambda: adapted.probabilities(batch), 10)
    return {"threads": threads, "array_p50_ms": median(array_ms), "array_p99_ms": percentile(array_ms, 99),
            "png_p50_ms": median(path_ms), "png_p99_ms": percentile(path_ms, 99),
            "batch": len(batch), "batch_images_per_s": len(batch) / (median(batch_ms) / 1000)}


def run(threads: int = 2) -> dict:
    data = data_source()
    peak_before = sgemm_peak_gflops()
    result = {"adaptation": adaptation_rows(data, threads), "end_to_end": end_to_end_rows(data, threads),
              "prediction": prediction_rows(data, threads)}
    return {**result, "sgemm_peak_gflops": [peak_before, sgemm_peak_gflops()],
            "input_size": runtime_model(str(REPO / "fastadapt" / "assets" / "default.fadapt"), threads).preprocess.size}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
