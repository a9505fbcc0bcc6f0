"""The one-pass representation mode equals the slow per-task reference on every tree shape."""

from __future__ import annotations

import warnings

import pytest
import torch

from automtl.balance import (
    BALANCERS,
    GradientAggregation,
    StepContext,
    _representation,
    create_balancer,
)
from automtl.balance._representation import parent_segments
from automtl.balance._tree import features_by_key, segments
from automtl.build import BranchedNet
from automtl.train import task_losses

from .conftest import make_batch, make_net

TASKS4 = ("a", "b", "c", "d")
#: Three nested shared segments: {a,b,c,d} -> {a,b,c} -> {a,b}; c and d leave on the way.
NESTED = [[TASKS4], [("a", "b", "c"), ("d",)], [("a", "b"), ("c",), ("d",)], [("a", "b"), ("c",), ("d",)]]
#: Two sibling shared segments below the trunk, and a task that leaves its group late.
SIBLINGS = [[TASKS4], [("a", "b"), ("c", "d")], [("a", "b"), ("c", "d")], [("a", "b"), ("c",), ("d",)]]
HPS4 = [[TASKS4]] * 3
TREES = {"hps": HPS4, "nested": NESTED, "siblings": SIBLINGS}
# Deterministic aggregators: some weight rows (from the Gramian), ConFIG does not.
NAMES = ["upgrad", "mgda", "imtl_g", "dualproj", "config"]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*DPP.*")
        yield


def _reference(name: str, partitions, hidden: set[str]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The slow way: per task, one backward pass to every shared output on its path; per
    segment, aggregate and one backward pass from the aggregate into its parameters."""
    net, features, losses = _forward(partitions, hidden)
    by_key = features_by_key(features)
    bal = create_balancer(name, TASKS4, mode="representation")
    weights: dict[str, tuple[int, float]] = {}
    for seg in segments(net.param_groups(), list(losses)):
        if len(seg.tasks) == 1:
            grads = torch.autograd.grad(losses[seg.tasks[0]], seg.params, retain_graph=True)
        else:
            z = by_key[seg.out_key]
            rows = torch.stack([torch.autograd.grad(losses[t], z, retain_graph=True)[0].reshape(-1) for t in seg.tasks])
            torch.manual_seed(0)
            vector, w = bal.aggregate(seg.tasks, rows)
            grads = torch.autograd.grad(z, seg.params, vector.view_as(z), retain_graph=True)
            for t, v in zip(seg.tasks, [1.0] * len(seg.tasks) if w is None else w.tolist()):
                if len(seg.tasks) > weights.get(t, (0, 0.0))[0]:
                    weights[t] = (len(seg.tasks), v)
        for p, g in zip(seg.params, grads):
            p.grad = g if p.grad is None else p.grad + g
    got = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return got, {t: weights.get(t, (0, 1.0))[1] for t in losses}


def _forward(partitions, hidden: set[str]) -> tuple[BranchedNet, dict, dict[str, torch.Tensor]]:
    """A fresh network of ``partitions``, its features and its losses on the test batch (the
    tasks in ``hidden`` unlabelled), gradients cleared."""
    net = make_net(partitions, tasks=TASKS4)
    batch = make_batch(TASKS4, hidden=hidden)
    features = net.features(batch.x)
    losses = task_losses(net, batch, net.heads_forward(features))
    net.zero_grad(set_to_none=True)
    return net, features, losses


def _ours(name: str, partitions, hidden: set[str], mode: str = "representation") -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    net, features, losses = _forward(partitions, hidden)
    torch.manual_seed(0)
    weights = create_balancer(name, TASKS4, mode=mode).backward(
        losses, StepContext(net.param_groups(), extra={"features": features})
    )
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}, weights


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tree", list(TREES))
@pytest.mark.parametrize("hidden", [set(), {"c"}, {"a", "d"}], ids=["all", "c-hidden", "a-d-hidden"])
def test_one_pass_equals_the_per_task_reference(name: str, tree: str, hidden: set[str]) -> None:
    want, want_w = _reference(name, TREES[tree], hidden)
    got, got_w = _ours(name, TREES[tree], hidden)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=key)
    assert got_w == pytest.approx(want_w, rel=1e-4, abs=1e-6)


def test_fallback_without_graph_hooks_gives_the_same_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the per-task rows cannot be captured by hooks, they are taken by one backward pass
    per task; the update is the same."""
    hooked = _ours("upgrad", NESTED, set())
    monkeypatch.setattr(_representation.RowCapture, "create", classmethod(lambda cls, *a: None))
    fallback = _ours("upgrad", NESTED, set())
    for key in hooked[0]:
        torch.testing.assert_close(hooked[0][key], fallback[0][key], rtol=1e-5, atol=1e-7)


def test_one_backward_pass_of_the_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each head is traversed once per step (the rows below the deepest shared outputs come
    from graph hooks, not from extra backward passes)."""
    net = make_net(NESTED, tasks=TASKS4)
    batch = make_batch(TASKS4)
    calls = {t: 0 for t in TASKS4}
    for t in TASKS4:
        net.heads[t].register_full_backward_hook(lambda *a, t=t: calls.__setitem__(t, calls[t] + 1))
    features = net.features(batch.x)
    losses = task_losses(net, batch, net.heads_forward(features))
    create_balancer("upgrad", TASKS4, mode="representation").backward(
        losses, StepContext(net.param_groups(), extra={"features": features})
    )
    assert calls == {t: 1 for t in TASKS4}


def test_parent_segments() -> None:
    net = make_net(NESTED, tasks=TASKS4)
    shared = [s for s in segments(net.param_groups(), list(TASKS4)) if len(s.tasks) > 1]
    parents = parent_segments(shared)
    by_tasks = {s.tasks: (None if p is None else shared[p].tasks) for s, p in zip(shared, parents)}
    assert by_tasks == {("a", "b", "c", "d"): None, ("a", "b", "c"): ("a", "b", "c", "d"), ("a", "b"): ("a", "b", "c")}


@pytest.mark.parametrize("name", [n for n in BALANCERS.list() if issubclass(BALANCERS.get(n), GradientAggregation)])
def test_every_aggregator_runs_on_the_nested_tree(name: str) -> None:
    cls = BALANCERS.get(name)
    if cls.missing_requirements() or "representation" not in (cls.hyperparameters["mode"].choices or ()):
        pytest.skip(f"{name}: no representation mode here")
    got, weights = _ours(name, NESTED, {"d"})
    assert set(weights) == {"a", "b", "c"}
    assert all(bool(torch.isfinite(g).all()) for g in got.values())


# ---------------------------------------------------------------------------- grouped mode
def _grouped_reference(name: str, partitions, hidden: set[str]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The slow way, deepest segment first: a segment's rows are its direct tasks' gradients
    of its output and, per shared segment right below it, that segment's aggregate carried
    back to this output by one vector-Jacobian product; one backward pass from the aggregate
    into the segment's parameters."""
    net, features, losses = _forward(partitions, hidden)
    by_key = features_by_key(features)
    bal = create_balancer(name, TASKS4, mode="grouped")
    segs = segments(net.param_groups(), list(losses))
    shared = [s for s in segs if len(s.tasks) > 1]
    parents = parent_segments(shared)
    aggregate_of: dict[int, torch.Tensor] = {}
    effective: dict[int, dict[str, float]] = {}
    grads: list[tuple[list[torch.nn.Parameter], tuple[torch.Tensor, ...]]] = []
    for seg in segs:
        if len(seg.tasks) == 1:
            grads.append((seg.params, torch.autograd.grad(losses[seg.tasks[0]], seg.params, retain_graph=True)))
    # Deepest first: a segment's task set is a strict subset of its parent's.
    order = sorted(range(len(shared)), key=lambda k: len(shared[k].tasks))
    for i in order:
        seg, z = shared[i], by_key[shared[i].out_key]
        children = [j for j, p in enumerate(parents) if p == i]
        below = {t: j for j in children for t in shared[j].tasks}
        names, rows = [], []
        for t in seg.tasks:
            if t not in below:
                names.append(t)
                rows.append(torch.autograd.grad(losses[t], z, retain_graph=True)[0].reshape(-1))
            elif _representation.group_label(shared[below[t]].tasks) not in names:
                j = below[t]
                names.append(_representation.group_label(shared[j].tasks))
                z_j = by_key[shared[j].out_key]
                rows.append(torch.autograd.grad(z_j, z, aggregate_of[j].view_as(z_j), retain_graph=True)[0].reshape(-1))
        torch.manual_seed(0)
        vector, w = bal.aggregate(tuple(names), torch.stack(rows))
        aggregate_of[i] = vector
        of_row = dict(zip(names, w.tolist()))
        effective[i] = {
            t: of_row[t] if t not in below else of_row[_representation.group_label(shared[below[t]].tasks)] * effective[below[t]][t]
            for t in seg.tasks
        }
        grads.append((seg.params, torch.autograd.grad(z, seg.params, vector.view_as(z), retain_graph=True)))
    for params, got in grads:
        for p, g in zip(params, got):
            p.grad = g if p.grad is None else p.grad + g
    weights = {t: 1.0 for t in losses}
    for i in order:  # the largest segment containing a task has the last word
        weights.update(effective[i])
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}, weights


# Weighting aggregators, so the effective weights are defined.
GROUPED_NAMES = ["upgrad", "mgda", "imtl_g", "dualproj"]


@pytest.mark.parametrize("name", GROUPED_NAMES)
@pytest.mark.parametrize("tree", ["nested", "siblings"])
@pytest.mark.parametrize("hidden", [set(), {"c"}, {"a", "d"}], ids=["all", "c-hidden", "a-d-hidden"])
def test_grouped_mode_equals_its_hierarchical_reference(name: str, tree: str, hidden: set[str]) -> None:
    want, want_w = _grouped_reference(name, TREES[tree], hidden)
    got, got_w = _ours(name, TREES[tree], hidden, "grouped")
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=key)
    assert got_w == pytest.approx(want_w, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", ["upgrad", "mgda", "config"])
@pytest.mark.parametrize(
    "partitions",
    [HPS4, [[("a", "b"), ("c", "d")]] * 3, [[TASKS4], [("a",), ("b",), ("c",), ("d",)], [("a",), ("b",), ("c",), ("d",)]]],
    ids=["hps", "groups-at-root", "trunk-then-single-tasks"],
)
def test_grouped_mode_is_the_exact_mode_without_nested_groups(name: str, partitions) -> None:
    exact = _ours(name, partitions, set(), "representation")
    grouped = _ours(name, partitions, set(), "grouped")
    for key in exact[0]:
        torch.testing.assert_close(grouped[0][key], exact[0][key], rtol=1e-5, atol=1e-7)
    assert grouped[1] == pytest.approx(exact[1], rel=1e-5)


def test_grouped_mode_differs_from_the_exact_mode_on_a_nested_tree() -> None:
    """The approximation is real: a sub-group is one objective at its parent."""
    exact = _ours("mgda", NESTED, set(), "representation")
    grouped = _ours("mgda", NESTED, set(), "grouped")
    trunk = [k for k in exact[0] if k.startswith("blocks.b0_")]
    assert trunk
    assert any(not torch.allclose(exact[0][k], grouped[0][k], rtol=1e-3, atol=1e-6) for k in trunk)


@pytest.mark.parametrize("mode,extra", [("grouped", 0), ("representation", 3)])
def test_grouped_mode_needs_no_vector_jacobian_product_per_task(mode: str, extra: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the nested tree the exact mode carries each of a, b, c back through the blocks in
    between ({a, b} -> {a, b, c}: 2 products; {a, b, c} -> {a, b, c, d}: 3), the grouped mode
    none: its sub-group rows are captured during the one backward pass."""
    calls = [0]
    real = torch.autograd.grad

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    _ours("upgrad", NESTED, set(), mode)
    assert calls[0] == (0 if mode == "grouped" else 5)


def test_grouped_fallback_without_graph_hooks_gives_the_same_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without graph hooks, a sub-group's row is one vector-Jacobian product of its aggregate;
    the update is the same."""
    hooked = _ours("upgrad", NESTED, {"d"}, "grouped")
    monkeypatch.setattr(_representation.RowCapture, "create", classmethod(lambda cls, *a: None))
    fallback = _ours("upgrad", NESTED, {"d"}, "grouped")
    for key in hooked[0]:
        torch.testing.assert_close(hooked[0][key], fallback[0][key], rtol=1e-5, atol=1e-7)
    assert hooked[1] == pytest.approx(fallback[1], rel=1e-5)
