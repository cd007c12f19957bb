"""curves.png of a run folder: training loss and accuracy, and the validation score, against iterations."""

from __future__ import annotations

import io
import os

import numpy as np

from ..errors import warn
from ..outputs import write_atomic
from .run import read_metrics


def moving_average(values, weight: float = 0.9) -> np.ndarray:
    """Exponential moving average (debiased, as TensorBoard's smoothing): each point is the weighted mean
    of the points up to it, recent ones counting most, so the curve starts at the first value."""
    smoothed, mean = [], 0.0
    for i, v in enumerate(values, 1):
        mean = weight * mean + (1 - weight) * v
        smoothed.append(mean / (1 - weight ** i))
    return np.asarray(smoothed)


def smoothing_weight(points: int) -> float:
    """Heavier smoothing for longer runs: about the last ``points / 50`` points (at least 1) count."""
    return 1 - 1 / max(1.0, points / 50)


def plot_curves(rundir: str, chance: float | None = None) -> None:
    """Write RUNDIR/curves.png from RUNDIR/metrics.jsonl. Training curves are drawn raw (faint) with their
    moving average over them; ``chance`` (accuracy % of guessing, 100 / ways) as a dashed line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warn("matplotlib is not installed: no curves.png (pip install 'fastadapt[train]')")
        return
    rows = read_metrics(rundir)  # numbers only: damaged rows are left out
    train_rows = [r for r in rows if "loss" in r]
    key = "val_mse" if any("val_mse" in r for r in rows) else "val_accuracy"
    val_rows = [r for r in rows if "val_ci95" in r and key in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    weight = smoothing_weight(len(train_rows))

    def train_curve(ax, key: str, label: str) -> None:
        its, values = zip(*[(r["iteration"], r[key]) for r in train_rows if key in r])
        line, = ax.plot(its, values, alpha=0.25, linewidth=0.8)
        ax.plot(its, moving_average(values, weight), color=line.get_color(), label=f"{label} (smoothed)")

    if train_rows:
        train_curve(axes[0], "loss", "train query loss")
    axes[0].set_xlabel("iteration")
    axes[0].set_title("meta-training loss")
    if any("accuracy" in r for r in train_rows):
        train_curve(axes[1], "accuracy", "train query accuracy")
    if val_rows:
        v = np.array([r[key] for r in val_rows])
        ci = np.array([r["val_ci95"] for r in val_rows])
        vi = [r["iteration"] for r in val_rows]
        axes[1].errorbar(vi, v, yerr=ci, marker="o", capsize=3, label=f"validation ({key})")
    if chance is not None and key == "val_accuracy":
        axes[1].axhline(chance, color="gray", linestyle="--", linewidth=1, label=f"chance ({chance:.3g}%)")
    axes[1].set_xlabel("iteration")
    axes[1].set_title("accuracy %" if key == "val_accuracy" else "validation MSE")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_atomic(os.path.join(rundir, "curves.png"), buffer.getvalue())
