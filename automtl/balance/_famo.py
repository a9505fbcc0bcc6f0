"""FAMO (Liu et al., NeurIPS 2023): weights that make every task's log-loss fall at one rate."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from automtl.balance._base import Balancer, HParam, StepContext, register_balancer
from automtl.balance._optim import ScalarAdam

__all__ = ["FAMO"]

_EPS = 1e-8


@register_balancer("famo")
class FAMO(Balancer):
    """Fast Adaptive Multitask Optimization: O(1) balancing of the log-loss decrease.

    With task logits ``ξ`` ``[T]`` (initially 0), ``z = softmax(ξ)`` over the tasks labelled in
    the batch and ``c = (Σ_t z_t / L_t)^{-1}``, the network's gradient is
    ``Σ_t (c z_t / L_t) ∇L_t`` — the gradient of ``Σ_t z_t log L_t`` rescaled by ``c``, so the
    weights ``c z_t / L_t`` sum to 1 (Liu, Feng, Stone and Liu, NeurIPS 2023, Alg. 1).

    The logits then follow the observed decrease of the log-losses,
    ``δ_t = log L_t(θ_prev) − log L_t(θ)``: ``ξ ← ξ − β (∇_ξ zᵀ δ + γ ξ)``, with Adam as in the
    official code (``∇_ξ zᵀ δ = z ⊙ (δ − zᵀδ)``): a task whose loss fell faster than the
    others loses weight. Unlike the official code, which runs an extra forward pass after each
    step to get ``L(θ_new)`` on the same batch, ``δ`` here compares each step's losses with the
    previous step's (on the next batch), saving that pass; only tasks labelled in both
    batches take part in the logit update.

    Args:
        tasks: Every task name.
        gamma: ``γ``, the logits' weight decay. The official code uses 1e-5 (class default)
            and 1e-3 (QM9 script); default 1e-3, searched in [1e-5, 1e-2] (log).
        lr: ``β``, the logits' Adam step size; official 0.025. Searched in [0.005, 0.1] (log).

    Raises:
        ValueError: ``gamma < 0`` or ``lr <= 0``.
    """

    paper = "Liu, Feng, Stone, Liu. FAMO: fast adaptive multitask optimization. NeurIPS 2023, Alg. 1"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {
        "gamma": HParam(default=1e-3, low=1e-5, high=1e-2, log=True, doc="γ, logits' weight decay; official 1e-5 and 1e-3"),
        "lr": HParam(default=0.025, low=0.005, high=0.1, log=True, doc="β, logits' Adam step size; official 0.025"),
    }

    def __init__(self, tasks: Sequence[str], gamma: float = 1e-3, lr: float = 0.025) -> None:
        super().__init__(tasks)
        if not (gamma >= 0 and math.isfinite(gamma)):
            raise ValueError(f"FAMO gamma must be finite and >= 0, got {gamma}")
        if not lr > 0:
            raise ValueError(f"FAMO lr must be > 0, got {lr}")
        self.gamma, self.lr = float(gamma), float(lr)
        n = len(self.tasks)
        self._index = {t: i for i, t in enumerate(self.tasks)}
        self._logits = [0.0] * n
        self._previous: list[float | None] = [None] * n
        self._adam = ScalarAdam(n, lr=self.lr, weight_decay=self.gamma)

    @property
    def logits(self) -> torch.Tensor:
        """The task logits ``ξ``, ``[T]``."""
        return torch.tensor(self._logits)

    def get_extra_state(self) -> dict[str, Any]:
        return {"logits": list(self._logits), "previous": list(self._previous), "adam": self._adam.state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._logits, self._previous = list(state["logits"]), list(state["previous"])
        self._adam.load(state["adam"])

    def backward(self, losses: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        if not losses:
            return {}
        idx = [self._index[t] for t in losses]
        stacked = torch.stack(list(losses.values()))
        # one device-to-host copy; the logs are taken on the host, in float64
        log_losses = [math.log(max(v, 0.0) + _EPS) for v in stacked.detach().tolist()]
        self.update_logits(idx, log_losses)
        weights = self.weights(idx, log_losses)
        (torch.tensor(weights, dtype=stacked.dtype, device=stacked.device) @ stacked).backward()
        return dict(zip(losses, weights))

    def weights(self, idx: list[int], log_losses: list[float]) -> list[float]:
        """``c z_t / L_t`` for the tasks ``idx`` with log-losses ``log_losses``; sums to 1."""
        z = _softmax([self._logits[i] for i in idx])
        scaled = [zi * math.exp(-lg) for zi, lg in zip(z, log_losses)]
        total = sum(scaled)
        return [v / total for v in scaled]

    def update_logits(self, idx: list[int], log_losses: list[float]) -> None:
        """One Adam step of ``ξ`` on ``∇_ξ zᵀ δ`` (tasks labelled now and at the previous step),
        then remember ``log_losses`` for the next step."""
        both = [(i, prev, now) for i, now in zip(idx, log_losses) if (prev := self._previous[i]) is not None]
        if both:
            z = _softmax([self._logits[i] for i, _, _ in both])
            delta = [prev - now for _, prev, now in both]
            mean = sum(zi * d for zi, d in zip(z, delta))
            self._adam.step(self._logits, {i: zi * (d - mean) for (i, _, _), zi, d in zip(both, z, delta)})
        self._previous = [None] * len(self._previous)
        for i, value in zip(idx, log_losses):
            self._previous[i] = value


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]
