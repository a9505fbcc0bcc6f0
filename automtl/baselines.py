"""Single-task baselines tuned like candidates, checked against a trivial predictor.

Δm measures a design against single-task networks (one network per task, nothing shared). So
that the reference is a fair one, the baselines get what candidates get:

1. **Tuning.** The single-task tree (every task split at branching point 0, equal weighting)
   is trained once per learning rate of :func:`lr_grid` (the space's learning-rate range at
   1/6, 1/2 and 5/6 of its log scale, or its listed choices, or its fixed value), with the
   seed :func:`automtl.seeds.baseline_tuning_seed`; the other training settings take
   :func:`automtl.space.default_value`. Tasks share no parameter and no gradient there, so each
   task's run at a rate is its own single-task network. Each task takes the rate with its best
   validation metric (ties: the first in grid order); ``B_tune`` is those metrics, the
   reference of the screening trials' Δm.
2. **Sanity.** Each task's tuned metric must beat a trivial predictor on validation
   (:func:`trivial_metrics`: the training prevalence for binary and multilabel tasks, the
   training class frequencies for multiclass ones, the training mean for regression); a task
   that does not fails the search with :class:`~automtl.errors.BaselineError`, naming the task
   and both numbers (Δm against a reference no better than a constant means nothing).
3. **Confirmation.** With every task at its chosen rate (:attr:`TrainConfig.lr_by_task`), the
   single-task networks are trained again with each confirmation seed; their mean is the
   reference of the confirmed Δm, and each seed's run is the obvious design "single-task
   networks" in the paired comparison (:mod:`automtl.confirm`).

The runs are jobs of :mod:`automtl.jobs`, so several workers share them and they are trained
once per study; the choice is recorded in the study (:class:`BaselineChoice`), so every worker
and every later ``show``/``export`` scores against the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from automtl.config import ParamSpec, SearchConfig
from automtl.data import MultiTaskData, Split
from automtl.errors import BaselineError
from automtl.metrics import compute_metric, direction_of
from automtl.space import Candidate, canonical, default_value
from automtl.tasks import TaskSpec
from automtl.train import TrainConfig
from automtl.tree import BranchTree

__all__ = [
    "BaselineChoice",
    "baseline_candidate",
    "check_sane",
    "choose",
    "confirm_job",
    "lr_grid",
    "trivial_metrics",
    "tuning_job_for",
    "tuning_jobs",
]

#: Where on the log scale of a learning-rate range the tuning grid lies.
GRID_QUANTILES: tuple[float, ...] = (1 / 6, 1 / 2, 5 / 6)


def lr_grid(spec: ParamSpec) -> list[float]:
    """The learning rates the baselines try (module docstring, step 1), canonically rounded."""
    if spec.kind == "fixed":
        return [canonical(float(spec.value))]
    if spec.kind == "choice":
        return [canonical(float(v)) for v in spec.choices]
    if spec.log:
        lo, hi = math.log(spec.low), math.log(spec.high)
        values = [math.exp(lo + q * (hi - lo)) for q in GRID_QUANTILES]
    else:
        values = [spec.low + q * (spec.high - spec.low) for q in GRID_QUANTILES]
    return sorted({canonical(float(v)) for v in values})


def _train_settings(config: SearchConfig, seed: int, **overrides: Any) -> TrainConfig:
    values = {k: default_value(v) for k, v in config.train.items()}
    values.update(overrides)
    return TrainConfig(seed=seed, **values)


def baseline_candidate(config: SearchConfig, tasks: Sequence[str], n_blocks: int, seed: int, **train: Any) -> Candidate:
    """The single-task networks with equal weighting, training settings of the config's
    defaults with ``train`` overriding (``lr`` or ``lr_by_task``), seed ``seed``."""
    return Candidate(BranchTree.single_task(tasks, n_blocks), "equal", {}, _train_settings(config, seed, **train))


def tuning_jobs(config: SearchConfig, seed: int) -> list[dict[str, Any]]:
    """One job per learning rate of :func:`lr_grid` (step 1 of the module docstring)."""
    return [
        {"key": f"baseline-tune/{lr!r}", "kind": "baseline", "lr": lr, "seed": seed, "what": f"single-task networks at lr {lr:g}"}
        for lr in lr_grid(config.train["lr"])
    ]


def tuning_job_for(candidate: Candidate, config: SearchConfig, tasks: Sequence[str], n_blocks: int) -> str | None:
    """The key of the tuning job that trained ``candidate``'s design (any seed), or ``None``: a
    search answers that trial from the baselines instead of training the design again."""
    key = candidate.key()
    for lr in lr_grid(config.train["lr"]):
        if baseline_candidate(config, tasks, n_blocks, 0, lr=lr).key() == key:
            return f"baseline-tune/{lr!r}"
    return None


def confirm_job(lr_by_task: Mapping[str, float], seed: int, index: int) -> dict[str, Any]:
    """The single-task networks at their chosen rates with confirmation seed ``index``."""
    return {
        "key": f"baseline-confirm/{index}",
        "kind": "baseline",
        "lr_by_task": dict(lr_by_task),
        "seed": seed,
        "seed_index": index,
        "what": f"single-task networks, confirmation seed {index}",
    }


def trivial_metrics(data: MultiTaskData, split: str = "val") -> dict[str, float]:
    """Each task's metric for a constant predictor fitted on the training labels.

    Binary and multilabel: the logit of the training prevalence (AUROC 0.5); multiclass: the
    log of the training class frequencies (accuracy of the majority class); regression: the
    training mean, 0 in standardized units (R² at most 0).

    Returns:
        ``{task: metric}`` on ``split`` (NaN where the split has no label).
    """
    target = data.split(split)
    out = {}
    for task in data.tasks:
        out[task.name] = compute_metric(task, _constant_output(task, data.train, len(target)), target.y[task.name], target.mask[task.name])
    return out


def _constant_output(task: TaskSpec, train: Split, n: int) -> torch.Tensor:
    y, mask = train.y[task.name], train.mask[task.name]
    labelled = y[mask]
    if task.type == "regression":
        return torch.zeros(n)
    if task.type == "multiclass":
        counts = torch.bincount(labelled.long(), minlength=int(task.num_classes or 0)).double() + 1.0
        return torch.log(counts / counts.sum()).float().expand(n, -1)
    prevalence = labelled.float().mean(dim=0).clamp(1e-6, 1 - 1e-6) if len(labelled) else torch.tensor(0.5)
    logit = torch.log(prevalence / (1 - prevalence))
    return logit.expand(n) if task.type == "binary" else logit.expand(n, -1)


def _better(task: TaskSpec, a: float, b: float) -> bool:
    """Whether metric value ``a`` is strictly better than ``b`` for ``task``."""
    return a > b if direction_of(task.metric) == "maximize" else a < b


@dataclass
class BaselineChoice:
    """The tuned baselines of a study (recorded in it as ``baselines``).

    Attributes:
        grid: The learning rates tried.
        seed: The tuning runs' seed.
        val_by_lr: Per rate (its ``repr``), every task's validation metric.
        lr_by_task: The rate each task takes.
        val: Each task's validation metric at its rate: ``B_tune``, the screening reference.
        trivial: Each task's validation metric of the trivial predictor.
    """

    grid: list[float]
    seed: int
    val_by_lr: dict[str, dict[str, float]]
    lr_by_task: dict[str, float]
    val: dict[str, float]
    trivial: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BaselineChoice:
        return cls(**{k: d[k] for k in ("grid", "seed", "val_by_lr", "lr_by_task", "val", "trivial")})


def choose(tasks: Sequence[TaskSpec], grid: Sequence[float], seed: int, results: Mapping[float, Mapping[str, float]]) -> BaselineChoice:
    """Each task's best rate on validation (ties: the first in ``grid`` order; a task with no
    finite metric takes the middle rate).

    Args:
        tasks: The tasks.
        grid: The rates, in order.
        seed: The tuning seed (recorded).
        results: Per rate, the tuning run's validation metrics.
    """
    lr_by_task, val = {}, {}
    for task in tasks:
        best_lr, best = grid[len(grid) // 2], float("nan")
        for lr in grid:
            value = results[lr][task.name]
            if math.isnan(value):
                continue
            if math.isnan(best) or _better(task, value, best):
                best_lr, best = lr, value
        lr_by_task[task.name], val[task.name] = best_lr, best
    return BaselineChoice(list(grid), seed, {repr(lr): dict(results[lr]) for lr in grid}, lr_by_task, val)


def check_sane(choice: BaselineChoice, tasks: Sequence[TaskSpec]) -> None:
    """Raise unless every task's tuned baseline beats the trivial predictor on validation.

    Raises:
        BaselineError: Naming the first such task, its metric, both values and the rates tried.
    """
    for task in tasks:
        value, trivial = choice.val[task.name], choice.trivial.get(task.name, float("nan"))
        if math.isnan(value) or math.isnan(trivial):
            continue
        if not _better(task, value, trivial):
            rates = ", ".join(f"{lr:g}" for lr in choice.grid)
            raise BaselineError(
                f"single-task baseline of task '{task.name}' is no better than a constant predictor on validation: "
                f"{task.metric} {value:.4g} against {trivial:.4g} (learning rates tried: {rates}); check the task's "
                "labels and the training settings (train.lr, train.epochs), or leave the task out"
            )
