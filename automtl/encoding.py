"""The search space's encoding of a tree as trial parameters, in both directions.

A :class:`~automtl.tree.BranchTree` is encoded by three kinds of integer parameters, with the
same names and ranges in every trial so that a sampler learns across trials (``T`` tasks,
``G`` groups, ``B`` backbone blocks, branching points ``0..B`` where ``B`` means "never"):

=============================  =====================================================
parameter                      meaning
=============================  =====================================================
``tree.group.<task>``          task grouping: the group (``0..G-1``) of each task
``tree.group_split.<g>``       branching point at which group ``g`` leaves the trunk
``tree.task_split.<task>``     branching point at which the task leaves its group
=============================  =====================================================

:func:`tree_from_params` decodes (:meth:`BranchTree.from_branch_points`: a shared trunk, then
groups, then single tasks); :func:`trial_params_for_tree` encodes, returning ``None`` for a
tree the encoding cannot express. This module knows nothing of torch or optuna.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from automtl.tree import BranchTree

__all__ = ["group_param", "group_split_param", "task_split_param", "tree_from_params", "trial_params_for_tree"]


def group_param(task: str) -> str:
    """The name of the parameter holding ``task``'s group."""
    return f"tree.group.{task}"


def group_split_param(group: int) -> str:
    """The name of the parameter holding the branching point at which ``group`` leaves the trunk."""
    return f"tree.group_split.{group}"


def task_split_param(task: str) -> str:
    """The name of the parameter holding the branching point at which ``task`` leaves its group."""
    return f"tree.task_split.{task}"


def tree_from_params(params: Mapping[str, Any], tasks: Sequence[str], n_blocks: int, max_groups: int) -> BranchTree:
    """Decode trial parameters into a tree.

    Raises:
        KeyError: A parameter of the encoding is missing.
        ValueError: A branching point is outside ``[0, n_blocks]``.
    """
    group_of = {t: int(params[group_param(t)]) for t in tasks}
    group_split = {g: int(params[group_split_param(g)]) for g in range(max_groups)}
    task_split = {t: int(params[task_split_param(t)]) for t in tasks}
    return BranchTree.from_branch_points(tasks, n_blocks, group_of, group_split, task_split)


def _trunk_choices(parts: list[list[frozenset[str]]], all_tasks: frozenset[str]) -> Iterator[list[frozenset[str] | None]]:
    """Every nested choice of "the trunk" per block: a part contained in the previous trunk, or
    None (no trunk left from there on). Larger trunks first."""

    def rec(b: int, prev: frozenset[str] | None, acc: list[frozenset[str] | None]) -> Iterator[list[frozenset[str] | None]]:
        if b == len(parts):
            yield list(acc)
            return
        inside = sorted((p for p in parts[b] if p <= prev), key=len, reverse=True) if prev is not None else []
        options: list[frozenset[str] | None] = [*inside, None]
        for o in options:
            acc.append(o)
            yield from rec(b + 1, o, acc)
            acc.pop()

    yield from rec(0, all_tasks, [])


def _encode(
    tree: BranchTree,
    parts: list[list[frozenset[str]]],
    trunk: list[frozenset[str] | None],
    max_groups: int,
    gp: Sequence[int],
    tp: Sequence[int],
) -> tuple[dict[str, int], dict[int, int], dict[str, int]] | None:
    """Encode ``tree`` given which part is the trunk at each block; None if impossible."""
    n_blocks = len(parts)
    order = {t: i for i, t in enumerate(tree.tasks)}
    gp_set, tp_set = set(gp), set(tp)

    def later(b: int) -> int | None:
        return next((p for p in tp if p >= b), None)

    def parent(b: int, part: frozenset[str]) -> frozenset[str]:
        return next(p for p in parts[b - 1] if part <= p)

    chain_part: dict[tuple[int, frozenset[str]], int] = {}
    chains: list[tuple[int, frozenset[str]]] = []  # (start block, root tasks)
    peelers: list[tuple[str, int]] = []
    task_split: dict[str, int] = {}
    for b in range(n_blocks):
        children: dict[int, list[frozenset[str]]] = {}
        for part in parts[b]:
            if part == trunk[b]:
                continue
            if b == 0 or part <= (trunk[b - 1] or frozenset()):
                if len(part) >= 2:
                    if b not in gp_set:
                        return None
                    chain_part[(b, part)] = len(chains)
                    chains.append((b, part))
                else:
                    peelers.append((next(iter(part)), b))
                continue
            c = chain_part.get((b - 1, parent(b, part)))
            if c is not None:
                children.setdefault(c, []).append(part)
        for c, kids in children.items():
            big = [k for k in kids if len(k) >= 2]
            single = [next(iter(k)) for k in kids if len(k) == 1]
            if len(big) > 1:
                return None
            if big:
                chain_part[(b, big[0])] = c
                if single and b not in tp_set:
                    return None
                task_split.update({t: b for t in single})
            elif b in tp_set:
                task_split.update({t: b for t in single})
            elif len(single) == 1 and later(b) is not None:
                task_split[single[0]] = later(b)  # type: ignore[assignment]
            else:
                return None
    for b, part in chain_part:
        if b == n_blocks - 1:
            if n_blocks not in tp_set:
                return None
            task_split.update({t: n_blocks for t in part})

    # groups: chains first, then hosts for tasks that leave the trunk alone
    members: list[list[str]] = [sorted(root, key=order.__getitem__) for _, root in chains]
    split: list[int] = [start for start, _ in chains]
    end_group: int | None = None
    if trunk[-1] is not None:
        if n_blocks not in gp_set or n_blocks not in tp_set:
            return None
        end_group = len(members)
        members.append(sorted(trunk[-1], key=order.__getitem__))
        split.append(n_blocks)
        task_split.update({t: n_blocks for t in trunk[-1]})
    alone = [(t, b) for t, b in peelers if b not in tp_set]
    hosted = [(t, b) for t, b in peelers if b in tp_set]
    for t, b in alone:  # a task leaving the trunk alone where no task may split: a one-task group
        if b not in gp_set or later(b) is None:
            return None
        task_split[t] = later(b)  # type: ignore[assignment]
        members.append([t])
        split.append(b)
    for t, b in hosted:  # splits as a task; its group must stay in the trunk at least until b
        task_split[t] = b
        host = end_group if end_group is not None else next((g for g in range(len(members)) if split[g] >= b), None)
        if host is None:
            if gp[-1] < b:
                return None
            host = len(members)
            members.append([])
            split.append(gp[-1])
        members[host].append(t)
    if len(members) > max_groups:
        return None
    labels = sorted(range(len(members)), key=lambda g: min(order[t] for t in members[g]))
    group_of = {t: new for new, g in enumerate(labels) for t in members[g]}
    group_split = {new: split[g] for new, g in enumerate(labels)}
    for g in range(len(members), max_groups):
        group_split[g] = gp[-1]
    return group_of, group_split, task_split


def trial_params_for_tree(
    tree: BranchTree,
    max_groups: int,
    group_points: Sequence[int] | None = None,
    task_points: Sequence[int] | None = None,
) -> dict[str, int] | None:
    """The search-space parameters that reproduce ``tree``, or None if it is not expressible.

    The inverse of :func:`tree_from_params`: the returned dict
    holds ``tree.group.<task>`` (``0..max_groups-1``), ``tree.group_split.<g>`` for every
    ``g < max_groups`` and ``tree.task_split.<task>``, all within the allowed points, such that
    :meth:`BranchTree.from_branch_points` gives back ``tree`` (checked before returning).
    Groups are labelled by their first task; an unused group gets the latest allowed point.

    A tree is expressible when it is "a shared trunk, then groups, then single tasks": at every
    block at most one part (the trunk) later splits into several multi-task parts, a group only
    sheds single tasks, no more than ``max_groups`` groups are needed, and every split falls on
    an allowed point.

    Example:
        >>> t = BranchTree.from_branch_points(["a", "b", "c"], 3, {"a": 0, "b": 0, "c": 1}, {0: 3, 1: 1},
        ...                                   {"a": 3, "b": 3, "c": 3})
        >>> p = trial_params_for_tree(t, 2)
        >>> BranchTree.from_branch_points(["a", "b", "c"], 3, {x: p[f"tree.group.{x}"] for x in "abc"},
        ...     {g: p[f"tree.group_split.{g}"] for g in range(2)}, {x: p[f"tree.task_split.{x}"] for x in "abc"}) == t
        True

    Args:
        tree: The architecture.
        max_groups: The search's ``SearchSpace.max_groups`` (groups ``0..max_groups-1``).
        group_points: Allowed group split points (``SearchSpace.group_points``; default all
            ``0..n_blocks``).
        task_points: Allowed task split points (``SearchSpace.task_points``; default all).

    Returns:
        ``{parameter name: value}`` ready for ``study.enqueue_trial``, or None.
    """
    n_blocks = tree.n_blocks
    gp = sorted(set(group_points)) if group_points is not None else list(range(n_blocks + 1))
    tp = sorted(set(task_points)) if task_points is not None else list(range(n_blocks + 1))
    if max_groups < 1 or not gp or not tp:
        return None
    parts = [[frozenset(p) for p in partition] for partition in tree.partitions]
    for trunk in _trunk_choices(parts, frozenset(tree.tasks)):
        encoded = _encode(tree, parts, trunk, max_groups, gp, tp)
        if encoded is None:
            continue
        group_of, group_split, task_split = encoded
        if any(p not in gp for p in group_split.values()) or any(p not in tp for p in task_split.values()):
            continue
        try:
            rebuilt = BranchTree.from_branch_points(tree.tasks, n_blocks, group_of, group_split, task_split)
        except ValueError:
            continue
        if rebuilt == tree:
            params = {group_param(t): group_of[t] for t in tree.tasks}
            params.update({group_split_param(g): group_split[g] for g in range(max_groups)})
            params.update({task_split_param(t): task_split[t] for t in tree.tasks})
            return params
    return None
