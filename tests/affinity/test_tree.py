"""From affinity to trees, and from trees to the search's trial parameters (round trips)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from automtl.affinity import (
    AffinityResult,
    affinity_dendrogram,
    grouping_params,
    seed_params,
    trees_from_affinity,
    trial_params_for_tree,
)
from automtl.config import parse_config
from automtl.space import SearchSpace
from automtl.tree import BranchTree
from tests.conftest import set_key, tiny_raw

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(tasks: list[str], n_blocks: int, max_groups: int, gp: list[int] | None, tp: list[int] | None) -> SearchSpace:
    raw = tiny_raw(Path("unused"))
    set_key(raw, "space.max_groups", max_groups)
    if gp is not None:
        set_key(raw, "space.group_split_points", gp)
    if tp is not None:
        set_key(raw, "space.task_split_points", tp)
    return SearchSpace(parse_config(raw), tasks, n_blocks)


def _rebuild(params: dict[str, int], space: SearchSpace) -> BranchTree:
    return BranchTree.from_branch_points(
        space.tasks,
        space.n_blocks,
        {t: params[f"tree.group.{t}"] for t in space.tasks},
        {g: params[f"tree.group_split.{g}"] for g in range(space.max_groups)},
        {t: params[f"tree.task_split.{t}"] for t in space.tasks},
    )


@st.composite
def spaces(draw: st.DrawFn) -> SearchSpace:
    n_tasks = draw(st.integers(1, 7))
    n_blocks = draw(st.integers(1, 5))
    points = list(range(n_blocks + 1))
    subset = st.lists(st.sampled_from(points), min_size=1, unique=True).map(sorted)
    gp = draw(st.none() | subset)
    tp = draw(st.none() | subset)
    return _space([f"t{i}" for i in range(n_tasks)], n_blocks, draw(st.integers(1, 4)), gp, tp)


@settings(max_examples=60, deadline=None)
@given(spaces(), st.integers(0, 2**31 - 1))
def test_sampled_tree_to_params_to_same_tree(space: SearchSpace, seed: int) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(10):
        trial = study.ask()
        tree = space.sample(trial).tree
        params = trial_params_for_tree(tree, space.max_groups, space.group_points, space.task_points)
        assert params is not None, tree
        assert set(params) == {k for k in trial.params if k.startswith("tree.")}
        assert _rebuild(params, space) == tree
        study.tell(trial, 0.0)


def test_enqueued_params_make_the_search_sample_that_tree() -> None:
    tasks = ["a", "b", "c", "d", "e"]
    space = _space(tasks, 4, 2, [1, 2, 3, 4], [3, 4])  # the quickstart's space
    tree = BranchTree.from_branch_points(tasks, 4, {"a": 0, "b": 0, "c": 1, "d": 1, "e": 0}, {0: 4, 1: 2}, dict.fromkeys(tasks, 4))
    params = trial_params_for_tree(tree, space.max_groups, space.group_points, space.task_points)
    assert params is not None
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(params, skip_if_exists=True)
    assert space.sample(study.ask()).tree == tree


def test_inexpressible_trees_give_none() -> None:
    tasks = list("abcdefgh")
    # two groups that each split into two multi-task parts: no trunk-groups-tasks encoding
    tree = BranchTree(tasks, [[tasks[:4], tasks[4:]], [tasks[:2], tasks[2:4], tasks[4:6], tasks[6:]]])
    assert trial_params_for_tree(tree, 8) is None
    # needs two groups
    nested = BranchTree(tasks[:4], [[tasks[:4]], [tasks[:2], tasks[2:4]], [[t] for t in tasks[:4]]])
    assert trial_params_for_tree(nested, 1) is None
    assert trial_params_for_tree(nested, 2) is not None
    # a split at a point the space does not allow
    assert trial_params_for_tree(nested, 2, group_points=[2, 3], task_points=[2, 3]) is None


def _blocks(tasks: list[str], blocks: list[list[int]], inside: float, across: float) -> AffinityResult:
    n = len(tasks)
    m = np.full((n, n), across)
    for block in blocks:
        for i in block:
            for j in block:
                m[i, j] = inside
    return AffinityResult("lookahead", tasks, m, np.ones((n, n), dtype=np.int64), convention="test")


def test_dendrogram_cuts_follow_the_blocks() -> None:
    tasks = list("abcde")
    result = _blocks(tasks, [[0, 1, 2], [3, 4]], 0.6, -0.2)
    dendro = affinity_dendrogram(result)
    assert len(dendro.merges) == 4
    sims = [m.similarity for m in dendro.merges]
    assert sims == sorted(sims, reverse=True)
    assert dendro.cut(1) == [tasks]
    assert dendro.cut(2) == [["a", "b", "c"], ["d", "e"]]
    assert len(dendro.cut(5)) == 5


def test_trees_from_affinity_put_hostile_groups_apart_early() -> None:
    tasks = list("abcde")
    result = _blocks(tasks, [[0, 1, 2], [3, 4]], 0.6, -0.2)
    trees = trees_from_affinity(result, 4, max_groups=2, group_points=[1, 2, 3, 4], task_points=[3, 4])
    assert trees and all(t.n_blocks == 4 and not t.is_hard_sharing() for t in trees)
    best = trees[0]
    assert best.partitions[1] == (("a", "b", "c"), ("d", "e"))  # they hurt each other: apart at point 1
    assert best.partitions[0] == (tuple(tasks),)
    assert len(set(trees)) == len(trees)


def test_trees_from_affinity_share_longer_when_groups_help_each_other() -> None:
    tasks = list("abcd")
    result = _blocks(tasks, [[0, 1], [2, 3]], 0.6, 0.4)
    tree = trees_from_affinity(result, 4, max_groups=2)[0]
    first_split = next(b for b, p in enumerate(tree.partitions) if len(p) > 1)
    assert first_split >= 2


def test_seed_params_reproduce_affinity_trees() -> None:
    tasks = list("abcde")
    space = _space(tasks, 4, 2, [1, 2, 3, 4], [3, 4])
    result = _blocks(tasks, [[0, 1, 2], [3, 4]], 0.6, -0.2)
    seeds = seed_params(result, space)
    trees = trees_from_affinity(result, 4, max_groups=2, group_points=[1, 2, 3, 4], task_points=[3, 4])
    assert seeds
    assert all(_rebuild(p, space) in trees for p in seeds)
    with pytest.raises(ValueError, match="differ"):
        seed_params(_blocks(list("vwxyz"), [[0]], 0.1, 0.1), space)


def test_grouping_params_fix_the_grouping_through_partial_fixed_sampler() -> None:
    tasks = list("abcde")
    space = _space(tasks, 4, 3, None, None)
    fixed = grouping_params([["d", "e"], ["a", "b", "c"]], tasks)
    assert fixed == {"tree.group.a": 0, "tree.group.b": 0, "tree.group.c": 0, "tree.group.d": 1, "tree.group.e": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.PartialFixedSampler(fixed, optuna.samplers.RandomSampler(seed=0))
    study = optuna.create_study(sampler=sampler)
    for _ in range(5):
        trial = study.ask()
        space.sample(trial)
        assert {k: v for k, v in trial.params.items() if k.startswith("tree.group.")} == fixed
        study.tell(trial, 0.0)
    with pytest.raises(ValueError, match="partition"):
        grouping_params([["a"]], tasks)
