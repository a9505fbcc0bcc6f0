"""Shared pieces of the search benchmarks (``search_vs_random.py``, ``ground_truth.py``):
configurations with an explicit search section, best-so-far curves and order statistics.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from automtl.config import SearchConfig, parse_config

__all__ = ["best_so_far", "fmt", "mean_std", "median_range", "quartiles", "with_search"]


def with_search(config: SearchConfig, **search: Any) -> SearchConfig:
    """``config`` with its ``search`` section updated by ``search`` (e.g. ``objective``, ``sampler``).

    The raw mapping is changed and parsed again, so that the study records the same values
    that the search used (``export`` re-reads the objective from the stored mapping).
    """
    raw: dict[str, Any] = {"name": config.name, **config.raw}
    raw["search"] = {**dict(raw.get("search") or {}), **search}
    return parse_config(raw, config.source, trust_code=config.trust_code)


def best_so_far(values: Sequence[float | None]) -> list[float | None]:
    """Running maximum of ``values`` in trial order; ``None`` (pruned or failed) never counts."""
    best: float | None = None
    out: list[float | None] = []
    for v in values:
        if v is not None and (best is None or v > best):
            best = v
        out.append(best)
    return out


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile (``statistics.quantiles``, inclusive method)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def fmt(value: float | None, digits: int = 2) -> str:
    """A number with a sign, or ``-`` for none."""
    return "-" if value is None else f"{value:+.{digits}f}"


def median_range(values: Sequence[float | None]) -> str:
    """``median [min, max]`` over the values that exist, e.g. over seeds."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    return (
        f"{fmt(statistics.median(present))} [{fmt(min(present))}, {fmt(max(present))}]"
    )


def mean_std(stats: Mapping[str, float]) -> str:
    """``mean ± std`` of a ``{"mean", "std"}`` mapping."""
    return f"{stats['mean']:+.2f} ± {stats['std']:.2f}"
