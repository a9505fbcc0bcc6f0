"""The tree rule: a block shared by some tasks aggregates exactly their gradients."""

from __future__ import annotations

import warnings

import pytest
import torch
from torchjd.aggregation import UPGrad
from torchjd.autojac import jac_to_grad, mtl_backward

from automtl.balance import BALANCERS, GradientAggregation, StepContext, create_balancer
from automtl.balance._tree import block_of, segments
from automtl.train import task_losses

from .conftest import (
    BRANCHED,
    HPS,
    TASKS,
    group_of,
    make_batch,
    make_net,
    min_norm_point,
    step,
    variant_id,
    variants,
)

AGGREGATION = [v for v in variants() if issubclass(BALANCERS.get(v[0]), GradientAggregation)]


def _create(name, kwargs):
    cls = BALANCERS.get(name)
    if cls.missing_requirements():
        pytest.skip(f"{name} needs {cls.missing_requirements()}")
    return create_balancer(name, TASKS, **kwargs)


@pytest.fixture(autouse=True)
def _quiet_solvers():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*DPP.*")
        warnings.filterwarnings("ignore", message="Solution may be inaccurate.*")
        yield


@pytest.mark.parametrize("variant", AGGREGATION, ids=variant_id)
def test_block_shared_by_a_b_never_receives_c_gradient(variant) -> None:
    """Scaling task c's labels (hence its loss and gradient) leaves every parameter that c does
    not use untouched, and the {a, b} blocks see only a and b."""
    name, kwargs = variant
    results = []
    for scale in (1.0, 50.0):
        balancer = _create(name, kwargs)
        net = make_net(BRANCHED)
        batch = make_batch()
        batch.y["c"] = batch.y["c"] * scale + scale
        torch.manual_seed(0)
        step(net, balancer, batch)
        groups = group_of(net)
        results.append({n: p.grad.clone() for n, p in net.named_parameters() if "c" not in groups[n].split(":")[1].split("+")})
    assert results[0].keys() == {n for n, g in group_of(make_net(BRANCHED)).items() if g in ("b1:a+b", "b2:a+b", "head:a", "head:b")}
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], msg=f"{key} depends on task c")


@pytest.mark.parametrize("variant", AGGREGATION, ids=variant_id)
def test_heads_and_single_task_blocks_get_the_plain_gradient(variant) -> None:
    name, kwargs = variant
    net = make_net(BRANCHED)
    batch = make_batch()
    features = net.features(batch.x)
    losses = task_losses(net, batch, net.heads_forward(features))
    groups = {g.key: g for g in net.param_groups()}
    want = {}
    for key, task in [("head:a", "a"), ("head:b", "b"), ("head:c", "c"), ("b1:c", "c"), ("b2:c", "c")]:
        params = groups[key].params
        for p, g in zip(params, torch.autograd.grad(losses[task], params, retain_graph=True)):
            want[id(p)] = g
    torch.manual_seed(0)
    _create(name, kwargs).backward(losses, StepContext(net.param_groups(), extra={"features": features}))
    for key, expected in want.items():
        p = next(p for p in net.parameters() if id(p) == key)
        torch.testing.assert_close(p.grad, expected)


def test_full_mode_matches_torchjd_mtl_backward_on_hard_sharing() -> None:
    """Under hard parameter sharing, 'full' mode is torchjd's mtl_backward."""
    net = make_net(HPS)
    batch = make_batch()
    torch.manual_seed(0)
    step(net, create_balancer("upgrad", TASKS, mode="full"), batch)
    ours = {n: p.grad.clone() for n, p in net.named_parameters()}

    ref = make_net(HPS)
    features = ref.features(batch.x)
    losses = task_losses(ref, batch, ref.heads_forward(features))
    shared = [p for g in ref.param_groups() if not g.key.startswith("head:") for p in g.params]
    heads = [list(ref.heads[t].parameters()) for t in TASKS]
    leaf = features[list(features)[-1]]
    mtl_backward([losses[t] for t in TASKS], features=leaf, tasks_params=heads, shared_params=shared)
    jac_to_grad(shared, UPGrad())
    for n, p in ref.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_representation_mode_is_mgda_ub() -> None:
    """MGDA in 'representation' mode: α of the minimum-norm point of the per-task gradients of
    the shared representation (Sener & Koltun 2018, eq. 5; found here by enumerating the
    faces of the simplex on the rows, not from the Gramian), then ∑ α_t ∇θ L_t on the shared
    blocks."""
    net = make_net(HPS)
    batch = make_batch()
    step(net, create_balancer("mgda", TASKS, mode="representation"), batch)
    ours = {n: p.grad.clone() for n, p in net.named_parameters()}

    ref = make_net(HPS)
    features = ref.features(batch.x)
    losses = task_losses(ref, batch, ref.heads_forward(features))
    z = features[list(features)[-1]]
    rows = torch.stack([torch.autograd.grad(losses[t], z, retain_graph=True)[0].reshape(-1) for t in TASKS])
    alpha = torch.from_numpy(min_norm_point(rows.double().numpy())[1]).float()
    assert torch.isclose(alpha.sum(), torch.tensor(1.0)) and bool((alpha >= 0).all())
    shared = [p for g in ref.param_groups() if not g.key.startswith("head:") for p in g.params]
    total = sum(a * losses[t] for a, t in zip(alpha, TASKS))
    want = torch.autograd.grad(total, shared, retain_graph=True)
    names = {id(p): n for n, p in ref.named_parameters()}
    for p, g in zip(shared, want):
        torch.testing.assert_close(ours[names[id(p)]], g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["full", "representation", "grouped"])
def test_aggregate_is_a_combination_of_exactly_the_segment_tasks(mode: str) -> None:
    """The trunk of the branched tree receives α_a ∇L_a + α_b ∇L_b + α_c ∇L_c and the {a, b}
    blocks β_a ∇L_a + β_b ∇L_b, with the weights that the balancer reports for the trunk (in
    'grouped' mode, α_a = γ_ab β_a: the {a, b} row's weight times a's weight within it)."""
    net = make_net(BRANCHED)
    batch = make_batch()
    weights, _ = step(net, create_balancer("mgda", TASKS, mode=mode), batch)
    ref = make_net(BRANCHED)
    ref_losses = task_losses(ref, batch)
    trunk = [p for g in ref.param_groups() if g.key == "b0:a+b+c" for p in g.params]
    want = torch.autograd.grad(sum(weights[t] * ref_losses[t] for t in TASKS), trunk)
    got = [p.grad for g in net.param_groups() if g.key == "b0:a+b+c" for p in g.params]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_segments_group_by_active_task_set() -> None:
    net = make_net(BRANCHED)
    segs = {s.tasks: s for s in segments(net.param_groups(), ["a", "b", "c"])}
    assert set(segs) == {("a", "b", "c"), ("a", "b"), ("c",), ("a",), ("b",)}
    assert segs[("a", "b")].keys == ["b1:a+b", "b2:a+b"] and segs[("a", "b")].out_key == "b2:a+b"
    # c unlabelled: the trunk's active set is {a, b}, so it joins the {a, b} blocks.
    segs = {s.tasks: s for s in segments(net.param_groups(), ["b", "a"])}
    assert set(segs) == {("b", "a"), ("a",), ("b",)}
    assert segs[("b", "a")].keys == ["b0:a+b+c", "b1:a+b", "b2:a+b"] and segs[("b", "a")].out_key == "b2:a+b"
    assert block_of("b12:x+y") == 12 and block_of("head:x") is None


def test_representation_mode_needs_features() -> None:
    net = make_net(HPS)
    losses = task_losses(net, make_batch())
    with pytest.raises(ValueError, match="features"):
        create_balancer("upgrad", TASKS, mode="representation").backward(losses, StepContext(net.param_groups()))


def test_unknown_mode_and_missing_solver_message(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="mode"):
        create_balancer("upgrad", TASKS, mode="fast")
    with pytest.raises(ValueError, match="mode"):
        create_balancer("excess_mtl", TASKS, mode="representation")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "quadprog" else real(name, *a))
    with pytest.raises(ImportError, match="quadprog"):
        create_balancer("upgrad", TASKS)
    create_balancer("nash_mtl", TASKS)  # its Gramian solver needs no optional module
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a))
    with pytest.raises(ImportError, match="scipy"):
        create_balancer("cagrad", TASKS)


@pytest.mark.parametrize("partitions", [HPS, BRANCHED, [[("a", "b"), ("c",)]] * 3], ids=["hps", "branched", "split-at-root"])
def test_rows_in_one_pass_equal_rows_per_task(partitions, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook-captured per-task gradients (one backward pass) give the same update as one
    backward pass per task."""
    from automtl.balance import _representation

    def run():
        net = make_net(partitions)
        weights, _ = step(net, create_balancer("upgrad", TASKS, mode="representation"), make_batch())
        return weights, {n: p.grad.clone() for n, p in net.named_parameters()}

    one_pass = run()
    monkeypatch.setattr(_representation.RowCapture, "create", classmethod(lambda cls, *a: None))
    per_task = run()
    assert one_pass[0] == pytest.approx(per_task[0], rel=1e-5)
    for key in one_pass[1]:
        torch.testing.assert_close(one_pass[1][key], per_task[1][key])
