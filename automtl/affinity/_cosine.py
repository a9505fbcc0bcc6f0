"""Cosine similarity of task gradients on the shared parameters.

``C[i, j] = <g_i, g_j> / (‖g_i‖ ‖g_j‖)`` with ``g_i = ∇_{θ_s} L_i`` on the same batch. It is the
first-order proxy of lookahead affinity: for plain SGD with step ``η``,
``L_j(θ_s − η g_i) ≈ L_j(θ_s) − η <g_i, g_j>``, so ``Z_{i→j} ≈ η <g_i, g_j> / L_j`` has the
sign of ``C[i, j]``. Gradient conflict measured this way drives PCGrad (Yu et al., Gradient
Surgery for Multi-Task Learning, NeurIPS 2020) and auxiliary-task weighting (Du et al.,
Adapting Auxiliary Losses Using Gradient Similarity, arXiv:1812.02224, 2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from automtl.affinity._base import AffinityMeter, shared_parameters, task_gradients
from automtl.affinity._state import TrainingStateGuard
from automtl.build import BranchedNet
from automtl.data import Split
from automtl.train import task_losses

__all__ = ["GradientCosine"]


class GradientCosine(AffinityMeter):
    """Cosine similarity of the tasks' gradients on the shared parameters ``θ_s``.

    One forward pass in training mode and one batched backward pass per measurement, no
    optimizer step: much cheaper than :class:`~automtl.affinity.LookaheadAffinity`. Buffers
    (BatchNorm statistics) and random streams are restored afterwards. Only tasks labelled in
    the batch take part; a task whose gradient is zero gives NaN.

    Sign convention: ``M[i, j] = cos(g_i, g_j)`` in ``[-1, 1]``, symmetric; positive = the
    gradients agree (to first order a step on either lowers both losses), negative = they
    conflict; unitless. The diagonal is 1.

    Args:
        tasks: Every task name, in data order.
        every: Measure every ``every`` steps.
        start_epoch: First (0-based) epoch measured.
    """

    name = "cosine"
    convention = (
        "M[i, j] = cos(grad L_i, grad L_j) on the shared parameters, in [-1, 1], symmetric; "
        "positive: the gradients agree (i helps j to first order); negative: they conflict; unitless"
    )
    source = (
        "gradient cosine similarity: Du et al., arXiv:1812.02224 (2018); Yu et al., PCGrad, NeurIPS 2020; "
        "first-order proxy of TAG's Z_{i->j}"
    )
    symmetric = True

    def __init__(self, tasks: Sequence[str], every: int = 1, start_epoch: int = 0) -> None:
        super().__init__(tasks, every, start_epoch)

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
            grads = task_gradients([losses[t] for t in names], shared)
            flat = torch.stack(
                [
                    torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(shared, gs)])
                    for gs in grads
                ]
            ).double()
            norms = flat.norm(dim=1)
            cos = (flat @ flat.T) / (norms[:, None] * norms[None, :])
            cos = cos.cpu().numpy()
        idx = [self.index[t] for t in names]
        ok = norms.cpu().numpy() > 0
        for a, i in enumerate(idx):
            for b, j in enumerate(idx):
                if ok[a] and ok[b]:
                    out[i, j] = float(cos[a, b])
        return out
