"""Episodic N-way K-shot task sampling, seeded per task so task ``i`` is the same everywhere.

Task ``i`` of a sampler depends only on (seed, i) and the dataset, which lets the trainer
(torch) and the runtime (onnxruntime) evaluate a model on exactly the same tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FastadaptError
from .classes import ImageClasses, few


@dataclass
class Task:
    support_x: np.ndarray  # (ways*shots, C, H, W) uint8
    support_y: np.ndarray  # (ways*shots,) int64, labels 0..ways-1
    query_x: np.ndarray
    query_y: np.ndarray
    classes: np.ndarray  # dataset class index of each label


def _folder_names(names: list, all_names: list) -> list:
    """The class folders behind ``names``: a rotated copy ('c00@rot90', see ImageClasses.with_rotations)
    counts as its folder 'c00', so the user is not sent looking for folders that do not exist."""
    present = set(all_names)
    folders = []
    for name in names:
        base, _, angle = name.rpartition("@rot")
        folder = base if angle in ("90", "180", "270") and base in present else name
        if folder not in folders:
            folders.append(folder)
    return folders


class TaskSampler:
    def __init__(self, data: ImageClasses, ways: int, shots: int, query: int, seed: int = 0,
                 where: str = "dataset"):
        if ways < 2:
            raise FastadaptError(f"--ways must be at least 2, got {ways}")
        if shots < 1:
            raise FastadaptError(f"--shots must be at least 1, got {shots}")
        if query < 1:
            raise FastadaptError(f"--query must be at least 1, got {query}")
        if ways > len(data):
            raise FastadaptError(f"--ways {ways} is larger than the {len(data)} classes of the {where}; lower --ways")
        need = shots + query
        small = [(n, len(x)) for n, x in zip(data.names, data.images) if len(x) < need]
        if small:
            name, count = small[0]
            folders = _folder_names([n for n, _ in small], data.names)
            raise FastadaptError(
                f"class '{name}' of the {where} has {count} images, fewer than --shots + --query = {need}"
                f" ({len(folders)} such class folder(s): {few(folders)}); lower --shots/--query or add images "
                f"to those folders")
        self.data, self.ways, self.shots, self.query, self.seed = data, ways, shots, query, seed

    def choose(self, index: int) -> tuple:
        """Task ``index``'s (classes, picks): ``ways`` dataset class indices, and per class the indices of
        its shots + query images within that class, support first ((ways, shots + query) int64).

        The whole task is this choice; ``task`` gathers the images on the host, the trainer gathers the
        same ones from a copy held on its device."""
        rng = np.random.default_rng([self.seed, index])
        classes = rng.choice(len(self.data), size=self.ways, replace=False)
        picks = np.stack([rng.choice(len(self.data.images[c]), size=self.shots + self.query, replace=False)
                          for c in classes])
        return classes, picks

    def task(self, index: int) -> Task:
        classes, picks = self.choose(index)
        k = self.shots
        images = [self.data.images[c] for c in classes]
        labels = np.arange(self.ways, dtype=np.int64)
        return Task(np.concatenate([x[p[:k]] for x, p in zip(images, picks)]), np.repeat(labels, k),
                    np.concatenate([x[p[k:]] for x, p in zip(images, picks)]), np.repeat(labels, self.query),
                    classes)
