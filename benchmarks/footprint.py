"""Footprint: installed size of the runtime-only install (``pip install fastadapt``) vs the training
install (``pip install "fastadapt[train]"``, torch 2.13 CPU), and peak memory of ``fastadapt adapt``.

Each install goes into a brand-new virtual environment, from this checkout. Sizes are of
site-packages without the venv's own seed packages (pip, setuptools), which every venv has anyway.
Peak RSS: ``fastadapt adapt`` on a 20-way 5-shot folder of Omniglot PNGs, run from the runtime-only
venv (what a device runs): the process's own high-water mark (VmHWM), largest of 3 runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .adaptation import support_set, write_shots
from .common import REPO, data_source

SEED_PACKAGES = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence.pth")


def _size_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            fp = os.path.join(root, name)
            if not os.path.islink(fp):
                total += os.path.getsize(fp)
    return total / 2 ** 20


def make_venv(where: Path, extras: str = "") -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    python = where / "bin" / "python"
    target = f"{REPO}[{extras}]" if extras else str(REPO)
    pins = ["torch==2.13.0"] if "train" in extras else []
    subprocess.run([str(python), "-m", "pip", "install", "-q", target, *pins], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return python


def site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def install_size(python: Path) -> dict:
    site = site_packages(python)
    sizes = {}
    for entry in site.iterdir():
        if entry.name.split("-")[0] in SEED_PACKAGES or entry.name in SEED_PACKAGES or entry.name.endswith(".dist-info"):
            continue
        sizes[entry.name] = _size_mb(entry) if entry.is_dir() else entry.stat().st_size / 2 ** 20
    total = sum(sizes.values()) + sum(_size_mb(e) for e in site.iterdir()
                                      if e.name.endswith(".dist-info") and e.name.split("-")[0] not in SEED_PACKAGES)
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:8]
    return {"total_mb": round(total, 1), "largest": [(name, round(mb, 1)) for name, mb in top]}


# Runs the CLI and reports its own peak RSS (VmHWM of its address space). Not the rusage of the child:
# Linux carries ru_maxrss across exec, so a child forked from this (torch-sized) process would report
# at least this process's size.
PEAK_WRAPPER = """
import atexit, sys
def report():
    with open('/proc/self/status') as f:
        sys.stderr.write(''.join('PEAK ' + l.split()[1] + '\\n' for l in f if l.startswith('VmHWM:')))
atexit.register(report)
sys.argv = ['fastadapt'] + sys.argv[1:]
from fastadapt.cli import main
main()
"""


def peak_rss_mb(python: Path, args: list, cwd: str) -> tuple:
    """(peak resident memory in MB, wall seconds) of ``fastadapt ARGS`` run by ``python``."""
    import time

    start = time.perf_counter()
    result = subprocess.run([str(python), "-c", PEAK_WRAPPER, *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"fastadapt {' '.join(args)} failed: {result.stderr[-500:]}")
    peak_kb = [int(line.split()[1]) for line in result.stderr.splitlines() if line.startswith("PEAK ")]
    return peak_kb[-1] / 1024, seconds


def run(with_torch: bool = True) -> dict:
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runtime_python = make_venv(tmp / "runtime")
        result["runtime_install"] = install_size(runtime_python)
        sx, sy = support_set(data_source(), 20, 5)
        shots = write_shots(str(tmp / "shots"), sx, sy)
        runs = [peak_rss_mb(runtime_python, ["adapt", "--shots", shots, "--out", str(tmp / f"a{i}.fadapt")], str(tmp))
                for i in range(3)]
        result["adapt_20w5s"] = {"peak_rss_mb": round(max(r[0] for r in runs), 1),
                                 "wall_s_median": round(sorted(r[1] for r in runs)[1], 3)}
        shutil.rmtree(tmp / "runtime")
        if with_torch:
            result["train_install"] = install_size(make_venv(tmp / "train", "train"))
    print(result, flush=True)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
