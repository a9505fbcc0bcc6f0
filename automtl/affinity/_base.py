"""The contract of an affinity measure that runs inside training, and its running averages."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from automtl.build import BranchedNet
from automtl.data import Split
from automtl.train import BatchContext

__all__ = ["AffinityMeter", "shared_parameters", "task_gradients"]


def shared_parameters(net: BranchedNet) -> list[nn.Parameter]:
    """θ_s: the parameters of every tree node used by two or more tasks (in hard parameter
    sharing, the whole trunk), in a stable order.

    Raises:
        ValueError: If no parameter is shared (e.g. single-task networks): there is no
            transfer to measure.
    """
    seen: set[int] = set()
    shared = []
    for group in net.param_groups():
        if len(group.tasks) < 2:
            continue
        for p in group.params:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                shared.append(p)
    if not shared:
        raise ValueError(f"tree [{net.tree.compact()}] shares no parameter between tasks; affinity needs shared ones")
    return shared


def task_gradients(
    losses: Sequence[torch.Tensor], params: Sequence[nn.Parameter]
) -> list[list[torch.Tensor | None]]:
    """``∇_θ L_i`` for each loss, on ``params`` (``None`` where ``L_i`` does not reach a parameter).

    One backward pass per loss through the shared graph, which is freed after the last. (A
    single batched pass with ``is_grads_batched`` was 2.5× slower on CPU for the quickstart CNN.)

    Args:
        losses: Scalar losses ``L_1..L_n`` of one forward pass.
        params: The parameters to differentiate.

    Returns:
        ``grads[i][k]``: gradient of loss ``i`` with respect to ``params[k]``, shaped like it.
    """
    out: list[list[torch.Tensor | None]] = []
    for i, loss in enumerate(losses):
        out.append(list(torch.autograd.grad(loss, list(params), retain_graph=i < len(losses) - 1, allow_unused=True)))
    return out


class AffinityMeter(ABC):
    """An ``on_batch`` hook of :func:`automtl.train.fit` that measures a task-affinity matrix.

    Every ``every`` optimizer steps (steps ``0, k, 2k, ...``; from epoch ``start_epoch`` on) it
    calls :meth:`measure` on the step's batch, *before* the step, and leaves the network, the optimizer and the random
    streams as it found them. Each measurement gives a ``[T, T]`` matrix with NaN for pairs it
    could not measure (e.g. a task with no label in the batch); the result is the per-pair mean
    over measurements, overall and per epoch, with per-pair counts.

    Subclasses set :attr:`name`, :attr:`convention`, :attr:`source` and :attr:`symmetric`, and
    implement :meth:`measure`.

    Args:
        tasks: Every task name, in the data set's order (the matrix's row and column order).
        every: Measure every ``every`` steps (``k`` in the issue); 1 measures every step.
        start_epoch: No measurement before this (0-based) epoch: a warm-up left out of the average.

    Raises:
        ValueError: If ``every < 1``, ``start_epoch < 0`` or there are no tasks.
    """

    name: ClassVar[str] = ""
    convention: ClassVar[str] = ""
    source: ClassVar[str] = ""
    symmetric: ClassVar[bool] = False

    def __init__(self, tasks: Sequence[str], every: int = 1, start_epoch: int = 0) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        if not tasks:
            raise ValueError("affinity needs at least one task")
        self.tasks = list(tasks)
        self.index = {t: i for i, t in enumerate(self.tasks)}
        self.every = int(every)
        self.start_epoch = int(start_epoch)
        n = len(self.tasks)
        self.sums = np.zeros((n, n))
        self.counts = np.zeros((n, n), dtype=np.int64)
        self.epoch_sums: dict[int, np.ndarray] = {}
        self.epoch_counts: dict[int, np.ndarray] = {}
        self.seconds = 0.0
        self.measurements = 0
        self._last_step: int | None = None

    def __call__(self, ctx: BatchContext) -> None:
        if ctx.epoch < self.start_epoch or ctx.step % self.every != 0 or ctx.step == self._last_step:
            return
        self._last_step = ctx.step
        start = time.perf_counter()
        values = self.measure(ctx.net, ctx.optimizer, ctx.batch)
        self.add(values, ctx.epoch)
        self.seconds += time.perf_counter() - start

    @abstractmethod
    def measure(self, net: BranchedNet, optimizer: torch.optim.Optimizer, batch: Split) -> np.ndarray:
        """One measurement on ``batch``; must leave ``net`` and ``optimizer`` bitwise unchanged.

        Returns:
            float64 ``[T, T]`` in :attr:`tasks` order, ``M[i, j]`` the effect of task ``i`` on
            task ``j``; NaN where not measured.
        """

    def add(self, values: np.ndarray, epoch: int = 0) -> None:
        """Fold one measurement into the running sums (NaN entries are skipped)."""
        n = len(self.tasks)
        if values.shape != (n, n):
            raise ValueError(f"a measurement must be [{n}, {n}], got {list(values.shape)}")
        ok = np.isfinite(values)
        clean = np.where(ok, values, 0.0)
        self.sums += clean
        self.counts += ok
        if epoch not in self.epoch_sums:
            self.epoch_sums[epoch] = np.zeros((n, n))
            self.epoch_counts[epoch] = np.zeros((n, n), dtype=np.int64)
        self.epoch_sums[epoch] += clean
        self.epoch_counts[epoch] += ok
        self.measurements += 1

    def matrix(self) -> np.ndarray:
        """Mean over measurements, ``[T, T]``; NaN for a pair never measured."""
        return _mean(self.sums, self.counts)

    def history(self) -> list[np.ndarray]:
        """One mean matrix per epoch that had a measurement, in epoch order."""
        return [_mean(self.epoch_sums[e], self.epoch_counts[e]) for e in sorted(self.epoch_sums)]

    def history_epochs(self) -> list[int]:
        return sorted(self.epoch_sums)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tasks={len(self.tasks)}, every={self.every}, measurements={self.measurements})"


def _mean(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), math.nan)
