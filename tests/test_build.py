"""The builder: one module per tree node, shared prefixes computed once, paths kept apart."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from automtl.backbones import Backbone, create_backbone
from automtl.build import BranchedNet, build_model, resolve_device
from automtl.data import MultiTaskData
from automtl.tree import BranchTree, Node

TASKS = ["a", "b", "c", "d"]
# shared prefix: all four share block 0, {a, b} and {c, d} share block 1, then a, b, c, d alone
BRANCHED = BranchTree(TASKS, [[TASKS], [["a", "b"], ["c", "d"]], [["a"], ["b"], ["c"], ["d"]]])
TREES = {
    "branched": BRANCHED,
    "hard_sharing": BranchTree.hard_sharing(TASKS, 3),
    "single_task": BranchTree.single_task(TASKS, 3),
    "late_split": BranchTree(TASKS, [[TASKS], [TASKS], [["a", "c"], ["b"], ["d"]]]),
}


@pytest.fixture(params=sorted(TREES))
def tree(request: pytest.FixtureRequest) -> BranchTree:
    return TREES[request.param]


def _net(tree: BranchTree, data: MultiTaskData, backbone: Backbone) -> BranchedNet:
    torch.manual_seed(0)
    return build_model(tree, backbone, data.tasks, device="cpu")


def test_one_module_per_node_and_one_head_per_task(tree: BranchTree, data: MultiTaskData, backbone: Backbone) -> None:
    net = _net(tree, data, backbone)
    assert len(net.blocks) == len(tree.nodes())
    assert sorted(net.heads) == sorted(TASKS)
    modules = [net.node_module(n) for n in tree.nodes()]
    assert len({id(m) for m in modules}) == len(modules)
    assert net.num_parameters() == tree.parameter_count(
        backbone.block_parameter_counts(), {t.name: sum(p.numel() for p in net.heads[t.name].parameters()) for t in data.tasks}
    )


def test_each_block_runs_once_per_batch(tree: BranchTree, data: MultiTaskData, backbone: Backbone) -> None:
    net = _net(tree, data, backbone)
    calls: Counter[str] = Counter()
    for node in tree.nodes():
        net.node_module(node).register_forward_hook(lambda m, i, o, key=node.key: calls.update([key]))
    head_calls: Counter[str] = Counter()
    for name, head in net.heads.items():
        head.register_forward_hook(lambda m, i, o, name=name: head_calls.update([name]))
    net(data.train.x[:10])
    assert calls == {n.key: 1 for n in tree.nodes()}
    assert head_calls == {t: 1 for t in TASKS}
    # the shared trunk's output object is what each child receives
    features = net.features(data.train.x[:10])
    for node in tree.nodes():
        parent = tree.parent(node)
        if parent is not None:
            assert torch.equal(net.node_module(node)(features[parent]), features[node])


def test_output_shapes_per_task_type(tree: BranchTree, data: MultiTaskData, backbone: Backbone) -> None:
    net = _net(tree, data, backbone)
    for n in (1, 7):
        out = net(data.train.x[:n])
        assert set(out) == set(TASKS)
        assert out["a"].shape == (n,)  # binary logits
        assert out["b"].shape == (n,)  # standardized regression
        assert out["c"].shape == (n, 3)  # multiclass logits
        assert out["d"].shape == (n, 2)  # multilabel logits


def test_each_output_depends_only_on_its_path(tree: BranchTree, data: MultiTaskData, backbone: Backbone) -> None:
    net = _net(tree, data, backbone)
    x = data.train.x[:16]
    for task in TASKS:
        net.zero_grad(set_to_none=True)
        net(x)[task].pow(2).sum().backward()
        for node in tree.nodes():
            grads = [p.grad for p in net.node_module(node).parameters()]
            if task in node.tasks:
                assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{task}: no grad in {node.key}"
            else:
                assert all(g is None or not g.any() for g in grads), f"{task}: grad leaks into {node.key}"
        for name, head in net.heads.items():
            reached = any(p.grad is not None and p.grad.any() for p in head.parameters())
            assert reached == (name == task)


def test_perturbing_off_path_nodes_leaves_an_output_unchanged(data: MultiTaskData, backbone: Backbone) -> None:
    net = _net(BRANCHED, data, backbone).eval()
    x = data.train.x[:8]
    before = net(x)
    with torch.no_grad():
        for node in BRANCHED.nodes():
            if "a" not in node.tasks:
                for p in net.node_module(node).parameters():
                    p.add_(torch.randn_like(p))
    after = net(x)
    assert torch.equal(before["a"], after["a"])
    for t in ("c", "d"):
        assert not torch.equal(before[t], after[t])


def test_param_groups_partition_the_parameters(tree: BranchTree, data: MultiTaskData, backbone: Backbone) -> None:
    net = _net(tree, data, backbone)
    groups = net.param_groups()
    ids = [id(p) for g in groups for p in g.params]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in net.parameters()}
    node_groups = {g.key: g.tasks for g in groups if not g.key.startswith("head:")}
    assert node_groups == {n.key: n.tasks for n in tree.nodes()}
    assert {g.key: g.tasks for g in groups if g.key.startswith("head:")} == {f"head:{t}": (t,) for t in TASKS}


def test_predict_gives_probabilities_and_original_units(data: MultiTaskData, backbone: Backbone) -> None:
    net = _net(BRANCHED, data, backbone).eval()
    x = data.test.x
    raw, pred = net(x), net.predict(x)
    assert ((pred["a"] >= 0) & (pred["a"] <= 1)).all() and ((pred["d"] >= 0) & (pred["d"] <= 1)).all()
    assert torch.allclose(pred["c"].sum(dim=1), torch.ones(len(x)))
    torch.testing.assert_close(pred["a"], torch.sigmoid(raw["a"]))
    spec = data.task("b")
    assert spec.target_std != 1.0 and spec.target_mean != 0.0
    torch.testing.assert_close(pred["b"], raw["b"] * spec.target_std + spec.target_mean)
    assert not pred["b"].requires_grad


def test_mismatches_are_refused(data: MultiTaskData, backbone: Backbone) -> None:
    with pytest.raises(ValueError, match="tree has 2 blocks, backbone has 3"):
        BranchedNet(BranchTree.hard_sharing(TASKS, 2), backbone, data.tasks)
    with pytest.raises(ValueError, match="differ from data tasks"):
        BranchedNet(BranchTree.hard_sharing(["a", "b", "d", "c"], 3), backbone, data.tasks)


def test_builds_on_a_cnn() -> None:
    from automtl.tasks import TaskSpec

    cnn = create_backbone("small_cnn", (1, 8, 8), channels=[2, 3], hidden=4)
    tasks = [TaskSpec("x", "binary"), TaskSpec("y", "multiclass", num_classes=4)]
    tree = BranchTree(["x", "y"], [[["x", "y"]], [["x", "y"]], [["x"], ["y"]]])
    net = build_model(tree, cnn, tasks, device="cpu")
    out = net(torch.randn(5, 1, 8, 8))
    assert out["x"].shape == (5,) and out["y"].shape == (5, 4)
    assert isinstance(net.node_module(Node(0, ("x", "y"))), nn.Module)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
