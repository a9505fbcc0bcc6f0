"""Lookahead inter-task affinity (TAG; Fifty et al., NeurIPS 2021).

For a batch ``X`` at step ``t`` and shared parameters ``θ_s`` (parameters used by two or more
tasks), TAG (eq. 2 of the paper) defines the affinity of task ``i`` onto task ``j`` as

    Z_{i→j} = 1 − L_j(X; θ_s^{t+1|i}, θ_j^t) / L_j(X; θ_s^t, θ_j^t)

where ``θ_s^{t+1|i}`` is ``θ_s`` after one update computed from task ``i``'s loss alone and
``θ_j`` (task ``j``'s own parameters) is left as it is. ``Z_{i→j} > 0``: a step on ``i``
lowers ``j``'s loss (``i`` helps ``j``); ``< 0``: it raises it (``i`` hurts ``j``). Stored as
``M[i, j] = Z_{i→j}`` (row: the task stepped on; column: the task whose loss is read).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from automtl.affinity._base import AffinityMeter, shared_parameters, task_gradients
from automtl.affinity._state import (
    OptimizerSnapshot,
    TrainingStateGuard,
    dropout_off,
    has_active_dropout,
)
from automtl.build import BranchedNet
from automtl.data import Split
from automtl.train import task_losses

__all__ = ["LookaheadAffinity"]

_TINY_LOSS = 1e-12


class LookaheadAffinity(AffinityMeter):
    """TAG's lookahead affinity, measured with the training run's own optimizer.

    At each measured step, before the real step:

    1. one forward pass in training mode (as the real step: BatchNorm normalises with batch
       statistics, dropout active) gives every labelled task's loss, and one batched
       backward pass gives each task's gradient ``g_i`` on the shared parameters ``θ_s``;
    2. ``L_j(θ_s)`` is each labelled task's loss on the same batch (see *Modes* below);
    3. for each labelled task ``i``: ``.grad`` of ``θ_s`` is set to ``g_i`` (every other
       parameter's to ``None``, so the optimizer leaves it and its state alone), the real
       optimizer takes one step (AdamW/Adam moments, SGD momentum, weight decay and step count
       all take part, as in the real update), ``L_j(θ_s^{t+1|i})`` is read for every labelled
       ``j``, and ``θ_s`` and its optimizer state are copied back;
    4. parameters, ``.grad``, buffers (BatchNorm running statistics and
       ``num_batches_tracked``), optimizer state, module modes and the random streams are
       restored bitwise (:class:`~automtl.affinity._state.TrainingStateGuard`).

    Only tasks labelled in the batch take part; a pair is skipped when ``L_j(θ_s)`` is 0.

    Modes: the losses of steps 2 and 3 are computed in training mode with dropout switched
    off. BatchNorm keeps using *batch* statistics because that is the function the real step
    optimises, and because its running statistics are those of ``θ_s`` and would not match
    ``θ_s^{t+1|i}`` (eval mode would compare two parameter vectors through the statistics of
    one of them, and early in training running statistics lag far behind). Dropout is off so
    that the ratio reflects the parameter change only, not two different random masks. The
    running statistics these passes update are restored afterwards. The gradient pass (step 1)
    keeps dropout on, like the real step; its random draws come from a forked stream, so the
    training run's own draws are unchanged.

    With momentum, the lookahead update of task ``i`` is the optimizer's real next update with
    ``g_i`` in place of the full gradient, so it contains the momentum carried from earlier steps
    (this is what "using the real optimizer" means, and why the rows of ``M`` share a common
    part); TAG's public PyTorch patch uses a plain SGD step instead. To show that common part,
    each measurement also takes the step with a zero gradient on ``θ_s`` (one more step and
    forward pass): :meth:`momentum_baseline` gives ``Z_{∅→j}``, and ``M[i, j] − Z_{∅→j}`` is what
    task ``i``'s own gradient contributes. Parameters of ``θ_s`` that ``L_i`` does not reach
    (in a branched tree) get no gradient and stay put in ``i``'s step.

    Sign convention: ``M[i, j] = Z_{i→j}``; positive = a step on task ``i`` lowers task
    ``j``'s training loss (``i`` helps ``j``), negative = raises it. Unitless (relative change of
    a loss, per step). The diagonal ``Z_{i→i}`` is a task's own progress per step.

    Args:
        tasks: Every task name, in data order.
        every: Measure every ``every`` steps.
        start_epoch: First (0-based) epoch measured.
    """

    name = "lookahead"
    convention = (
        "M[i, j] = Z_{i->j} = 1 - L_j(theta_s after a step on task i) / L_j(theta_s), same batch; "
        "positive: a step on task i lowers task j's loss (i helps j); negative: raises it (i hurts j); unitless"
    )
    source = "Fifty et al., Efficiently Identifying Task Groupings for Multi-Task Learning (TAG), NeurIPS 2021, eq. 2"
    symmetric = False

    def __init__(self, tasks: Sequence[str], every: int = 1, start_epoch: int = 0) -> None:
        super().__init__(tasks, every, start_epoch)
        self._momentum_sums = np.zeros(len(self.tasks))
        self._momentum_counts = np.zeros(len(self.tasks), dtype=np.int64)

    def measure(self, net: BranchedNet, optimizer: torch.optim.Optimizer, batch: Split) -> np.ndarray:
        n = len(self.tasks)
        out = np.full((n, n), math.nan)
        shared = shared_parameters(net)
        with TrainingStateGuard(net, optimizer):
            net.train()
            losses = task_losses(net, batch)
            names = [t for t in losses if t in self.index]
            if not names:
                return out
            reuse = not has_active_dropout(net)
            base_losses = {t: float(losses[t].detach()) for t in names} if reuse else {}
            grads = task_gradients([losses[t] for t in names], shared)
            del losses
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            originals = [p.detach().clone() for p in shared]
            state = OptimizerSnapshot(optimizer, shared)
            with torch.no_grad(), dropout_off(net):
                if not reuse:
                    base_losses = {t: float(v) for t, v in task_losses(net, batch).items() if t in self.index}
                momentum = np.full(n, math.nan)
                zeros = [[torch.zeros_like(p) for p in shared]]
                for a, i in enumerate([None, *names]):  # None: the zero-gradient (momentum-only) step
                    for p, g in zip(shared, zeros[0] if i is None else grads[a - 1]):
                        p.grad = g
                    optimizer.step()
                    after = task_losses(net, batch)
                    for j in names:
                        base = base_losses.get(j)
                        if base is not None and base > _TINY_LOSS and j in after:
                            z = 1.0 - float(after[j]) / base
                            if i is None:
                                momentum[self.index[j]] = z
                            else:
                                out[self.index[i], self.index[j]] = z
                    for p, original in zip(shared, originals):
                        p.copy_(original)
                        p.grad = None
                    state.restore()
        self._momentum_sums += np.where(np.isfinite(momentum), momentum, 0.0)
        self._momentum_counts += np.isfinite(momentum)
        return out

    def momentum_baseline(self) -> np.ndarray:
        """``Z_{∅→j}``, ``[T]``: the mean relative change of task ``j``'s loss under the optimizer's
        step with a *zero* gradient on ``θ_s`` (momentum and weight decay alone); NaN if never
        measured. ``M[i, j] − Z_{∅→j}`` is what task ``i``'s own gradient adds. Zero for plain SGD
        without momentum or weight decay; with momentum it is the part that every row shares."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self._momentum_counts > 0, self._momentum_sums / np.maximum(self._momentum_counts, 1), math.nan)
