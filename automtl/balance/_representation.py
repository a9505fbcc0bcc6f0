"""Representation-mode aggregation on a tree in one backward pass (the cheap mode's engine).

For every shared segment ``S`` (a chain of blocks whose active task set has ``m >= 2`` tasks,
see :mod:`automtl.balance._tree`) with output ``z_S`` ``[N, ...]``, the representation mode
needs the per-task gradients ``g_t(z_S) = ∂L_t/∂z_S`` for ``t ∈ S`` (the rows of
``J_S`` ``[m, N·d]``), aggregates them into ``a_S = A(J_S)``, and gives the segment's
parameters ``(∂z_S/∂θ_S)ᵀ a_S``. :func:`representation_backward` does all of it during a
single backward pass of ``Σ_t L_t``:

* a tensor hook on each ``z_S`` replaces the gradient that reaches it (the plain sum of the
  tasks' gradients) by ``a_S``, so the blocks of ``S`` receive ``(∂z_S/∂θ_S)ᵀ a_S`` and heads
  and single-task blocks, which lie below every hooked tensor of their task, keep their
  plain gradient;
* a task ``t`` whose path below ``z_S`` meets no other shared segment (``t``'s head, perhaps
  after blocks that serve ``t`` alone) is *direct* at ``S``: the gradient flowing out of those
  operations into ``z_S`` during the pass is exactly ``g_t(z_S)``, captured by graph hooks
  (:class:`automtl.balance._rows.RowCapture`), at no extra cost;
* a task that continues into a deeper shared segment ``S'`` (whose first block reads
  ``z_S``) reaches ``S`` through ``S'``'s blocks: when the pass reaches ``z_{S'}``, the rows
  ``g_t(z_{S'})`` are known, and one vector-Jacobian product per task through ``S'``'s blocks
  (input gradients only, no parameter gradients) gives ``g_t(z_S)``, before the pass frees
  those blocks' saved tensors.

The result equals the slow way (one backward pass per task to every shared representation on
its path, then one backward pass per segment from ``a_S``) up to floating-point rounding: the
rows are the same per-task gradients, not an approximation. What it saves is the repeated
traversal of heads and shared blocks; what remains is ``Σ_{S'} |S'|`` vector-Jacobian products
through the blocks of each shared segment that has a shared parent, which no exact method can
avoid (each task's row at the parent is a different product).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from automtl.balance._rows import RowCapture
from automtl.balance._tree import Segment

__all__ = ["AggregateFn", "parent_segments", "representation_backward"]

#: ``(tasks, J [m, n]) -> (aggregate [n], weights [m] or None)``.
AggregateFn = Callable[[tuple[str, ...], torch.Tensor], tuple[torch.Tensor, "torch.Tensor | None"]]


def parent_segments(shared: Sequence[Segment]) -> list[int | None]:
    """For each shared segment, the index of the shared segment right above it (``None`` at the top).

    Along one task's path the active task sets of consecutive segments are nested and strictly
    shrinking, so the segment right above ``S`` is the one whose task set is the smallest
    strict superset of ``S``'s.
    """
    sets = [frozenset(s.tasks) for s in shared]
    parents: list[int | None] = []
    for i, tasks in enumerate(sets):
        above = [j for j, other in enumerate(sets) if j != i and tasks < other]
        parents.append(min(above, key=lambda j: len(sets[j])) if above else None)
    return parents


def representation_backward(
    losses: Mapping[str, torch.Tensor],
    segs: Sequence[Segment],
    outputs: Sequence[torch.Tensor],
    aggregate: AggregateFn,
) -> list[tuple[tuple[str, ...], torch.Tensor | None]]:
    """Write representation-mode gradients for every parameter of ``segs`` (see module docstring).

    Args:
        losses: Scalar loss of every labelled task.
        segs: The step's segments (:func:`automtl.balance._tree.segments`), single-task ones
            included (they receive their task's plain gradient).
        outputs: For each segment of ``segs`` with two or more tasks, in order, its output
            ``z_S`` ``[N, ...]`` (still in the graph).
        aggregate: Combines the rows of one segment.

    Returns:
        ``(tasks, weights)`` of every shared segment (``weights`` ``[m]`` or ``None``), in the
        order in which the backward pass reached them (deepest first).
    """
    shared = [s for s in segs if len(s.tasks) > 1]
    if len(outputs) != len(shared):
        raise ValueError(f"{len(shared)} shared segments but {len(outputs)} outputs")
    params = [p for s in segs for p in s.params]
    total = torch.stack(list(losses.values())).sum()
    if not shared:
        if params:
            torch.autograd.backward(total, inputs=params)
        return []

    parents = parent_segments(shared)
    deeper: dict[int, set[str]] = {i: set() for i in range(len(shared))}
    for i, p in enumerate(parents):
        if p is not None:
            deeper[p].update(shared[i].tasks)
    # Each task is direct at the deepest shared segment on its path, and at no other.
    direct = {t: outputs[i] for i, s in enumerate(shared) for t in s.tasks if t not in deeper[i]}
    capture = RowCapture.create(losses, direct)
    rows: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(len(shared))}
    if capture is None:
        # A consumer of some z_S is shared after all: take those rows the slow way, first.
        for i, s in enumerate(shared):
            for t in s.tasks:
                if t not in deeper[i]:
                    got = torch.autograd.grad(losses[t], outputs[i], retain_graph=True, allow_unused=True)[0]
                    rows[i][t] = torch.zeros_like(outputs[i]) if got is None else got
    reported: list[tuple[tuple[str, ...], torch.Tensor | None]] = []
    # The vector-Jacobian products below run inside a hook, as nested backward passes that
    # start at z_S and end at z_parent: both fire these same tensor hooks, which must then let
    # the gradient through untouched.
    nested = [False]

    def make_hook(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        seg, z, parent = shared[i], outputs[i], parents[i]

        def hook(grad: torch.Tensor) -> torch.Tensor:
            if nested[0]:
                return grad
            mine = rows[i]
            if capture is not None:
                for t in seg.tasks:
                    if t not in mine:
                        mine[t] = capture.rows.get(t, torch.zeros_like(z))
            matrix = torch.stack([mine[t].reshape(-1) for t in seg.tasks])
            vector, weights = aggregate(seg.tasks, matrix)
            reported.append((seg.tasks, weights))
            if parent is not None:
                z_parent = outputs[parent]
                nested[0] = True
                try:
                    for t in seg.tasks:
                        got = torch.autograd.grad(z, z_parent, mine[t], retain_graph=True, allow_unused=True)[0]
                        rows[parent][t] = torch.zeros_like(z_parent) if got is None else got
                finally:
                    nested[0] = False
            return vector.view_as(grad).to(grad.dtype)

        return hook

    handles = [z.register_hook(make_hook(i)) for i, z in enumerate(outputs)]
    try:
        if capture is not None:
            with capture:
                torch.autograd.backward(total, inputs=params)
        else:
            torch.autograd.backward(total, inputs=params)
    finally:
        for handle in handles:
            handle.remove()
    return reported
