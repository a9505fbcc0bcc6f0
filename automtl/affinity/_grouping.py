"""Task groupings from an affinity matrix: TAG's network-selection objective, solved exactly by
branch-and-bound while that is fast and by local search beyond.

Objective (Fifty et al., NeurIPS 2021, §3.3 "Network Selection"): the affinity of a group
``G`` onto a member ``j`` is the mean affinity of the other members onto it,

    A(G, j) = (1 / (|G| − 1)) Σ_{i ∈ G, i ≠ j} M[i, j]     (0 for a task alone),

and a grouping's *total affinity* is ``Σ_j A(G(j), j)``, each task scored by its group. TAG lets
groups overlap (a task may be trained in several networks and served by its best one); a
:class:`~automtl.tree.BranchTree` gives each task exactly one branch, so here a grouping is a
partition of the tasks into at most ``k`` groups. Summed over a group's members the objective
is ``f(G) = W(G) / (|G| − 1)`` with ``W(G)`` the sum of ``M`` over ordered pairs inside ``G``:
the size of the group times the mean pairwise affinity inside it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Grouping", "best_grouping", "grouping_score", "select_grouping"]

DEFAULT_NODE_LIMIT = 50_000
_EPS = 1e-12


@dataclass(frozen=True)
class Grouping:
    """The outcome of :func:`select_grouping`.

    Attributes:
        groups: Task names per group; groups ordered by their first task, tasks in input order.
        score: Total affinity ``Σ_j A(G(j), j)`` (same unit as the matrix; higher is better).
        exact: True when branch-and-bound finished, so ``score`` is the optimum.
        method: ``branch_and_bound``, ``local_search`` or ``branch_and_bound+local_search``
            (the search ran out of nodes; the best grouping either found).
        nodes: Branch-and-bound nodes visited.
        seconds: Wall time in seconds.
    """

    groups: list[list[str]]
    score: float
    exact: bool
    method: str
    nodes: int
    seconds: float


def _clean(matrix: np.ndarray | Sequence[Sequence[float]], n: int) -> list[list[float]]:
    m = np.array(matrix, dtype=float)
    if m.shape != (n, n):
        raise ValueError(f"the matrix must be [{n}, {n}] for {n} tasks, got {list(m.shape)}")
    m = np.where(np.isfinite(m), m, 0.0)
    np.fill_diagonal(m, 0.0)
    return m.tolist()  # type: ignore[no-any-return]


def _score(m: list[list[float]], groups: Sequence[Sequence[int]]) -> float:
    total = 0.0
    for g in groups:
        if len(g) > 1:
            total += sum(m[i][j] for i in g for j in g if i != j) / (len(g) - 1)
    return total


def grouping_score(matrix: np.ndarray, tasks: Sequence[str], groups: Sequence[Sequence[str]]) -> float:
    """TAG's total affinity ``Σ_j A(G(j), j)`` of a partition (NaN entries count as 0).

    Args:
        matrix: ``[T, T]`` with ``matrix[i, j]`` the affinity of task ``i`` onto task ``j``.
        tasks: The row/column names.
        groups: A partition of ``tasks``.

    Raises:
        ValueError: If ``groups`` is not a partition of ``tasks``.
    """
    index = {t: i for i, t in enumerate(tasks)}
    flat = [t for g in groups for t in g]
    if sorted(flat) != sorted(tasks) or len(set(flat)) != len(flat):
        raise ValueError(f"groups {list(map(list, groups))} are not a partition of {list(tasks)}")
    return _score(_clean(matrix, len(tasks)), [[index[t] for t in g] for g in groups])


class _Budget(Exception):
    pass


def _local_search(m: list[list[float]], k: int, starts: Sequence[Sequence[int]], restarts: int, seed: int) -> tuple[list[int], float]:
    """Best-improvement moves and swaps from several starting assignments (labels ``0..k-1``)."""
    n = len(m)
    s = [[m[i][j] + m[j][i] for j in range(n)] for i in range(n)]
    rng = random.Random(seed)
    inits = [list(a) for a in starts]
    inits += [[rng.randrange(k) for _ in range(n)] for _ in range(restarts)]
    best_assign, best_score = [0] * n, _score(m, [list(range(n))])

    def f(w: float, size: int) -> float:
        return w / (size - 1) if size > 1 else 0.0

    for assign in inits:
        size = [0] * k
        conn = [[0.0] * k for _ in range(n)]  # conn[t][g] = Σ_{i in g, i != t} S[i, t]
        for t in range(n):
            size[assign[t]] += 1
        for t in range(n):
            for i in range(n):
                if i != t:
                    conn[t][assign[i]] += s[i][t]
        w = [0.0] * k
        for t in range(n):
            w[assign[t]] += conn[t][assign[t]] / 2
        while True:
            best_gain, best_move = _EPS, None
            for t in range(n):
                a = assign[t]
                base_a = f(w[a], size[a])
                new_a = f(w[a] - conn[t][a], size[a] - 1)
                for b in range(k):
                    if b == a:
                        continue
                    gain = new_a - base_a + f(w[b] + conn[t][b], size[b] + 1) - f(w[b], size[b])
                    if gain > best_gain:
                        best_gain, best_move = gain, ("move", t, b)
            if best_move is None:  # swaps escape plateaus where no single move helps
                for t in range(n):
                    for u in range(t + 1, n):
                        a, b = assign[t], assign[u]
                        if a == b:
                            continue
                        wa = w[a] - conn[t][a] + conn[u][a] - s[t][u]
                        wb = w[b] - conn[u][b] + conn[t][b] - s[t][u]
                        gain = f(wa, size[a]) + f(wb, size[b]) - f(w[a], size[a]) - f(w[b], size[b])
                        if gain > best_gain:
                            best_gain, best_move = gain, ("swap", t, u)
            if best_move is None:
                break
            moves = [(best_move[1], best_move[2])] if best_move[0] == "move" else [
                (best_move[1], assign[best_move[2]]),
                (best_move[2], assign[best_move[1]]),
            ]
            for t, b in moves:
                a = assign[t]
                w[a] -= conn[t][a]
                w[b] += conn[t][b]
                size[a] -= 1
                size[b] += 1
                assign[t] = b
                for i in range(n):
                    if i != t:
                        conn[i][a] -= s[t][i]
                        conn[i][b] += s[t][i]
        score = _score(m, _groups_of(assign))
        if score > best_score + _EPS:
            best_assign, best_score = list(assign), score
    return best_assign, best_score


def _groups_of(assign: Sequence[int]) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for t, g in enumerate(assign):
        groups.setdefault(g, []).append(t)
    return sorted(groups.values(), key=lambda g: g[0])


def _branch_and_bound(
    m: list[list[float]], k: int, incumbent: list[list[int]], node_limit: int | None
) -> tuple[list[list[int]], float, int, bool]:
    """Exact search over partitions into at most ``k`` groups (restricted-growth order, so each
    partition is visited once). Bound: each assigned task scores at most the best mean it could
    reach with its group's current members plus any unassigned tasks; each unassigned task at
    most its best such mean over the groups it may still join (or a new group, while fewer than
    ``k`` exist)."""
    n = len(m)
    order = sorted(range(n), key=lambda t: -sum(abs(m[i][t]) + abs(m[t][i]) for i in range(n)))
    by_col = [sorted((i for i in range(n) if i != j), key=lambda i: -m[i][j]) for j in range(n)]
    free = [True] * n
    groups: list[list[int]] = []
    best_groups, best_score = [list(g) for g in incumbent], _score(m, incumbent)
    nodes = 0

    def best_mean(j: int, mates: Sequence[int]) -> float:
        """The highest mean of column ``j`` over ``mates`` plus any free tasks (``mates`` non-empty)."""
        total = sum(m[i][j] for i in mates)
        c = len(mates)
        mean = total / c
        for i in by_col[j]:
            if not free[i] or i == j:
                continue
            v = m[i][j]
            if v <= mean:
                break
            total += v
            c += 1
            mean = total / c
        return mean

    def bound() -> float:
        ub = 0.0
        room = len(groups) < k
        for t in range(n):
            if not free[t]:
                continue
            options = [best_mean(t, g) for g in groups]
            if room:  # a new group: alone (0) or with free tasks only
                options.append(max(0.0, next((m[i][t] for i in by_col[t] if free[i]), 0.0)))
            ub += max(options)
        for g in groups:
            for j in g:
                mates = [i for i in g if i != j]
                if mates:
                    ub += best_mean(j, mates)
                else:
                    ub += max(0.0, next((m[i][j] for i in by_col[j] if free[i]), 0.0))
        return ub

    def rec(depth: int) -> None:
        nonlocal nodes, best_score, best_groups
        nodes += 1
        if node_limit is not None and nodes > node_limit:
            raise _Budget
        if depth == n:
            score = _score(m, groups)
            if score > best_score + _EPS:
                best_score, best_groups = score, [list(g) for g in groups]
            return
        if bound() <= best_score + _EPS:
            return
        t = order[depth]
        free[t] = False
        for g in groups:
            g.append(t)
            rec(depth + 1)
            g.pop()
        if len(groups) < k:
            groups.append([t])
            rec(depth + 1)
            groups.pop()
        free[t] = True

    try:
        rec(0)
        finished = True
    except _Budget:
        finished = False
    return [sorted(g) for g in best_groups], best_score, nodes, finished


def select_grouping(
    matrix: np.ndarray | Sequence[Sequence[float]],
    tasks: Sequence[str],
    max_groups: int,
    *,
    method: str = "auto",
    node_limit: int | None = DEFAULT_NODE_LIMIT,
    restarts: int = 20,
    seed: int = 0,
    starts: Sequence[Sequence[Sequence[str]]] = (),
) -> Grouping:
    """The partition of ``tasks`` into at most ``max_groups`` groups with the highest total affinity.

    Methods:

    * ``exact``: branch-and-bound to the end (exponential in the worst case);
    * ``heuristic``: local search (best single-task moves, then pairwise swaps, until no
      change helps) from the hard-sharing grouping, every ``starts`` grouping and
      ``restarts`` random ones (seeded);
    * ``auto`` (default): the heuristic's result seeds branch-and-bound as its incumbent; if
      the search visits more than ``node_limit`` nodes it stops and the best grouping found is
      returned with ``exact=False``.

    Args:
        matrix: ``[T, T]``, ``matrix[i, j]`` the affinity of task ``i`` onto task ``j``
            (e.g. TAG's ``Z_{i→j}``); NaN counts as 0; the diagonal is ignored.
        tasks: Task names, the matrix's order.
        max_groups: At most this many groups (``k >= 1``).
        method: ``auto``, ``exact`` or ``heuristic``.
        node_limit: Branch-and-bound budget for ``auto`` (ignored by ``exact``).
        restarts: Random starts of the local search.
        seed: Seeds the random starts.
        starts: Extra starting groupings (e.g. a hierarchical clustering's cuts).

    Returns:
        A :class:`Grouping`.

    Raises:
        ValueError: ``max_groups < 1``, an unknown method, or a matrix of the wrong shape.
    """
    start_time = time.perf_counter()
    tasks = list(tasks)
    n = len(tasks)
    if max_groups < 1:
        raise ValueError(f"max_groups must be >= 1, got {max_groups}")
    if method not in ("auto", "exact", "heuristic"):
        raise ValueError(f"unknown method '{method}'; expected auto, exact or heuristic")
    m = _clean(matrix, n)
    k = min(max_groups, n)
    index = {t: i for i, t in enumerate(tasks)}
    start_assign = [[0] * n]
    for grouping in starts:
        assign = [0] * n
        for g, part in enumerate(grouping):
            for t in part:
                assign[index[t]] = min(g, k - 1)
        start_assign.append(assign)
    nodes, exact = 0, False
    if method == "exact":
        groups, score, nodes, exact = _branch_and_bound(m, k, [list(range(n))], None)
        used = "branch_and_bound"
    else:
        assign, score = _local_search(m, k, start_assign, restarts, seed)
        groups = _groups_of(assign)
        used = "local_search"
        if method == "auto":
            groups, score, nodes, exact = _branch_and_bound(m, k, groups, node_limit)
            used = "branch_and_bound" if exact else "branch_and_bound+local_search"
    named = [[tasks[i] for i in sorted(g)] for g in sorted(groups, key=min)]
    return Grouping(named, float(score), exact, used, nodes, time.perf_counter() - start_time)


def best_grouping(
    matrix: np.ndarray | Sequence[Sequence[float]], tasks: Sequence[str], max_groups: int, **options: object
) -> tuple[list[list[str]], float]:
    """The grouping of at most ``max_groups`` groups that maximizes TAG's total affinity.

    Shorthand for :func:`select_grouping` (same arguments; see there for the methods).

    Example:
        >>> import numpy as np
        >>> z = np.array([[0, .2, -.1], [.2, 0, -.1], [-.1, -.1, 0]])  # z[i, j] = Z_{i->j}
        >>> best_grouping(z, ["a", "b", "c"], 2)
        ([['a', 'b'], ['c']], 0.4)

    Returns:
        ``(groups, score)``: task names per group, and ``Σ_j A(G(j), j)`` (higher is better).
    """
    result = select_grouping(matrix, tasks, max_groups, **options)  # type: ignore[arg-type]
    return result.groups, result.score
