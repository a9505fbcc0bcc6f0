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

``grouped=True`` (the ``"grouped"`` mode of :class:`automtl.balance.GradientAggregation`)
drops that cost by an approximation: at ``S``, each deeper shared segment ``S'`` right below
it counts as one objective, whose row is the gradient that ``S'``'s own aggregate sends into
``z_S``, ``(∂z_{S'}/∂z_S)ᵀ a_{S'}``; the direct tasks keep their own rows. That row flows
through ``S'``'s blocks during the pass anyway, and graph hooks on ``S'``'s first operations
capture it, so a nested tree costs about what hard parameter sharing does. The update of
``S`` still depends on exactly the tasks below it, aggregated hierarchically (first within
``S'``, then at ``S``) rather than all at once; under hard parameter sharing, or wherever no
shared segment sits below another, it is the same as the exact mode. A task below ``S'``
reports ``S``'s weight of ``S'``'s row times its own weight in ``S'``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from automtl.balance._rows import RowCapture
from automtl.balance._tree import Segment

__all__ = ["AggregateFn", "group_label", "parent_segments", "representation_backward"]

#: ``(tasks, J [m, n], z [N, ...]) -> (aggregate [n], weights [m] or None)``: the rows' names,
#: their gradients of the shared representation ``z`` (flattened, ``n = N·d``) and ``z`` itself
#: (detached; GradDrop's mask reads its signs).
AggregateFn = Callable[[tuple[str, ...], torch.Tensor, torch.Tensor], tuple[torch.Tensor, "torch.Tensor | None"]]


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


def group_label(tasks: Sequence[str]) -> str:
    """The row name of a sub-group in ``"grouped"`` mode (``("a", "b")`` -> ``"group:a+b"``)."""
    return "group:" + "+".join(tasks)


def representation_backward(
    losses: Mapping[str, torch.Tensor],
    segs: Sequence[Segment],
    outputs: Sequence[torch.Tensor],
    aggregate: AggregateFn,
    *,
    grouped: bool = False,
) -> list[tuple[tuple[str, ...], torch.Tensor | None]]:
    """Write representation-mode gradients for every parameter of ``segs`` (see module docstring).

    Args:
        losses: Scalar loss of every labelled task.
        segs: The step's segments (:func:`automtl.balance._tree.segments`), single-task ones
            included (they receive their task's plain gradient).
        outputs: For each segment of ``segs`` with two or more tasks, in order, its output
            ``z_S`` ``[N, ...]`` (still in the graph).
        aggregate: Combines the rows of one segment. It receives the rows' names (task names,
            and in ``grouped`` mode :func:`group_label` for a sub-group's row), the rows
            ``[m, N·d]`` and the segment's output ``z_S`` ``[N, ...]`` (detached).
        grouped: Each shared segment ``S'`` below another ``S`` enters ``S``'s aggregation as
            one row, the gradient its own aggregate sends into ``z_S``
            (``(∂z_{S'}/∂z_S)ᵀ a_{S'}``), instead of one row per task (see module docstring).

    Returns:
        ``(tasks, weights)`` of every shared segment (``weights`` ``[m]`` or ``None``), in the
        order in which the backward pass reached them (deepest first). In ``grouped`` mode a
        task below a sub-group gets its effective weight: the sub-group row's weight times the
        task's own weight in the sub-group (``None`` if an aggregator on the way gives none).
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
    # For each shared segment, its tasks that continue into a deeper shared segment, and which.
    deeper: dict[int, dict[str, int]] = {i: {} for i in range(len(shared))}
    for j, p in enumerate(parents):
        if p is not None:
            deeper[p].update({t: j for t in shared[j].tasks})
    # Each task is direct at the deepest shared segment on its path, and at no other.
    direct = {t: outputs[i] for i, s in enumerate(shared) for t in s.tasks if t not in deeper[i]}
    # The rows of each segment, by name: its tasks, or (grouped) its direct tasks and sub-groups.
    labels: list[tuple[str, ...]] = []
    for i, seg in enumerate(shared):
        if not grouped:
            labels.append(seg.tasks)
            continue
        names: list[str] = []
        for t in seg.tasks:
            name = t if t not in deeper[i] else group_label(shared[deeper[i][t]].tasks)
            if name not in names:
                names.append(name)
        labels.append(tuple(names))
    z_of: dict[str, torch.Tensor] = dict(direct)
    via: dict[str, str] = {}
    if grouped:
        for j, p in enumerate(parents):
            if p is not None:
                name = group_label(shared[j].tasks)
                z_of[name], via[name] = outputs[p], shared[j].tasks[0]
    capture = RowCapture.create(losses, z_of, via)
    rows: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(len(shared))}
    if capture is None:
        # A consumer of some z_S is shared after all: take those rows the slow way, first.
        for i, s in enumerate(shared):
            for t in s.tasks:
                if t not in deeper[i]:
                    got = torch.autograd.grad(losses[t], outputs[i], retain_graph=True, allow_unused=True)[0]
                    rows[i][t] = torch.zeros_like(outputs[i]) if got is None else got
    reported: list[tuple[tuple[str, ...], torch.Tensor | None]] = []
    effective: dict[int, dict[str, float] | None] = {}
    # The vector-Jacobian products below run inside a hook, as nested backward passes that
    # start at z_S and end at z_parent: both fire these same tensor hooks, which must then let
    # the gradient through untouched.
    nested = [False]

    def vjp(z: torch.Tensor, z_parent: torch.Tensor, cotangent: torch.Tensor) -> torch.Tensor:
        nested[0] = True
        try:
            got = torch.autograd.grad(z, z_parent, cotangent, retain_graph=True, allow_unused=True)[0]
        finally:
            nested[0] = False
        return torch.zeros_like(z_parent) if got is None else got

    def make_hook(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        seg, z, parent = shared[i], outputs[i], parents[i]

        def hook(grad: torch.Tensor) -> torch.Tensor:
            if nested[0]:
                return grad
            mine = rows[i]
            if capture is not None:
                for name in labels[i]:
                    if name not in mine:
                        mine[name] = capture.rows.get(name, torch.zeros_like(z))
            matrix = torch.stack([mine[name].reshape(-1) for name in labels[i]])
            vector, weights = aggregate(labels[i], matrix, z.detach())
            if grouped:
                reported.append((seg.tasks, _effective(i, weights)))
            else:
                reported.append((seg.tasks, weights))
            if parent is not None:
                z_parent = outputs[parent]
                if not grouped:
                    for t in seg.tasks:
                        rows[parent][t] = vjp(z, z_parent, mine[t])
                elif capture is None:
                    rows[parent][group_label(seg.tasks)] = vjp(z, z_parent, vector.view_as(z).to(z.dtype))
            return vector.view_as(grad).to(grad.dtype)

        return hook

    def _effective(i: int, weights: torch.Tensor | None) -> torch.Tensor | None:
        mine: dict[str, float] | None = None
        if weights is not None:
            of_row = dict(zip(labels[i], weights.detach().cpu().tolist()))
            mine = {}
            for t in shared[i].tasks:
                j = deeper[i].get(t)
                if j is None:
                    mine[t] = of_row[t]
                    continue
                below = effective.get(j)
                if below is None:
                    mine = None
                    break
                mine[t] = of_row[group_label(shared[j].tasks)] * below[t]
        effective[i] = mine
        return None if mine is None else torch.tensor([mine[t] for t in shared[i].tasks], dtype=torch.float64)

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
