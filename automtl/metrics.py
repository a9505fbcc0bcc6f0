"""Per-task scores and their aggregate.

Each metric has a direction (``maximize`` or ``minimize``). The search objective
``mean_score`` is the mean over tasks of the direction-adjusted metric (``+m`` for maximized
metrics, ``-m`` for minimized ones), so higher is always better. With the defaults
(AUROC, accuracy, R²) every term is unit-free and at most 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from automtl.registry import Registry
from automtl.tasks import TaskSpec

__all__ = ["DELTA_M_CONVENTION", "METRICS", "Metric", "aggregate_score", "compute_metric", "delta_m", "direction_of", "mean_std", "nanmean"]


@dataclass(frozen=True)
class Metric:
    """A per-task score.

    Attributes:
        fn: ``fn(output, target, task) -> float`` on labelled samples only (raw outputs: logits
            or standardized regression values; targets in the layout of :mod:`automtl.tasks`).
        direction: ``"maximize"`` or ``"minimize"``.
        unit: Unit of the value, for printing.
    """

    fn: Callable[[torch.Tensor, torch.Tensor, TaskSpec], float]
    direction: str
    unit: str


METRICS: Registry[Metric] = Registry("metric")


def _auroc_1d(score: torch.Tensor, target: torch.Tensor) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic, ties counted half."""
    pos = target > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    score = score.double()
    sorted_scores, order = torch.sort(score)
    ranks = torch.empty_like(sorted_scores)
    ranks[order] = torch.arange(1, len(score) + 1, dtype=torch.float64, device=score.device)
    # average the ranks of tied scores
    _uniq, inverse, counts = torch.unique(sorted_scores, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts + 1
    avg_rank = (first + (counts - 1) / 2.0).double()
    ranks[order] = avg_rank[inverse]
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _auroc(output: torch.Tensor, target: torch.Tensor, task: TaskSpec) -> float:
    if output.dim() == 1:
        return _auroc_1d(output, target)
    values = [_auroc_1d(output[:, j], target[:, j]) for j in range(output.shape[1])]
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _accuracy(output: torch.Tensor, target: torch.Tensor, task: TaskSpec) -> float:
    if task.type == "multiclass":
        pred = output.argmax(dim=1)
        return float((pred == target.long()).double().mean())
    return float(((output > 0).to(target.dtype) == target).double().mean())


def _balanced_accuracy(output: torch.Tensor, target: torch.Tensor, task: TaskSpec) -> float:
    if task.type == "multiclass":
        pred, true, n_cls = output.argmax(dim=1), target.long(), int(task.num_classes or 0)
    else:
        pred, true, n_cls = (output > 0).long().flatten(), target.long().flatten(), 2
    recalls = [float((pred[true == c] == c).double().mean()) for c in range(n_cls) if bool((true == c).any())]
    return sum(recalls) / len(recalls) if recalls else float("nan")


def _unscaled_error(output: torch.Tensor, target: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    return (output.double() - target.double()) * task.target_std


def _r2(output: torch.Tensor, target: torch.Tensor, task: TaskSpec) -> float:
    t = target.double()
    ss_tot = float(((t - t.mean()) ** 2).sum())
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(((output.double() - t) ** 2).sum()) / ss_tot


def _mae(output: torch.Tensor, target: torch.Tensor, task: TaskSpec) -> float:
    return float(_unscaled_error(output, target, task).abs().mean())


def _rmse(output: torch.Tensor, target: torch.Tensor, task: TaskSpec) -> float:
    return float((_unscaled_error(output, target, task) ** 2).mean().sqrt())


METRICS.add("auroc", Metric(_auroc, "maximize", "AUROC (0-1)"))
METRICS.add("accuracy", Metric(_accuracy, "maximize", "fraction correct (0-1)"))
METRICS.add("balanced_accuracy", Metric(_balanced_accuracy, "maximize", "mean per-class recall (0-1)"))
METRICS.add("r2", Metric(_r2, "maximize", "R² (1 is perfect)"))
METRICS.add("mae", Metric(_mae, "minimize", "mean absolute error (target unit)"))
METRICS.add("rmse", Metric(_rmse, "minimize", "root mean squared error (target unit)"))


def direction_of(metric_name: str) -> str:
    """``"maximize"`` or ``"minimize"`` for a registered metric."""
    return METRICS.get(metric_name).direction


def compute_metric(task: TaskSpec, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """``task``'s metric on the labelled samples (``mask`` True); NaN if none is labelled.

    Args:
        output: Head outputs ``[N]`` or ``[N, C]`` for a whole split.
        target: Labels ``[N]`` or ``[N, L]``.
        mask: Bool ``[N]``.
    """
    if not bool(mask.any()):
        return float("nan")
    return METRICS.get(task.metric).fn(output[mask], target[mask], task)


def aggregate_score(metrics: Mapping[str, float], tasks: Sequence[TaskSpec]) -> float:
    """The ``mean_score`` objective: mean over tasks of the direction-adjusted metric.

    ``score = (1/T) Σ_t s_t·m_t`` with ``s_t = +1`` for a maximized metric and ``-1`` for a
    minimized one; higher is better. Tasks whose metric is NaN (no labelled sample) are left
    out of the mean.

    Raises:
        ValueError: If no task has a finite metric.
    """
    terms = []
    for task in tasks:
        value = metrics[task.name]
        if math.isnan(value):
            continue
        terms.append(value if direction_of(task.metric) == "maximize" else -value)
    if not terms:
        raise ValueError("no task has a finite metric to aggregate")
    return sum(terms) / len(terms)


def delta_m(metrics: Mapping[str, float], baseline: Mapping[str, float], tasks: Sequence[TaskSpec]) -> float:
    """Δm: task-averaged relative change against the single-task baseline, in percent.

    ``Δm = (100/T) Σ_t s_t·(M_t − B_t)/|B_t|`` with ``s_t = +1`` when higher is better and
    ``−1`` when lower is better, so **positive is better** (Maninis et al., CVPR 2019;
    Vandenhende et al., TPAMI 2021, eq. 10; one metric per task, so task- and metric-averaged
    agree). Tasks whose metric or baseline is NaN, or whose baseline is 0, are left out.

    Args:
        metrics: The model's metric per task.
        baseline: The single-task network's metric per task (same split).
        tasks: Task descriptions (their ``metric`` gives the direction).

    Returns:
        Δm in percent (``+1.0`` = 1 % better on average).

    Raises:
        ValueError: If no task can be compared.
    """
    terms = []
    for task in tasks:
        m, b = metrics.get(task.name, float("nan")), baseline.get(task.name, float("nan"))
        if math.isnan(m) or math.isnan(b) or b == 0.0:
            continue
        sign = 1.0 if direction_of(task.metric) == "maximize" else -1.0
        terms.append(sign * (m - b) / abs(b))
    if not terms:
        raise ValueError("Δm: no task has both a metric and a non-zero baseline")
    return 100.0 * sum(terms) / len(terms)


DELTA_M_CONVENTION = (
    "Δm = (100/T) Σ_t s_t (M_t − B_t)/|B_t| against single-task baselines B, s_t = +1 if higher is better "
    "else −1; positive is better (Vandenhende et al., TPAMI 2021, eq. 10)"
)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value) of per-seed values; NaN
    for both when any value is NaN (a task without labels in a split), infinite values as they are.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("mean_std of no values")
    if any(math.isnan(v) for v in values):
        return float("nan"), float("nan")
    mean = math.fsum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def nanmean(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN; NaN when none is."""
    kept = [v for v in values if not math.isnan(v)]
    return math.fsum(kept) / len(kept) if kept else float("nan")
