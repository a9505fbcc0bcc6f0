"""Per-task gradients of a shared tensor from a single backward pass, via autograd-graph hooks.

When the operations that consume a shared tensor ``z`` on the way to task ``t``'s loss serve
``t`` alone (a task's head reading the last block's output), the gradient that flows out of
those operations into ``z`` during the backward pass of ``Σ_t c_t L_t`` is exactly
``c_t ∂L_t/∂z``. Hooks on those graph nodes capture it, so one backward pass yields every
task's gradient of ``z`` instead of one pass per task. Where a consumer serves several tasks
(a block shared by a group), this does not apply and :meth:`RowCapture.create` returns
``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["RowCapture"]

_MAX_NODES = 2000


def _consumers(root: Any, target: tuple[Any, int]) -> list[tuple[Any, int]] | None:
    """Graph nodes reachable from ``root`` (not through ``target``) that read ``target``'s
    output, with the input slot; ``None`` if the graph is larger than expected."""
    seen: set[Any] = set()
    stack = [root]
    found: list[tuple[Any, int]] = []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if len(seen) > _MAX_NODES:
            return None
        for slot, (nxt, output_nr) in enumerate(node.next_functions):
            if nxt is None:
                continue
            if nxt is target[0] and output_nr == target[1]:
                found.append((node, slot))
            else:
                stack.append(nxt)
    return found


class RowCapture:
    """Captures ``∂(Σ_t c_t L_t)/∂z_t`` per task during one backward pass (a context manager).

    Use :meth:`create`; inside the ``with`` block run one backward pass of a weighted sum of the
    losses that reaches each ``z_t``; afterwards :attr:`rows` holds, per task, ``c_t ∂L_t/∂z_t``
    (shape of ``z_t``); per key of a sub-group (``via``), the gradient that reached ``z``
    through the sub-group's blocks.
    """

    def __init__(self, consumers: dict[str, list[tuple[Any, int]]]) -> None:
        self._consumers = consumers
        self._handles: list[Any] = []
        self.rows: dict[str, torch.Tensor] = {}

    @classmethod
    def create(
        cls,
        losses: Mapping[str, torch.Tensor],
        z_of: Mapping[str, torch.Tensor],
        via: Mapping[str, str] | None = None,
    ) -> RowCapture | None:
        """A capture for each key of ``z_of``, or ``None`` if some consumer of a ``z`` is
        shared between keys (or is not found).

        Args:
            losses: Scalar loss of every task.
            z_of: Per key (a task name, unless ``via`` says otherwise), the tensor ``z`` whose
                gradient is captured.
            via: Per key that is not a task name, a task whose loss reaches ``z`` through the
                consumers to hook (e.g. any task of a sub-group whose blocks read ``z``); the
                captured row is then what flows into ``z`` through those consumers.
        """
        via = via or {}
        owner: dict[Any, str] = {}
        consumers: dict[str, list[tuple[Any, int]]] = {}
        for key, z in z_of.items():
            loss = losses[via.get(key, key)]
            if z.grad_fn is None or loss.grad_fn is None:
                return None
            found = _consumers(loss.grad_fn, (z.grad_fn, z.output_nr))
            if not found:
                return None
            for node, _ in found:
                if owner.setdefault(node, key) != key:
                    return None
            consumers[key] = found
        return cls(consumers)

    def __enter__(self) -> RowCapture:  # noqa: PYI034
        for t, found in self._consumers.items():
            for node, slot in found:
                self._handles.append(node.register_hook(self._hook(t, slot)))
        return self

    def _hook(self, task: str, slot: int) -> Any:
        def hook(grad_inputs: tuple[torch.Tensor | None, ...], grad_outputs: tuple[torch.Tensor | None, ...]) -> None:
            g = grad_inputs[slot]
            if g is not None:
                prev = self.rows.get(task)
                self.rows[task] = g if prev is None else prev + g

        return hook

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
