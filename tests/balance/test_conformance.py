"""The conformance suite: every registered balancer (in each of its modes) runs through it."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from automtl.balance import BALANCERS, GradientAggregation, create_balancer

from .conftest import (
    BRANCHED,
    HPS,
    TASKS,
    group_of,
    make_batch,
    make_net,
    step,
    variant_id,
    variants,
)

VARIANTS = variants()


def _create(name: str, kwargs: dict[str, object], tasks=TASKS):
    cls = BALANCERS.get(name)
    if issubclass(cls, GradientAggregation) and cls.missing_requirements():
        pytest.skip(f"{name} needs {cls.missing_requirements()} ({cls.install_hint})")
    return create_balancer(name, tasks, **kwargs)


@pytest.fixture(autouse=True)
def _quiet_solvers():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*DPP.*")
        warnings.filterwarnings("ignore", message="Solution may be inaccurate.*")
        yield


def test_every_balancer_is_tested() -> None:
    assert {v[0] for v in VARIANTS} == set(BALANCERS.list())
    assert len(BALANCERS.list()) >= 20


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("partitions", [HPS, BRANCHED], ids=["hps", "branched"])
def test_finite_weights_and_gradients(variant, partitions, device: str) -> None:
    name, kwargs = variant
    balancer = _create(name, kwargs).to(device)
    net = make_net(partitions, device=device)
    for s in range(3):
        torch.manual_seed(s)
        weights, losses = step(net, balancer, make_batch(seed=s, device=device), s)
        assert set(weights) == set(losses) == set(TASKS)
        assert all(isinstance(w, float) and math.isfinite(w) for w in weights.values()), weights
        for name_, p in net.named_parameters():
            assert p.grad is not None, f"{name_} got no gradient"
            assert bool(torch.isfinite(p.grad).all()), f"{name_} has a non-finite gradient"
        balancer.on_epoch_end(s, {t: float(v.detach()) for t, v in losses.items()})


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("partitions", [HPS, BRANCHED], ids=["hps", "branched"])
def test_masked_task_takes_no_part(variant, partitions, device: str) -> None:
    """A task with no label in the batch: no weight, no gradient to what only it uses, and its
    (hidden) labels change nothing."""
    name, kwargs = variant
    results = []
    for label_seed in (1, 2):
        balancer = _create(name, kwargs).to(device)
        net = make_net(partitions, device=device)
        batch = make_batch(seed=1, hidden={"c"}, device=device)
        other = make_batch(seed=label_seed, device=device)
        batch.y["c"] = other.y["c"]
        torch.manual_seed(0)
        weights, losses = step(net, balancer, batch)
        assert set(weights) == set(losses) == {"a", "b"}
        groups = group_of(net)
        for pname, p in net.named_parameters():
            only_c = groups[pname] in ("head:c", "b1:c", "b2:c")
            assert (p.grad is None) == only_c, f"{pname}: grad is {'None' if p.grad is None else 'set'}"
        results.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], msg=f"hidden labels of c changed {key}")


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_one_optimizer_step_changes_exactly_the_used_parameters(variant, device: str) -> None:
    name, kwargs = variant
    balancer = _create(name, kwargs).to(device)
    net = make_net(BRANCHED, device=device)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD(list(net.parameters()) + list(balancer.parameters()), lr=0.1)
    torch.manual_seed(0)
    step(net, balancer, make_batch(hidden={"b"}, device=device))
    opt.step()
    groups = group_of(net)
    changed_groups = set()
    for pname, p in net.named_parameters():
        changed = not torch.equal(before[pname], p.detach())
        if groups[pname] == "head:b":
            assert not changed, f"{pname} (used only by the unlabelled task b) changed"
        elif changed:
            changed_groups.add(groups[pname])
    assert changed_groups == {"b0:a+b+c", "b1:a+b", "b2:a+b", "b1:c", "b2:c", "head:a", "head:c"}


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_single_labelled_task_gets_its_plain_gradient(variant) -> None:
    """With one labelled task there is nothing to balance: every used parameter receives a
    positive multiple of that task's own gradient."""
    name, kwargs = variant
    balancer = _create(name, kwargs)
    net = make_net(HPS)
    torch.manual_seed(0)
    step(net, balancer, make_batch(hidden={"b", "c"}))
    got = torch.cat([p.grad.reshape(-1) for p in net.parameters() if p.grad is not None])
    net2 = make_net(HPS)
    loss = step(net2, create_balancer("equal", TASKS), make_batch(hidden={"b", "c"}))[1]["a"]
    want = torch.cat([p.grad.reshape(-1) for p in net2.parameters() if p.grad is not None])
    assert loss.item() > 0
    cos = torch.nn.functional.cosine_similarity(got, want, dim=0)
    assert cos > 1 - 1e-5, f"direction differs from the task's own gradient (cos {cos:.6f})"


@pytest.mark.parametrize("name", [n for n in BALANCERS.list() if BALANCERS.get(n).hyperparameters])
def test_default_hyperparameters_are_in_their_search_range(name: str) -> None:
    for hp_name, hp in BALANCERS.get(name).hyperparameters.items():
        if hp.choices is not None:
            assert hp.default in hp.choices, (name, hp_name)
        elif hp.low is not None:
            assert hp.low <= hp.default <= hp.high, (name, hp_name)
        assert hp.doc, f"{name}.{hp_name} has no doc"


@pytest.mark.parametrize("name", BALANCERS.list())
def test_documented(name: str) -> None:
    cls = BALANCERS.get(name)
    assert cls.paper and cls.__doc__ and cls.family in ("loss_weighting", "gradient_aggregation")
