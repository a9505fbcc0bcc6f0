"""BranchTree invariants, as property tests over random trees."""

from __future__ import annotations

import json
from collections.abc import Sequence

import networkx as nx
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from automtl.backbones import create_backbone
from automtl.build import BranchedNet
from automtl.tasks import TaskSpec
from automtl.tree import BranchTree, Node

POOL = ("a", "b", "c", "d", "e", "has_bag", "t-7")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ strategies
def _group(members: Sequence[str], labels: Sequence[int]) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for member, label in zip(members, labels):
        groups.setdefault(label, []).append(member)
    return list(groups.values())


@st.composite
def task_lists(draw: st.DrawFn, max_tasks: int = 5) -> list[str]:
    k = draw(st.integers(1, max_tasks))
    return list(draw(st.permutations(POOL))[:k])


@st.composite
def refined(draw: st.DrawFn) -> tuple[list[str], list[list[list[str]]]]:
    """Tasks and raw partitions built by successive random refinements, parts and members
    shuffled (the constructor must canonicalise them)."""
    tasks = draw(task_lists())
    n_blocks = draw(st.integers(1, 5))
    first = _group(tasks, draw(st.lists(st.integers(0, len(tasks) - 1), min_size=len(tasks), max_size=len(tasks))))
    partitions = [first]
    for _ in range(1, n_blocks):
        nxt: list[list[str]] = []
        for part in partitions[-1]:
            labels = draw(st.lists(st.integers(0, len(part) - 1), min_size=len(part), max_size=len(part)))
            nxt += _group(part, labels)
        partitions.append(nxt)
    shuffled = [
        [draw(st.permutations(part)) for part in draw(st.permutations(partition))] for partition in partitions
    ]
    return tasks, [[list(p) for p in partition] for partition in shuffled]


@st.composite
def branch_points(draw: st.DrawFn) -> tuple[list[str], int, dict[str, int], dict[int, int], dict[str, int]]:
    tasks = draw(task_lists())
    n_blocks = draw(st.integers(1, 5))
    n_groups = draw(st.integers(1, 3))
    group_of = {t: draw(st.integers(0, n_groups - 1)) for t in tasks}
    group_split = {g: draw(st.integers(0, n_blocks)) for g in range(n_groups)}
    task_split = {t: draw(st.integers(0, n_blocks)) for t in tasks}
    return tasks, n_blocks, group_of, group_split, task_split


@st.composite
def trees(draw: st.DrawFn) -> BranchTree:
    if draw(st.booleans()):
        return BranchTree(*draw(refined()))
    tasks, n_blocks, group_of, group_split, task_split = draw(branch_points())
    return BranchTree.from_branch_points(tasks, n_blocks, group_of, group_split, task_split)


# ------------------------------------------------------------------ invariants
def assert_valid(tree: BranchTree) -> None:
    """Each partition covers every task once; each refines the one before."""
    for b, partition in enumerate(tree.partitions):
        members = [t for part in partition for t in part]
        assert sorted(members) == sorted(tree.tasks), f"block {b} does not cover the tasks exactly once"
        assert all(part for part in partition)
        if b:
            previous = [set(p) for p in tree.partitions[b - 1]]
            for part in partition:
                assert any(set(part) <= prev for prev in previous), f"block {b} does not refine block {b - 1}"


@FAST
@given(refined())
def test_refinements_are_valid_trees(raw: tuple[list[str], list[list[list[str]]]]) -> None:
    tasks, partitions = raw
    tree = BranchTree(tasks, partitions)
    assert_valid(tree)
    assert tree.tasks == tuple(tasks) and tree.n_blocks == len(partitions)
    # canonical: the same architecture however its parts were listed
    assert [sorted(map(sorted, p)) for p in tree.partitions] == [sorted(map(sorted, p)) for p in partitions]
    assert tree == BranchTree(tasks, [[sorted(p) for p in sorted(partition)] for partition in partitions])
    assert hash(tree) == hash(BranchTree(tasks, tree.partitions))


@FAST
@given(branch_points())
def test_from_branch_points_matches_its_definition(args: tuple) -> None:
    tasks, n_blocks, group_of, group_split, task_split = args
    tree = BranchTree.from_branch_points(tasks, n_blocks, group_of, group_split, task_split)
    assert_valid(tree)

    def where(t: str, b: int) -> tuple:
        if b >= task_split[t]:
            return ("task", t)
        if b >= group_split[group_of[t]]:
            return ("group", group_of[t])
        return ("trunk",)

    for b in range(n_blocks):
        for t in tasks:
            assert set(tree.part_of(t, b)) == {u for u in tasks if where(u, b) == where(t, b)}


@FAST
@given(trees())
def test_serialisation_round_trips_are_lossless(tree: BranchTree) -> None:
    for again in (
        BranchTree.from_yaml(tree.to_yaml()),
        BranchTree.from_json(tree.to_json()),
        BranchTree.from_dict(tree.to_dict()),
        BranchTree.from_dict(yaml.safe_load(tree.to_yaml())),
        BranchTree.from_dict(json.loads(tree.to_json())),
    ):
        assert again == tree
        assert again.tasks == tree.tasks and again.partitions == tree.partitions
        assert again.to_dict() == tree.to_dict()
    assert BranchTree.from_yaml("# a comment line, as in an export\n" + tree.to_yaml()) == tree


@FAST
@given(trees())
def test_networkx_view_is_an_arborescence_with_one_head_per_task(tree: BranchTree) -> None:
    g = tree.to_networkx()
    assert nx.is_arborescence(g)
    assert [n for n, d in g.in_degree() if d == 0] == ["input"]
    heads = [n for n, kind in g.nodes(data="kind") if kind == "head"]
    assert sorted(heads) == sorted(f"head:{t}" for t in tree.tasks)
    assert sorted(n for n in g if g.out_degree(n) == 0) == sorted(heads)
    blocks = [n for n, kind in g.nodes(data="kind") if kind == "block"]
    assert len(blocks) == len(tree.nodes()) == sum(len(p) for p in tree.partitions)
    for t in tree.tasks:
        path = nx.shortest_path(g, "input", f"head:{t}")
        assert path == ["input", *(Node(b, tree.part_of(t, b)).key for b in range(tree.n_blocks)), f"head:{t}"]
        assert all(t in g.nodes[n]["tasks"] for n in path[1:-1])


@FAST
@given(trees())
def test_nodes_parents_and_leaves_are_consistent(tree: BranchTree) -> None:
    nodes = tree.nodes()
    assert len(set(nodes)) == len(nodes) and len({n.key for n in nodes}) == len(nodes)
    assert [n.block for n in nodes] == sorted(n.block for n in nodes)  # topological
    for node in nodes:
        parent = tree.parent(node)
        if node.block == 0:
            assert parent is None
        else:
            assert parent in nodes and parent.block == node.block - 1 and set(node.tasks) <= set(parent.tasks)
    for t in tree.tasks:
        assert tree.leaf(t) in nodes and t in tree.leaf(t).tasks and tree.leaf(t).block == tree.n_blocks - 1
    assert tree.is_hard_sharing() == all(len(p) == 1 for p in tree.partitions)


_TYPES = [
    lambda name: TaskSpec(name, "binary"),
    lambda name: TaskSpec(name, "multiclass", num_classes=3),
    lambda name: TaskSpec(name, "regression"),
    lambda name: TaskSpec(name, "multilabel", num_classes=2),
]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(), st.data())
def test_parameter_count_equals_the_built_network(tree: BranchTree, data: st.DataObject) -> None:
    widths = data.draw(st.lists(st.integers(1, 5), min_size=tree.n_blocks, max_size=tree.n_blocks))
    backbone = create_backbone("mlp", (3,), hidden=widths)
    tasks = [_TYPES[i % len(_TYPES)](t) for i, t in enumerate(tree.tasks)]
    net = BranchedNet(tree, backbone, tasks)
    heads = {t.name: backbone.out_features * t.output_dim + t.output_dim for t in tasks}
    actual = sum(p.numel() for p in net.parameters())
    assert tree.parameter_count(backbone.block_parameter_counts(), heads) == actual == net.num_parameters()


def test_parameter_count_rejects_wrong_lengths() -> None:
    tree = BranchTree.hard_sharing(["a", "b"], 2)
    with pytest.raises(ValueError, match="2 blocks"):
        tree.parameter_count([1, 2, 3], {"a": 1, "b": 1})
    with pytest.raises(ValueError, match="'b'"):
        tree.parameter_count([1, 2], {"a": 1})


# ------------------------------------------------------------------ rejections
@FAST
@given(refined(), st.data())
def test_constructor_rejects_a_partition_that_does_not_refine(raw: tuple, data: st.DataObject) -> None:
    tasks, partitions = raw
    candidates = [b for b in range(1, len(partitions)) if len(partitions[b - 1]) >= 2]
    assume(candidates)
    b = data.draw(st.sampled_from(candidates))
    p, q = data.draw(st.permutations(range(len(partitions[b - 1]))))[:2]
    t, u = partitions[b - 1][p][0], partitions[b - 1][q][0]
    # merge t's and u's parts at block b: they were apart at block b - 1
    merged = [part for part in partitions[b] if t not in part and u not in part]
    merged.append([x for part in partitions[b] if t in part or u in part for x in part])
    bad = [*partitions[:b], merged, *partitions[b + 1 :]]
    with pytest.raises(ValueError, match=rf"^block {b}: part .* does not refine block {b - 1}") as exc:
        BranchTree(tasks, bad)
    assert repr(t) in str(exc.value) and repr(u) in str(exc.value)


@FAST
@given(refined(), st.data())
def test_constructor_rejects_a_partition_that_does_not_cover(raw: tuple, data: st.DataObject) -> None:
    tasks, partitions = raw
    b = data.draw(st.integers(0, len(partitions) - 1))
    dropped = data.draw(st.sampled_from(tasks))
    holed = [[x for x in part if x != dropped] for part in partitions[b]]
    bad = [*partitions[:b], [p for p in holed if p], *partitions[b + 1 :]]
    with pytest.raises(ValueError, match=rf"^block {b}: tasks \['{dropped}'\] are in no part"):
        BranchTree(tasks, bad)


@FAST
@given(refined(), st.data())
def test_constructor_rejects_a_task_in_two_parts(raw: tuple, data: st.DataObject) -> None:
    tasks, partitions = raw
    b = data.draw(st.integers(0, len(partitions) - 1))
    twice = data.draw(st.sampled_from(tasks))
    bad = [*partitions[:b], [*partitions[b], [twice]], *partitions[b + 1 :]]
    with pytest.raises(ValueError, match=rf"^block {b}: task '{twice}' is in two parts"):
        BranchTree(tasks, bad)


@pytest.mark.parametrize(
    ("tasks", "partitions", "message"),
    [
        ([], [[]], "at least one task"),
        (["a", "b"], [], "at least one block"),
        (["a", "a"], [[["a"]]], "repeat"),
        (["a", "b"], [[["a", "b"]], [["a", "b"], []]], "block 1: empty part"),
        (["a", "b"], [[["a", "b"]], [["a", "z"], ["b"]]], "block 1: unknown task 'z'"),
        (["a", "b", "c"], [[["a"], ["b", "c"]], [["a", "b"], ["c"]]], r"block 1: part \['a', 'b'\] does not refine"),
    ],
)
def test_constructor_errors_name_the_block(tasks: list, partitions: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BranchTree(tasks, partitions)


@pytest.mark.parametrize("point", [-1, 4])
def test_from_branch_points_rejects_points_outside_range(point: int) -> None:
    with pytest.raises(ValueError, match=rf"is {point}, outside \[0, 3\]"):
        BranchTree.from_branch_points(["a", "b"], 3, {"a": 0, "b": 0}, {0: 1}, {"a": 3, "b": point})
    with pytest.raises(ValueError, match="group 0"):
        BranchTree.from_branch_points(["a", "b"], 3, {"a": 0, "b": 0}, {0: point}, {"a": 3, "b": 3})


def test_from_dict_names_a_missing_key() -> None:
    with pytest.raises(ValueError, match="partitions"):
        BranchTree.from_dict({"tasks": ["a"]})


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n"])
def test_from_yaml_rejects_a_non_mapping(text: str) -> None:
    with pytest.raises(ValueError, match="'tasks' and 'partitions'"):
        BranchTree.from_yaml(text)


# ------------------------------------------------------------------ named shapes
@settings(max_examples=25, deadline=None)
@given(task_lists(), st.integers(1, 5))
def test_hard_sharing_and_single_task_shapes(tasks: list[str], n_blocks: int) -> None:
    hps = BranchTree.hard_sharing(tasks, n_blocks)
    assert hps.is_hard_sharing() and hps.n_blocks == n_blocks
    assert hps.partitions == ((tuple(tasks),),) * n_blocks
    assert len(hps.nodes()) == n_blocks
    assert hps.parameter_count([10] * n_blocks, {t: 1 for t in tasks}) == 10 * n_blocks + len(tasks)
    assert hps == BranchTree.from_branch_points(
        tasks, n_blocks, {t: 0 for t in tasks}, {0: n_blocks}, {t: n_blocks for t in tasks}
    )

    single = BranchTree.single_task(tasks, n_blocks)
    assert single.partitions == (tuple((t,) for t in tasks),) * n_blocks
    assert len(single.nodes()) == len(tasks) * n_blocks
    assert single.is_hard_sharing() == (len(tasks) == 1)
    assert single.parameter_count([10] * n_blocks, {t: 1 for t in tasks}) == len(tasks) * (10 * n_blocks + 1)
    assert single.to_networkx().out_degree("input") == len(tasks)
    assert single == BranchTree.from_branch_points(
        tasks, n_blocks, {t: 0 for t in tasks}, {0: n_blocks}, {t: 0 for t in tasks}
    )


def test_compact_and_render_draw_the_tree() -> None:
    tasks = ["a", "b", "c", "d"]
    tree = BranchTree(tasks, [[tasks], [["a", "b"], ["c", "d"]], [["a"], ["b"], ["c", "d"]]])
    assert tree.compact() == "0-3 | 0,1/2,3 | 0/1/2,3"
    assert repr(tree) == "BranchTree('0-3 | 0,1/2,3 | 0/1/2,3', tasks=['a', 'b', 'c', 'd'])"
    drawing = tree.render(["fc1", "fc2", "fc3"])
    assert drawing.splitlines()[:2] == ["input", "└─ fc1 [all tasks]"]
    for t in tasks:
        assert f"head {t}" in drawing
    assert "fc3 [c, d]" in drawing
    assert Node(1, ("a", "b")).key == "b1:a+b"


@FAST
@given(trees(), st.data())
def test_restrict_keeps_each_kept_tasks_path(tree: BranchTree, data: st.DataObject) -> None:
    keep = data.draw(st.lists(st.sampled_from(tree.tasks), min_size=1, unique=True))
    sub = tree.restrict(keep)
    assert_valid(sub)
    assert list(sub.tasks) == [t for t in tree.tasks if t in keep] and sub.n_blocks == tree.n_blocks
    for t in sub.tasks:
        for b in range(tree.n_blocks):
            # the same block copy, cut down to the kept tasks
            assert set(sub.part_of(t, b)) == set(tree.part_of(t, b)) & set(keep)
    assert tree.restrict(tree.tasks) == tree


def test_restrict_rejects_bad_task_lists() -> None:
    tree = BranchTree.hard_sharing(["a", "b"], 2)
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['z'\]"):
        tree.restrict(["a", "z"])
    with pytest.raises(ValueError, match="at least one task"):
        tree.restrict([])
    with pytest.raises(ValueError, match="twice"):
        tree.restrict(["a", "a"])
