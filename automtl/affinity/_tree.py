"""From affinity to architectures: hierarchical clustering of the tasks, candidate
:class:`~automtl.tree.BranchTree` s on the backbone's branching points, and the Optuna
parameters that make the search try them first.

The search space's encoding of a tree (:mod:`automtl.encoding`, both directions) turns each
proposed tree into trial parameters, so that it can be enqueued with
``study.enqueue_trial(params)``. This module knows nothing of optuna.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from automtl.affinity._grouping import grouping_score, select_grouping
from automtl.affinity._result import AffinityResult
from automtl.encoding import trial_params_for_tree
from automtl.tree import BranchTree

__all__ = [
    "Dendrogram",
    "affinity_dendrogram",
    "grouping_params",
    "seed_params",
    "trees_from_affinity",
    "trial_params_for_tree",
]


@dataclass(frozen=True)
class Merge:
    """One step of agglomerative clustering: clusters ``left`` and ``right`` joined at
    ``similarity`` (mean symmetric affinity between their tasks; higher joins earlier)."""

    left: tuple[str, ...]
    right: tuple[str, ...]
    similarity: float


@dataclass(frozen=True)
class Dendrogram:
    """Average-linkage (UPGMA) clustering of the tasks by symmetric affinity.

    Attributes:
        tasks: The tasks, in input order.
        merges: The ``T − 1`` merges, most similar first; similarities never increase along
            the list (average linkage has no inversions).
    """

    tasks: tuple[str, ...]
    merges: tuple[Merge, ...]

    def cut(self, n_clusters: int) -> list[list[str]]:
        """The partition into ``n_clusters`` clusters (undo the last ``n_clusters − 1`` merges),
        clusters ordered by their first task, tasks in input order."""
        n_clusters = max(1, min(n_clusters, len(self.tasks)))
        return self._components(self.merges[: len(self.tasks) - n_clusters])

    def _components(self, merges: Sequence[Merge]) -> list[list[str]]:
        order = {t: i for i, t in enumerate(self.tasks)}
        cluster = {t: frozenset([t]) for t in self.tasks}
        for m in merges:
            joined = cluster[m.left[0]] | cluster[m.right[0]]
            for t in joined:
                cluster[t] = joined
        parts = {c for c in cluster.values()}
        return sorted((sorted(p, key=order.__getitem__) for p in parts), key=lambda p: order[p[0]])


def _symmetric(result: AffinityResult) -> np.ndarray:
    s = result.symmetrized()
    return np.where(np.isfinite(s), s, 0.0)  # type: ignore[no-any-return]


def affinity_dendrogram(result: AffinityResult) -> Dendrogram:
    """Average-linkage clustering on the symmetric affinity ``S = (M + Mᵀ) / 2`` (NaN as 0).

    Two clusters' similarity is the mean of ``S`` over pairs across them (UPGMA; Sokal &
    Michener, 1958); the most similar pair of clusters merges first; ties go to the pair that
    comes first in task order.
    """
    s = _symmetric(result)
    tasks = result.tasks
    clusters: list[list[int]] = [[i] for i in range(len(tasks))]
    merges = []
    while len(clusters) > 1:
        best: tuple[float, int, int] | None = None
        for a, b in itertools.combinations(range(len(clusters)), 2):
            sim = float(np.mean([s[i, j] for i in clusters[a] for j in clusters[b]]))
            if best is None or sim > best[0] + 1e-15:
                best = (sim, a, b)
        assert best is not None
        sim, a, b = best
        merges.append(Merge(tuple(tasks[i] for i in clusters[a]), tuple(tasks[i] for i in clusters[b]), sim))
        clusters[a] = sorted(clusters[a] + clusters[b])
        del clusters[b]
    return Dendrogram(tuple(tasks), tuple(merges))


def _point(similarity: float, top: float, points: Sequence[int]) -> int:
    """Map a similarity to a branching point: ``≤ 0`` → the earliest point; otherwise
    ``points[floor(similarity / top · len(points))]`` (clamped), so the most similar stay
    together longest. ``points`` is sorted and may end with ``n_blocks`` ("never split")."""
    if similarity <= 0 or top <= 0:
        return points[0]
    return points[min(len(points) - 1, int(similarity / top * len(points)))]


def _three_level(
    tasks: Sequence[str], n_blocks: int, groups: Sequence[Sequence[str]], splits: Sequence[int], task_point: int
) -> BranchTree:
    group_of = {t: g for g, part in enumerate(groups) for t in part}
    return BranchTree.from_branch_points(
        tasks, n_blocks, group_of, dict(enumerate(splits)), {t: task_point for t in tasks}
    )


def trees_from_affinity(
    result: AffinityResult,
    n_blocks: int,
    *,
    max_groups: int = 3,
    group_points: Sequence[int] | None = None,
    task_points: Sequence[int] | None = None,
    max_trees: int = 8,
) -> list[BranchTree]:
    """Candidate architectures suggested by an affinity matrix, most promising first.

    1. Groupings: for ``k = max_groups, ..., 2``, TAG's best grouping into at most ``k`` groups
       (:func:`~automtl.affinity.select_grouping`) and the ``k``-cluster cut of the
       average-linkage dendrogram (:func:`affinity_dendrogram`), ranked by total affinity.
    2. Branching points: each grouping becomes a tree whose groups leave the shared trunk at a
       point set by how much the group and the other tasks help each other (``a_g``: mean
       symmetric affinity between the group's tasks and the rest). ``a_g ≤ 0`` (they hurt each
       other): the earliest allowed point; otherwise ``a_g / max S`` of the way through the
       allowed points, ``n_blocks`` (shared up to the heads) included when allowed. Tasks stay
       with their group up to the heads (``task_split = n_blocks``, or the latest allowed point).
    3. The best grouping with every group leaving at each other allowed point.
    4. The whole dendrogram on the branching points: each merge's similarity gives the point
       where its two clusters part (same map as in 2; no inversions, so each partition refines
       the previous one). This tree may have more groups than ``max_groups`` and need not be
       expressible in the search encoding (:func:`trial_params_for_tree` then returns None).

    Args:
        result: An affinity result (any measure; the symmetric part is clustered, the directed
            matrix is used for TAG's objective).
        n_blocks: Backbone blocks (branching points ``0..n_blocks``; ``n_blocks`` = never).
        max_groups: At most this many groups leave the trunk (the search's ``space.max_groups``).
        group_points: Allowed group split points (default: all ``0..n_blocks``).
        task_points: Allowed task split points (default: all).
        max_trees: At most this many trees.

    Returns:
        Distinct trees; hard parameter sharing is not among them (the search samples it anyway).

    Raises:
        ValueError: If ``n_blocks < 1``.
    """
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
    tasks = result.tasks
    gp = sorted(set(group_points)) if group_points is not None else list(range(n_blocks + 1))
    tp = sorted(set(task_points)) if task_points is not None else list(range(n_blocks + 1))
    task_point = n_blocks if n_blocks in tp else tp[-1]
    s = _symmetric(result)
    off = s[~np.eye(len(tasks), dtype=bool)]
    top = float(off.max()) if off.size else 0.0
    index = {t: i for i, t in enumerate(tasks)}
    dendro = affinity_dendrogram(result)

    candidates: list[list[list[str]]] = []
    for k in range(min(max_groups, len(tasks)), 1, -1):
        cut = dendro.cut(k)
        candidates += [select_grouping(result.matrix, tasks, k, starts=[cut]).groups, cut]
    unique: dict[tuple[tuple[str, ...], ...], list[list[str]]] = {}
    for groups in candidates:
        if len(groups) > 1:
            unique.setdefault(tuple(tuple(g) for g in groups), groups)
    ranked = sorted(unique.values(), key=lambda g: -grouping_score(result.matrix, tasks, g))

    trees: list[BranchTree] = []

    def add(tree: BranchTree) -> None:
        if tree not in trees and not tree.is_hard_sharing():
            trees.append(tree)

    def cross(group: Sequence[str]) -> float:
        inside = [index[t] for t in group]
        outside = [i for i in range(len(tasks)) if i not in inside]
        return float(np.mean([s[i, j] for i in inside for j in outside])) if outside else 0.0

    for groups in ranked:
        add(_three_level(tasks, n_blocks, groups, [_point(cross(g), top, gp) for g in groups], task_point))
    if ranked:
        for p in gp:
            if p < n_blocks:
                add(_three_level(tasks, n_blocks, ranked[0], [p] * len(ranked[0]), task_point))
    add(_dendrogram_tree(dendro, n_blocks, top, gp))
    return trees[:max_trees]


def _dendrogram_tree(dendro: Dendrogram, n_blocks: int, top: float, points: Sequence[int]) -> BranchTree:
    parts_at = []
    for b in range(n_blocks):
        active = [m for m in dendro.merges if _point(m.similarity, top, points) > b]
        parts_at.append(dendro._components(active))
    return BranchTree(dendro.tasks, parts_at)


def grouping_params(groups: Sequence[Sequence[str]], tasks: Sequence[str]) -> dict[str, int]:
    """``{"tree.group.<task>": g}`` fixing the search's task grouping to ``groups`` (labels in
    order of the groups' first tasks), e.g. for ``optuna.samplers.PartialFixedSampler`` to
    restrict the search to an affinity-derived grouping.

    Raises:
        ValueError: If ``groups`` is not a partition of ``tasks``.
    """
    flat = [t for g in groups for t in g]
    if sorted(flat) != sorted(tasks) or len(set(flat)) != len(flat):
        raise ValueError(f"groups {list(map(list, groups))} are not a partition of {list(tasks)}")
    order = {t: i for i, t in enumerate(tasks)}
    ranked = sorted((list(g) for g in groups), key=lambda g: min(order[t] for t in g))
    return {f"tree.group.{t}": g for t in tasks for g, part in enumerate(ranked) if t in part}


class _SpaceLike(Protocol):
    tasks: list[str]
    n_blocks: int
    max_groups: int
    group_points: tuple[int, ...]
    task_points: tuple[int, ...]


def seed_params(result: AffinityResult, space: _SpaceLike | Any, *, max_trees: int = 8) -> list[dict[str, int]]:
    """Trial parameters of the affinity-derived trees that the search space can express.

    Args:
        result: An affinity result for the same tasks.
        space: An :class:`automtl.space.SearchSpace` (or anything with its ``tasks``,
            ``n_blocks``, ``max_groups``, ``group_points`` and ``task_points``).
        max_trees: At most this many trees are proposed (before dropping inexpressible ones).

    Returns:
        Parameter dicts for ``study.enqueue_trial(params, skip_if_exists=True)``, best first;
        the balancer and training parameters are left to the sampler.

    Raises:
        ValueError: If the tasks differ from the space's.
    """
    if list(result.tasks) != list(space.tasks):
        raise ValueError(f"affinity tasks {result.tasks} differ from the search's tasks {list(space.tasks)}")
    trees = trees_from_affinity(
        result,
        space.n_blocks,
        max_groups=space.max_groups,
        group_points=space.group_points,
        task_points=space.task_points,
        max_trees=max_trees,
    )
    out = []
    for tree in trees:
        params = trial_params_for_tree(tree, space.max_groups, space.group_points, space.task_points)
        if params is not None and params not in out:
            out.append(params)
    return out
