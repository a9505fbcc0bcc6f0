"""A minimal Adam for a balancer's own per-task state (task weights or logits).

The state is a handful of scalars per task, updated once per step: plain Python floats are
far cheaper here than a dozen tiny tensor operations, and keep the balancer's overhead per
step small next to the network's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["ScalarAdam"]


class ScalarAdam:
    """Adam (Kingma and Ba, ICLR 2015, Alg. 1) on a list of floats, with per-entry step counts.

    Only the entries given a gradient move at a step, so a task that is unlabelled in a batch
    keeps both its value and its moment estimates.

    Args:
        size: Number of entries.
        lr: Step size.
        betas: Decay rates of the first and second moment estimates.
        weight_decay: L2 coefficient added to the gradient (as ``torch.optim.Adam``'s).
        eps: Denominator guard.
    """

    def __init__(
        self, size: int, lr: float, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0, eps: float = 1e-8
    ) -> None:
        self.lr, self.betas, self.weight_decay, self.eps = float(lr), betas, float(weight_decay), float(eps)
        self.m = [0.0] * size
        self.v = [0.0] * size
        self.t = [0] * size

    def step(self, values: list[float], grads: Mapping[int, float]) -> None:
        """Update ``values`` in place at the indices of ``grads``."""
        b1, b2 = self.betas
        for i, g in grads.items():
            g = g + self.weight_decay * values[i]
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            self.t[i] += 1
            m_hat = self.m[i] / (1 - b1 ** self.t[i])
            v_hat = self.v[i] / (1 - b2 ** self.t[i])
            values[i] -= self.lr * m_hat / (math.sqrt(v_hat) + self.eps)

    def state(self) -> dict[str, Any]:
        return {"m": list(self.m), "v": list(self.v), "t": list(self.t)}

    def load(self, state: Mapping[str, Any]) -> None:
        self.m, self.v, self.t = list(state["m"]), list(state["v"]), [int(x) for x in state["t"]]
