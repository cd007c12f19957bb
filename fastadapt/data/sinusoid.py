"""The MAML paper's sinusoid regression family (Finn et al., 2017, section 5.1).

A task is y = A sin(x - phase) with A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5].
Task ``i`` depends only on (seed, i), like the image sampler.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, np.pi)
X_RANGE = (-5.0, 5.0)


@dataclass
class RegressionTask:
    support_x: np.ndarray  # (K, 1) float32
    support_y: np.ndarray  # (K, 1) float32
    query_x: np.ndarray
    query_y: np.ndarray
    amplitude: float
    phase: float


class SinusoidSampler:
    def __init__(self, shots: int = 10, query: int = 10, seed: int = 0):
        self.shots, self.query, self.seed = shots, query, seed

    def task(self, index: int) -> RegressionTask:
        rng = np.random.default_rng([self.seed, index])
        amplitude = rng.uniform(*AMPLITUDE)
        phase = rng.uniform(*PHASE)
        x = rng.uniform(*X_RANGE, size=(self.shots + self.query, 1)).astype(np.float32)
        y = (amplitude * np.sin(x - phase)).astype(np.float32)
        return RegressionTask(x[: self.shots], y[: self.shots], x[self.shots:], y[self.shots:],
                              float(amplitude), float(phase))
