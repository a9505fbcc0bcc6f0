"""Groupings from affinity: branch-and-bound equals brute force; the heuristic is valid."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from automtl.affinity import best_grouping, grouping_score, select_grouping


def partitions(items: list[str], k: int) -> Iterator[list[list[str]]]:
    """Every partition of ``items`` into at most ``k`` non-empty groups."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for p in partitions(rest, k):
        for i in range(len(p)):
            yield p[:i] + [[first, *p[i]]] + p[i + 1 :]
        if len(p) < k:
            yield [[first], *p]


def brute_force(m: np.ndarray, tasks: list[str], k: int) -> float:
    return max(grouping_score(m, tasks, p) for p in partitions(tasks, k))


def _problem(seed: int, n: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, n)) * rng.uniform(0.001, 1) + rng.normal() * 0.3
    if seed % 3 == 0:  # some NaN (unmeasured pairs) count as 0
        m[rng.integers(n), rng.integers(n)] = np.nan
    return m, [f"t{i}" for i in range(n)]


@pytest.mark.parametrize("n", range(1, 10))
@pytest.mark.parametrize("seed", range(3))
def test_branch_and_bound_equals_brute_force(n: int, seed: int) -> None:
    m, tasks = _problem(seed * 100 + n, n)
    k = 1 + (seed * 7 + n) % n
    expected = brute_force(m, tasks, k)
    for method in ("exact", "auto"):
        found = select_grouping(m, tasks, k, method=method)
        assert found.exact
        assert found.score == pytest.approx(expected, abs=1e-9)
        assert grouping_score(m, tasks, found.groups) == pytest.approx(found.score, abs=1e-12)
        assert len(found.groups) <= k


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 7), st.integers(1, 4), st.integers(0, 10_000))
def test_heuristic_is_a_valid_grouping_no_better_than_the_optimum(n: int, k: int, seed: int) -> None:
    m, tasks = _problem(seed, n)
    heur = select_grouping(m, tasks, k, method="heuristic")
    exact = select_grouping(m, tasks, k, method="exact")
    assert sorted(t for g in heur.groups for t in g) == sorted(tasks)
    assert len(heur.groups) <= k and not heur.exact
    assert heur.score <= exact.score + 1e-9


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 7), st.integers(1, 3), st.integers(0, 10_000))
def test_optimum_does_not_depend_on_task_order(n: int, k: int, seed: int) -> None:
    m, tasks = _problem(seed, n)
    perm = np.random.default_rng(seed).permutation(n)
    a = select_grouping(m, tasks, k, method="exact").score
    b = select_grouping(m[np.ix_(perm, perm)], [tasks[i] for i in perm], k, method="exact").score
    assert a == pytest.approx(b, abs=1e-9)


def test_budget_exhausted_falls_back_and_says_so() -> None:
    m, tasks = _problem(1, 14)
    found = select_grouping(m, tasks, 4, node_limit=50)
    assert not found.exact and found.method == "branch_and_bound+local_search" and found.nodes == 51
    assert len(found.groups) <= 4


def test_block_structure_is_recovered() -> None:
    tasks = ["a", "b", "c", "d", "e"]
    m = np.full((5, 5), -0.5)
    for block in ([0, 1, 2], [3, 4]):
        for i in block:
            for j in block:
                m[i, j] = 0.8
    groups, score = best_grouping(m, tasks, 3)
    assert groups == [["a", "b", "c"], ["d", "e"]]
    assert score == pytest.approx(5 * 0.8)
    # one group: (8 ordered pairs inside blocks at 0.8 + 12 across at -0.5) / (5 - 1)
    assert best_grouping(m, tasks, 1) == ([tasks], pytest.approx((8 * 0.8 - 12 * 0.5) / 4))


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="max_groups"):
        select_grouping(np.zeros((2, 2)), ["a", "b"], 0)
    with pytest.raises(ValueError, match="method"):
        select_grouping(np.zeros((2, 2)), ["a", "b"], 1, method="magic")
    with pytest.raises(ValueError, match=r"\[3, 3\]"):
        select_grouping(np.zeros((2, 2)), ["a", "b", "c"], 1)
    with pytest.raises(ValueError, match="partition"):
        grouping_score(np.zeros((2, 2)), ["a", "b"], [["a"]])
