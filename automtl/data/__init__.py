"""Named multi-task data sets as tensors with per-task labels and label masks."""

from __future__ import annotations

from automtl.data._base import (
    DATASETS,
    SPLITS,
    MultiTaskData,
    Split,
    load_dataset,
    register_dataset,
)
from automtl.data._preprocess import ArrayInput, Preprocess, TableInput, TargetLabels

# Importing the modules registers their data sets.
from automtl.data import _csv, _fashion_scenes, _star  # noqa: F401  isort: skip
from automtl.data._summary import describe_data

__all__ = [
    "DATASETS",
    "SPLITS",
    "ArrayInput",
    "MultiTaskData",
    "Preprocess",
    "Split",
    "TableInput",
    "TargetLabels",
    "describe_data",
    "load_dataset",
    "register_dataset",
]
