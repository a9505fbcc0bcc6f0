"""What a search optimizes: one quality objective (or one per task) and optional cost objectives.

A study's objectives come from ``search.objective`` and ``search.cost``
(:class:`~automtl.config.SearchConfig`), in this order:

1. quality, maximized, from the validation metrics of the trained candidate:

   * ``delta_m``: Δm in percent against single-task baselines (:func:`automtl.metrics.delta_m`);
   * ``mean_score``: mean over tasks of the direction-adjusted metric
     (:func:`automtl.metrics.aggregate_score`);
   * ``weighted``: ``Σ_t w_t s_t m_t / Σ_t w_t`` over the tasks with a finite metric, ``w_t``
     the user's weight (0 for an unnamed task), ``s_t = ±1`` the metric's direction;
   * ``per_task``: ``s_t m_t`` for every task, one objective each;

2. cost, minimized, measured on the untrained network (:mod:`automtl.cost`): ``n_params``,
   ``flops``, ``latency_ms``.

With more than one objective the study is multi-objective; its result is the Pareto front
(``Study.best_trials``), not one best trial. This module knows nothing of Optuna.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from automtl.config import SearchConfig
from automtl.cost import COSTS
from automtl.errors import ConfigError
from automtl.metrics import DELTA_M_CONVENTION, aggregate_score, delta_m, direction_of
from automtl.tasks import TaskSpec

__all__ = ["ObjectiveSpec", "weighted_score"]

_QUALITY_TEXT = {
    "delta_m": f"delta_m (%, higher is better): {DELTA_M_CONVENTION}; baselines on validation",
    "mean_score": "mean_score: mean over tasks of the direction-adjusted validation metric (higher is better)",
    "weighted": "weighted: weighted mean over tasks of the direction-adjusted validation metric (higher is better)",
    "per_task": "per_task: each task's direction-adjusted validation metric, one objective each (higher is better)",
}


def weighted_score(metrics: Mapping[str, float], tasks: Sequence[TaskSpec], weights: Mapping[str, float]) -> float:
    """``Σ_t w_t s_t m_t / Σ_t w_t`` over tasks with a finite metric and ``w_t > 0``.

    Raises:
        ValueError: No task with a positive weight has a finite metric.
    """
    num = den = 0.0
    for task in tasks:
        w, value = weights.get(task.name, 0.0), metrics[task.name]
        if w <= 0 or math.isnan(value):
            continue
        num += w * (value if direction_of(task.metric) == "maximize" else -value)
        den += w
    if den == 0:
        raise ValueError("no task with a positive weight has a finite metric")
    return num / den


@dataclass(frozen=True)
class ObjectiveSpec:
    """The objectives of one study.

    Attributes:
        quality: ``delta_m``, ``mean_score``, ``weighted`` or ``per_task``.
        tasks: The data set's tasks, in order.
        weights: Task weights of ``weighted``.
        cost: Cost objective names (:data:`automtl.cost.COSTS`).
    """

    quality: str
    tasks: tuple[TaskSpec, ...]
    weights: dict[str, float] = field(default_factory=dict)
    cost: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: SearchConfig, tasks: Sequence[TaskSpec]) -> ObjectiveSpec:
        """Raises ConfigError when a weighted objective names a task the data set lacks."""
        names = [t.name for t in tasks]
        for task in config.objective_weights:
            if task not in names:
                raise ConfigError(f"search.objective.weighted.{task}", f"no such task; the tasks are {names}")
        return cls(config.objective, tuple(tasks), dict(config.objective_weights), tuple(config.cost))

    @property
    def quality_names(self) -> list[str]:
        if self.quality == "per_task":
            return [f"val {t.name}" for t in self.tasks]
        return [self.quality]

    @property
    def names(self) -> list[str]:
        """Objective names in value order, e.g. ``["delta_m", "n_params"]``."""
        return self.quality_names + list(self.cost)

    @property
    def directions(self) -> list[str]:
        return ["maximize"] * len(self.quality_names) + ["minimize"] * len(self.cost)

    @property
    def is_multi(self) -> bool:
        return len(self.names) > 1

    def describe(self) -> str:
        """One line per objective: what it is and which way is better."""
        lines = [_QUALITY_TEXT[self.quality]]
        lines += [f"{c} ({COSTS[c].unit}, lower is better)" for c in self.cost]
        return "; ".join(lines)

    def quality_values(self, val_metrics: Mapping[str, float], baseline: Mapping[str, float] | None) -> list[float]:
        """The quality objective(s) of validation metrics ``{task: metric}``.

        Raises:
            ValueError: ``delta_m`` without a baseline.
        """
        if self.quality == "delta_m":
            if baseline is None:
                raise ValueError("the delta_m objective needs single-task baseline metrics")
            return [delta_m(val_metrics, baseline, self.tasks)]
        if self.quality == "mean_score":
            return [aggregate_score(val_metrics, self.tasks)]
        if self.quality == "weighted":
            return [weighted_score(val_metrics, self.tasks, self.weights)]
        return [
            val_metrics[t.name] if direction_of(t.metric) == "maximize" else -val_metrics[t.name] for t in self.tasks
        ]

    def values(
        self, val_metrics: Mapping[str, float], baseline: Mapping[str, float] | None, costs: Mapping[str, float]
    ) -> list[float]:
        """Every objective value in :attr:`names` order."""
        return self.quality_values(val_metrics, baseline) + [float(costs[c]) for c in self.cost]
