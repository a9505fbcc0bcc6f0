"""Shared set-up of the affinity benchmarks: the two real configurations and a timing helper."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from automtl.config import SearchConfig, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


def quickstart_config() -> SearchConfig:
    """``search_spaces/quickstart.yaml``: fashion_scenes (11 tasks), small CNN with BatchNorm."""
    return load_config(ROOT / "search_spaces" / "quickstart.yaml")


def star_config(epochs: int = 5) -> SearchConfig:
    """STAR (8 regression tasks, 607 features) with the default MLP (256-128-64), AdamW, lr 1e-3."""
    return parse_config(
        {
            "name": "star",
            "data": {"name": "star", "options": {"seed": 0}},
            "backbone": {"name": "mlp"},
            "train": {"epochs": epochs, "batch_size": 128, "lr": 1.0e-3, "weight_decay": 1.0e-4},
            "device": "cpu",
        }
    )


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` over ``repeats`` runs (seconds), and every run's time."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties) of two 1-D arrays."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for v in np.unique(x):  # average ties
            tie = x == v
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    return float(np.corrcoef(ra, rb)[0, 1])
