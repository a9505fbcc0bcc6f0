"""The tree's encoding as trial parameters, both directions (:mod:`automtl.encoding`)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from automtl.encoding import (
    group_param,
    group_split_param,
    task_split_param,
    tree_from_params,
    trial_params_for_tree,
)
from automtl.tree import BranchTree


@st.composite
def encoded_trees(draw: st.DrawFn, *, with_obvious_points: bool = False) -> tuple[BranchTree, int, list[int], list[int]]:
    """A tree decoded from random valid parameters: ``(tree, max_groups, group_points, task_points)``."""
    n_tasks, n_blocks, max_groups = draw(st.integers(1, 6)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    subset = st.lists(st.integers(0, n_blocks), min_size=1, max_size=n_blocks + 1, unique=True).map(sorted)
    gp, tp = draw(subset), draw(subset)
    if with_obvious_points:
        gp, tp = sorted({*gp, n_blocks}), sorted({*tp, 0, n_blocks})
    tasks = [f"t{i}" for i in range(n_tasks)]
    params: dict[str, Any] = {group_param(t): draw(st.integers(0, max_groups - 1)) for t in tasks}
    params |= {group_split_param(g): draw(st.sampled_from(gp)) for g in range(max_groups)}
    params |= {task_split_param(t): draw(st.sampled_from(tp)) for t in tasks}
    return tree_from_params(params, tasks, n_blocks, max_groups), max_groups, gp, tp


@settings(max_examples=200, deadline=None)
@given(encoded_trees())
def test_a_decoded_tree_encodes_back_to_itself(case: tuple[BranchTree, int, list[int], list[int]]) -> None:
    tree, max_groups, gp, tp = case
    params = trial_params_for_tree(tree, max_groups, gp, tp)
    assert params is not None, tree
    tasks = list(tree.tasks)
    assert set(params) == {
        *(group_param(t) for t in tasks),
        *(group_split_param(g) for g in range(max_groups)),
        *(task_split_param(t) for t in tasks),
    }
    assert all(0 <= params[group_param(t)] < max_groups for t in tasks)
    assert all(params[group_split_param(g)] in gp for g in range(max_groups))
    assert all(params[task_split_param(t)] in tp for t in tasks)
    assert tree_from_params(params, tasks, tree.n_blocks, max_groups) == tree


@settings(max_examples=100, deadline=None)
@given(encoded_trees(with_obvious_points=True))
def test_hard_sharing_and_single_task_networks_are_always_expressible(case: tuple[BranchTree, int, list[int], list[int]]) -> None:
    tree, max_groups, gp, tp = case
    tasks, n_blocks = list(tree.tasks), tree.n_blocks
    for obvious in (BranchTree.hard_sharing(tasks, n_blocks), BranchTree.single_task(tasks, n_blocks)):
        params = trial_params_for_tree(obvious, max_groups, gp, tp)
        assert params is not None, (obvious, gp, tp)
        assert tree_from_params(params, tasks, n_blocks, max_groups) == obvious


def test_decoding_by_hand() -> None:
    # a, b in group 0 leaving the trunk at 1; c alone in group 1 from 0; b leaves its group at 2
    params = {"tree.group.a": 0, "tree.group.b": 0, "tree.group.c": 1, "tree.group_split.0": 1, "tree.group_split.1": 0}
    params |= {"tree.task_split.a": 3, "tree.task_split.b": 2, "tree.task_split.c": 3}
    tree = tree_from_params(params, ["a", "b", "c"], 3, 2)
    assert tree == BranchTree(["a", "b", "c"], [[["a", "b"], ["c"]], [["a", "b"], ["c"]], [["a"], ["b"], ["c"]]])


def test_decoding_errors() -> None:
    params = {"tree.group.a": 0, "tree.group_split.0": 3, "tree.task_split.a": 3}
    with pytest.raises(KeyError):
        tree_from_params({k: v for k, v in params.items() if k != "tree.task_split.a"}, ["a"], 3, 1)
    with pytest.raises(ValueError, match="outside"):
        tree_from_params(params | {"tree.task_split.a": 4}, ["a"], 3, 1)


@pytest.mark.parametrize(("max_groups", "gp", "tp"), [(0, None, None), (1, [], None), (1, None, [])])
def test_no_groups_or_no_points_express_nothing(max_groups: int, gp: list[int] | None, tp: list[int] | None) -> None:
    assert trial_params_for_tree(BranchTree.hard_sharing(["a", "b"], 2), max_groups, gp, tp) is None
