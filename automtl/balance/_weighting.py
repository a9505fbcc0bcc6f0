"""Loss-weighting strategies: equal, fixed, uncertainty weighting, DWA."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch

from automtl.balance._base import HParam, LossWeighting, register_balancer
from automtl.balance._task_scalars import TaskScalars

__all__ = ["DWA", "EqualWeighting", "FixedWeighting", "UncertaintyWeighting"]


@register_balancer("equal")
class EqualWeighting(LossWeighting):
    """Sum of the task losses, each with weight 1: ``L = Σ_t L_t``.

    The standard hard-parameter-sharing baseline (e.g. Vandenhende et al., TPAMI 2021, §2).
    """

    paper = "Sum of losses (baseline; Vandenhende et al., TPAMI 2021)"

    def combine(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return torch.stack(list(losses.values())).sum(), {t: 1.0 for t in losses}


@register_balancer("fixed")
class FixedWeighting(LossWeighting):
    """User-given constant weights: ``L = Σ_t w_t L_t``.

    Args:
        tasks: Every task name.
        weights: Weight of each task (finite, ``>= 0``); a task left out gets 1, so the
            default (no mapping) is equal weighting.

    Raises:
        ValueError: A weight is negative or not finite, or names an unknown task.
    """

    paper = "Fixed linear scalarization (baseline)"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {
        "weights": HParam(default={}, doc="mapping task -> weight (a task left out gets 1); not searched")
    }

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(tasks)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(tasks))
        if unknown:
            raise ValueError(f"fixed weights name unknown tasks {unknown}")
        for t, w in weights.items():
            if not (math.isfinite(float(w)) and float(w) >= 0):
                raise ValueError(f"fixed weight of task '{t}' must be finite and >= 0, got {w}")
        self.weights = {t: float(weights.get(t, 1.0)) for t in tasks}

    def combine(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return _weighted_sum(losses, {t: self.weights[t] for t in losses})


@register_balancer("uncertainty")
class UncertaintyWeighting(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018, eq. 7).

    With a learned ``s_t = log σ_t²`` per task,
    ``L = Σ_t ½·exp(−s_t)·L_t + ½·s_t``. For fixed ``L_t`` the minimum is at ``σ_t² = L_t``.
    The ``s_t`` are parameters of this module (initialised to 0), one per task
    (:class:`automtl.balance._task_scalars.TaskScalars`, state-dict keys ``log_vars.<i>``),
    trained by the same optimizer as the network: a task unlabelled in a step takes no part
    in ``L``, so its ``s_t`` gets no gradient (``None``) and the optimizer leaves it alone.
    """

    paper = "Kendall, Gal, Cipolla. Multi-task learning using uncertainty to weigh losses. CVPR 2018, eq. 7"

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        self.log_vars = TaskScalars(self.tasks)
        self.log_vars.accept_stacked(self, "log_vars")

    def combine(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Kendall et al.'s eq. 7 over the tasks of ``losses``.

        Args:
            losses: Scalar loss of every labelled task.

        Returns:
            ``Σ_t ½ e^{−s_t} L_t + ½ s_t`` and each task's weight ``½ e^{−s_t}``.
        """
        stacked = torch.stack(list(losses.values()))
        s = self.log_vars.select(losses)
        half_precision = 0.5 * torch.exp(-s)
        total = (half_precision.to(stacked.dtype) * stacked).sum() + 0.5 * s.sum()
        return total, dict(zip(losses, half_precision.detach().tolist()))


@register_balancer("dwa")
class DWA(LossWeighting):
    """Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019, eq. 7).

    ``w_t(e) = T·exp(r_t(e−1)/τ) / Σ_i exp(r_i(e−1)/τ)`` with ``r_t(e−1) = L_t(e−1)/L_t(e−2)``,
    the ratio of task ``t``'s mean training losses over the two previous epochs, and ``T`` the
    number of tasks, so the weights sum to ``T``. The first two epochs use ``w_t = 1``.

    Args:
        tasks: Every task name.
        temperature: τ; the paper uses 2. Searched in [0.5, 5] (log).
    """

    paper = "Liu, Johns, Davison. End-to-end multi-task learning with attention. CVPR 2019, eq. 7"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {
        "temperature": HParam(default=2.0, low=0.5, high=5.0, log=True, doc="τ; paper: 2 (softer as it grows)")
    }

    def __init__(self, tasks: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if not temperature > 0:
            raise ValueError(f"DWA temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self._history: list[dict[str, float]] = []
        self.current = {t: 1.0 for t in self.tasks}

    def on_epoch_end(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        self._history.append(dict(mean_losses))
        self._history = self._history[-2:]
        if len(self._history) < 2:
            return
        prev2, prev1 = self._history
        ratios = []
        for t in self.tasks:
            a, b = prev1.get(t), prev2.get(t)
            ratios.append(a / b if a is not None and b not in (None, 0.0) and math.isfinite(a / b) else 1.0)
        r = torch.tensor(ratios, dtype=torch.float64) / self.temperature
        w = len(self.tasks) * torch.softmax(r, dim=0)
        self.current = {t: float(w[i]) for i, t in enumerate(self.tasks)}

    def combine(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return _weighted_sum(losses, {t: self.current[t] for t in losses})


def _weighted_sum(losses: Mapping[str, torch.Tensor], weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """``Σ_t w_t L_t`` with Python-float weights, as one small matrix product."""
    stacked = torch.stack(list(losses.values()))
    w = torch.tensor([weights[t] for t in losses], dtype=stacked.dtype, device=stacked.device)
    return w @ stacked, weights
