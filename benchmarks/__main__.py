"""Run the benchmark suite and write benchmarks/RESULTS.md (+ results.json).

    python -m benchmarks                      # everything (time to accuracy: up to 5 x 12 min)
    python -m benchmarks --only adaptation    # one or more sections, comma-separated
    python -m benchmarks --threads 1
    python -m benchmarks --only real,unknown  # accuracy on pictures from other packages; unknown detection

Sections: training (vs higher), adaptation (runtime vs torch, end to end, prediction), footprint,
time (time to 95% validation accuracy), before (training and adaptation on the code before the
performance work, for the before/after table), real (adaptation variants on image sets built from
scikit-learn, scikit-image and matplotlib pictures and PIL drawings; needs the bench extra), unknown
(unknown detection on Omniglot); gpu, only when named (meta-training on a CUDA GPU vs higher).
Sections not run keep their previous results from results.json, so
the table is always complete. The speed sections need the training extra and `pip install higher`.
Speed is never asserted: these are measurements, not tests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform

from .common import REPO, machine
from .report import render

SECTIONS = ("training", "adaptation", "footprint", "time", "before", "real", "unknown")
ON_REQUEST = ("gpu",)  # not in the default run: meta-training on a CUDA GPU vs higher (--only gpu; gpu.py)
OUT = REPO / "benchmarks"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for the latency sections")
    parser.add_argument("--iterations", type=int, default=6, help="meta-iterations per training measurement")
    parser.add_argument("--minutes", type=float, default=12.0, help="time-to-accuracy budget per run")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per image set of the real section")
    parser.add_argument("--tasks", type=int, default=200, help="tasks of the unknown section (at most 4 minutes)")
    parser.add_argument("--model", default=None, help="the real section's model: a built-in name (characters, "
                        "photos) or a bundle; other than the default, its results go to the section real_<name>")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS) - set(ON_REQUEST)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS + ON_REQUEST)}")
    if "gpu" in chosen:
        from .gpu import require_cuda
        require_cuda()  # before any section runs

    results_path = OUT / "results.json"
    import onnxruntime
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:  # the real and unknown sections run on the runtime alone
        torch_version = "not installed"

    for section in chosen:
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        if section == "training":
            from . import training
            data = training.run(iterations=args.iterations)
        elif section == "adaptation":
            from . import adaptation
            data = adaptation.run(threads=args.threads)
        elif section == "footprint":
            from . import footprint
            data = footprint.run()
        elif section == "time":
            from . import time_to_accuracy
            data = time_to_accuracy.run(minutes=args.minutes)
        elif section == "before":
            from . import before
            data = before.run(iterations=args.iterations)
        elif section == "real":
            from . import real
            data = real.run(episodes=args.episodes, model_name=args.model)
            if args.model not in (None, "characters"):
                section = "real_" + os.path.splitext(os.path.basename(args.model))[0]
        elif section == "gpu":
            from . import gpu
            data = gpu.run()
        else:
            from . import unknown
            data = unknown.run(tasks=args.tasks)
        data["measured"] = {"at": started, "machine": machine(), "torch": torch_version,
                            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
        # read the file again: other sections may have been written meanwhile (a run takes minutes)
        results = json.loads(results_path.read_text()) if results_path.exists() else {}
        results[section] = data
        tmp = results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(results_path)  # each finished section is kept, even if a later one fails
        (OUT / "RESULTS.md").write_text(render(results))
    print(f"wrote {OUT / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
