"""Datasets and episodic task sampling (numpy + pillow only: the runtime reuses them)."""

from .classes import ImageClasses, load_class_folders
from .sampler import Task, TaskSampler

__all__ = ["ImageClasses", "load_class_folders", "Task", "TaskSampler"]
