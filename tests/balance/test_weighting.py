"""Each loss-weighting method against its paper's update rule, on hand-checked cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from automtl.balance import (
    DWA,
    FAMO,
    GLS,
    IMTLL,
    RLW,
    FixedWeighting,
    GradNorm,
    ScaleInvariant,
    StepContext,
    UncertaintyWeighting,
    create_balancer,
)

from .conftest import BRANCHED, HPS, TASKS, make_batch, make_net, step

positive = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


def _losses(values: dict[str, float]) -> dict[str, torch.Tensor]:
    return {t: torch.tensor(v, requires_grad=True) for t, v in values.items()}


# ----------------------------------------------------------------------------- uncertainty
def test_uncertainty_optimum_sigma2_equals_the_task_loss() -> None:
    """Kendall et al. 2018, eq. 7: for fixed L_t, ½e^{-s}L + ½s is minimal at σ² = e^s = L."""
    bal = UncertaintyWeighting(["a", "b"])
    losses = {"a": torch.tensor(0.3), "b": torch.tensor(4.0)}
    opt = torch.optim.Adam(bal.parameters(), lr=0.05)
    for _ in range(1500):
        opt.zero_grad()
        bal.combine(losses)[0].backward()
        opt.step()
    torch.testing.assert_close(torch.exp(bal.log_vars.detached()), torch.tensor([0.3, 4.0]), rtol=1e-3, atol=1e-4)
    weights = bal.combine(losses)[1]
    assert weights["a"] == pytest.approx(0.5 / 0.3, rel=1e-3)


def test_imtl_l_optimum_makes_every_scaled_loss_one() -> None:
    """Liu et al. 2021 (IMTL-L): e^s L − s is minimal at e^s = 1/L."""
    bal = IMTLL(["a", "b"])
    losses = {"a": torch.tensor(0.25), "b": torch.tensor(8.0)}
    with torch.no_grad():
        for p, v in zip(bal.log_scales, -torch.log(torch.tensor([0.25, 8.0]))):
            p.copy_(v)
    total, weights = bal.combine(losses)
    grad = torch.stack(torch.autograd.grad(total, list(bal.log_scales)))
    torch.testing.assert_close(grad, torch.zeros(2), atol=1e-6, rtol=0)
    assert weights == pytest.approx({"a": 4.0, "b": 0.125})


def _scalars(bal: UncertaintyWeighting | IMTLL) -> list[torch.Tensor]:
    return list(bal.log_vars if isinstance(bal, UncertaintyWeighting) else bal.log_scales)


@pytest.mark.parametrize("cls", [UncertaintyWeighting, IMTLL])
@pytest.mark.parametrize("labelled_first", [False, True], ids=["never-labelled", "labelled-once"])
def test_unlabelled_task_scalar_does_not_drift_under_adam(cls, labelled_first: bool) -> None:
    """20 optimizer steps in which task ``c`` is unlabelled (absent from ``losses``), as the
    trainer runs them (``zero_grad(set_to_none=True)``, ``backward``, ``step``), with AdamW
    (decoupled weight decay) or Adam: ``c``'s scalar gets no gradient (``None``) and stays
    bit-identical, while those of ``a`` and ``b`` move. With one ``[k]`` tensor, ``c``'s entry
    would get zero gradients, and AdamW's weight decay would move it; ``labelled-once``: ``c``
    is labelled in one step first, so Adam also holds momentum for it, which would keep moving
    it."""
    for make_opt in (
        lambda params: torch.optim.AdamW(params, lr=0.05, weight_decay=0.1),
        lambda params: torch.optim.Adam(params, lr=0.05),
    ):
        bal = cls(["a", "b", "c"])
        with torch.no_grad():  # away from 0, where weight decay moves a parameter
            for p, v in zip(_scalars(bal), (0.2, -0.1, 0.3)):
                p.fill_(v)
        opt = make_opt(bal.parameters())
        if labelled_first:
            opt.zero_grad(set_to_none=True)
            bal.combine(_losses({"a": 0.5, "b": 3.0, "c": 2.0}))[0].backward()
            opt.step()
        before = [p.detach().clone() for p in _scalars(bal)]
        for i in range(20):
            opt.zero_grad(set_to_none=True)
            total, weights = bal.combine(_losses({"a": 0.5 + 0.01 * i, "b": 3.0}))
            total.backward()
            assert set(weights) == {"a", "b"}
            assert _scalars(bal)[2].grad is None
            opt.step()
        after = _scalars(bal)
        assert torch.equal(after[2].detach(), before[2]), "the unlabelled task's scalar moved"
        assert not torch.equal(after[0].detach(), before[0]) and not torch.equal(after[1].detach(), before[1])


@pytest.mark.parametrize("cls", [UncertaintyWeighting, IMTLL])
def test_task_scalars_state_dict_round_trips_and_reads_the_stacked_layout(cls) -> None:
    """One state-dict entry per task; it loads into a fresh balancer, and so does the previous
    layout (one ``[k]`` tensor), with each task's value in its place."""
    name = "log_vars" if cls is UncertaintyWeighting else "log_scales"
    bal = cls(["a", "b", "c"])
    with torch.no_grad():
        for p, v in zip(_scalars(bal), (0.1, -0.2, 0.3)):
            p.fill_(v)
    state = bal.state_dict()
    assert sorted(state) == [f"{name}.0", f"{name}.1", f"{name}.2"]
    fresh = cls(["a", "b", "c"])
    fresh.load_state_dict(state)
    assert [float(p.detach()) for p in _scalars(fresh)] == pytest.approx([0.1, -0.2, 0.3])
    legacy = cls(["a", "b", "c"])
    legacy.load_state_dict({name: torch.tensor([0.4, 0.5, -0.6])})
    assert [float(p.detach()) for p in _scalars(legacy)] == pytest.approx([0.4, 0.5, -0.6])
    weights = legacy.combine(_losses({"b": 1.0}))[1]
    want = 0.5 * math.exp(-0.5) if cls is UncertaintyWeighting else math.exp(0.5)
    assert weights == pytest.approx({"b": want})


# ----------------------------------------------------------------------------- DWA
def test_dwa_hand_checked() -> None:
    bal = DWA(["a", "b"], temperature=2.0)
    bal.on_epoch_end(0, {"a": 1.0, "b": 1.0})
    assert bal.current == {"a": 1.0, "b": 1.0}
    bal.on_epoch_end(1, {"a": 0.5, "b": 1.0})
    ea, eb = math.exp(0.5 / 2), math.exp(1.0 / 2)
    assert bal.current["a"] == pytest.approx(2 * ea / (ea + eb))
    assert bal.current["b"] == pytest.approx(2 * eb / (ea + eb))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(positive, positive, positive), min_size=2, max_size=4), st.floats(0.5, 5.0))
def test_dwa_weights_sum_to_the_number_of_tasks(history, temperature) -> None:
    bal = DWA(list(TASKS), temperature=temperature)
    for e, values in enumerate(history):
        bal.on_epoch_end(e, dict(zip(TASKS, values)))
    assert sum(bal.current.values()) == pytest.approx(len(TASKS))
    assert all(math.isfinite(w) and w >= 0 for w in bal.current.values())


# ----------------------------------------------------------------------------- GradNorm
def test_gradnorm_hand_checked_gradient() -> None:
    """Chen et al. 2018, eq. 2: ∂L_grad/∂w_t = sign(G_t − Ḡ r_t^α) ‖∇_W L_t‖."""
    bal = GradNorm(["a", "b"], alpha=1.0)
    target, grad = bal.weight_gradient([1.0, 1.0], [1.0, 3.0], [1.0, 1.0])
    assert target == pytest.approx([2.0, 2.0]) and grad == pytest.approx([-1.0, 3.0])
    # a task that trains slower (higher loss ratio) gets a higher target
    target, _ = bal.weight_gradient([1.0, 1.0], [2.0, 2.0], [1.5, 0.5])
    assert target == pytest.approx([3.0, 1.0])


@pytest.mark.parametrize("mode", ["full", "representation"])
def test_gradnorm_moves_gradient_norms_towards_their_targets(mode: str) -> None:
    net = make_net(HPS)
    bal = GradNorm(list(TASKS), alpha=1.5, lr=0.02, mode=mode)
    batch = make_batch()
    features = net.features(batch.x)
    from automtl.train import task_losses

    losses = task_losses(net, batch, net.heads_forward(features))
    ctx = StepContext(net.param_groups(), extra={"features": features})
    norms = bal.gradient_norms(losses, ctx)
    ratios = [1.0, 1.0, 1.0]  # first step: every loss ratio is 1
    w0 = bal.task_weights.clone()
    gap0 = (torch.tensor(bal.weight_gradient(w0.tolist(), norms.tolist(), ratios)[0]) - w0 * norms).abs()
    weights, _ = step(net, bal, batch)
    assert weights == pytest.approx(dict(zip(TASKS, w0.tolist())))
    w1 = bal.task_weights.clone()
    assert float(w1.sum()) == pytest.approx(3.0) and bool((w1 > 0).all())
    gap1 = (torch.tensor(bal.weight_gradient(w1.tolist(), norms.tolist(), ratios)[0]) - w1 * norms).abs()
    assert float(gap1.sum()) < float(gap0.sum())
    big, small = int(norms.argmax()), int(norms.argmin())
    assert w1[big] < w0[big] and w1[small] > w0[small]


@pytest.mark.parametrize("partitions", [HPS, BRANCHED], ids=["hps", "branched"])
@pytest.mark.parametrize("hidden", [(), ("b",)], ids=["all-labelled", "b-masked"])
def test_gradnorm_full_batched_norms_equal_one_pass_per_task(partitions: list, hidden: tuple) -> None:
    """With the trainer's features, "full" takes its norms from the captured head-input rows by
    one batched vector-Jacobian product per leaf block; without them, from one backward pass per
    task. Same norms, so the same weights, step after step, and the same parameter gradients."""
    from automtl.train import task_losses

    fast, slow = GradNorm(list(TASKS), mode="full"), GradNorm(list(TASKS), mode="full")
    net_fast, net_slow = make_net(partitions), make_net(partitions)
    fast.gradient_norms = lambda *args: pytest.fail("the batched path fell back on one pass per task")  # type: ignore[method-assign]
    for i in range(4):
        batch = make_batch(seed=10 + i, hidden=hidden if i % 2 else ())
        step(net_fast, fast, batch, i)  # ctx with the features: the batched path
        losses = task_losses(net_slow, batch, net_slow(batch.x))
        net_slow.zero_grad(set_to_none=True)
        slow.backward(losses, StepContext(net_slow.param_groups(), 0, i))  # no features: per task
        torch.testing.assert_close(fast.task_weights, slow.task_weights, rtol=1e-5, atol=1e-6)
        for p, q in zip(net_fast.parameters(), net_slow.parameters()):
            assert (p.grad is None) == (q.grad is None)  # a masked task's head gets none
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad)
                with torch.no_grad():  # move both networks alike, so later steps see new parameters
                    p -= 0.1 * p.grad
                    q -= 0.1 * q.grad
    assert not torch.allclose(fast.task_weights, torch.ones(3))  # the weights did move


# ----------------------------------------------------------------------------- FAMO
def test_famo_weights_are_c_z_over_l_and_sum_to_one() -> None:
    bal = FAMO(["a", "b", "c"])
    losses = _losses({"a": 0.5, "b": 2.0, "c": 1.0})
    weights = bal.backward(losses, StepContext([]))
    inv = {t: 1 / float(v.detach()) for t, v in losses.items()}
    assert weights == pytest.approx({t: inv[t] / sum(inv.values()) for t in inv})
    for t, loss in losses.items():
        assert float(loss.grad) == pytest.approx(weights[t])


def test_famo_logits_follow_the_log_loss_decrease() -> None:
    """Liu et al. 2023, Alg. 1: δ = log L_prev − log L; the task whose loss fell faster loses
    weight. Adam's first step is lr·sign(grad), with grad = z ⊙ (δ − zᵀδ)."""
    bal = FAMO(["a", "b"], lr=0.025, gamma=0.0)
    bal.backward(_losses({"a": 1.0, "b": 1.0}), StepContext([]))
    assert torch.equal(bal.logits, torch.zeros(2))
    weights = bal.backward(_losses({"a": 0.5, "b": 1.0}), StepContext([]))
    torch.testing.assert_close(bal.logits, torch.tensor([-0.025, 0.025]))
    z = torch.softmax(bal.logits, 0)
    want = z / torch.tensor([0.5, 1.0])
    want = want / want.sum()
    assert weights == pytest.approx({"a": float(want[0]), "b": float(want[1])}, rel=1e-5)


def test_famo_masked_task_keeps_its_logit() -> None:
    bal = FAMO(["a", "b", "c"])
    bal.backward(_losses({"a": 1.0, "b": 1.0, "c": 1.0}), StepContext([]))
    bal.backward(_losses({"a": 0.5, "b": 1.0}), StepContext([]))
    assert float(bal.logits[2]) == 0.0 and float(bal.logits[0]) < 0


# ----------------------------------------------------------------------------- GLS, SI, RLW, fixed
def test_gls_is_the_geometric_mean_and_weights_its_gradient() -> None:
    losses = _losses({"a": 2.0, "b": 8.0})
    total, weights = GLS(["a", "b"]).combine(losses)
    assert float(total.detach()) == pytest.approx(4.0)
    total.backward()
    assert weights == pytest.approx({"a": 4.0 / (2 * 2.0), "b": 4.0 / (2 * 8.0)})
    assert float(losses["a"].grad) == pytest.approx(weights["a"])


@pytest.mark.parametrize("cls", [ScaleInvariant, GLS])
def test_gradient_direction_ignores_the_scale_of_a_loss(cls) -> None:
    """Σ log L_t (and the geometric mean) give the same direction when one loss is rescaled."""
    theta = torch.tensor([0.3, -1.2, 0.7], requires_grad=True)
    u, v = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0, -1.0, 3.0])

    def direction(scale: float) -> torch.Tensor:
        losses = {"a": (theta @ u) ** 2 + 1, "b": scale * ((theta @ v) ** 2 + 1)}
        (g,) = torch.autograd.grad(cls(["a", "b"]).combine(losses)[0], theta)
        return g / g.norm()

    torch.testing.assert_close(direction(1.0), direction(100.0))
    total, weights = ScaleInvariant(["a"]).combine(_losses({"a": 4.0}))
    assert weights == {"a": 0.25} and float(total.detach()) == pytest.approx(math.log(4.0))


@pytest.mark.parametrize("distribution", ["normal", "uniform", "dirichlet"])
def test_rlw_weights_lie_on_the_simplex_and_are_fresh(distribution: str) -> None:
    bal = RLW(list(TASKS), distribution=distribution)
    torch.manual_seed(0)
    w1 = bal.combine(_losses({"a": 1.0, "b": 1.0, "c": 1.0}))[1]
    w2 = bal.combine(_losses({"a": 1.0, "b": 1.0, "c": 1.0}))[1]
    assert sum(w1.values()) == pytest.approx(1.0) and all(v > 0 for v in w1.values())
    assert w1 != w2
    torch.manual_seed(0)
    assert bal.combine(_losses({"a": 1.0, "b": 1.0, "c": 1.0}))[1] == w1


def test_fixed_weights() -> None:
    bal = FixedWeighting(["a", "b"], weights={"a": 3.0})
    total, weights = bal.combine(_losses({"a": 1.0, "b": 2.0}))
    assert float(total.detach()) == 5.0 and weights == {"a": 3.0, "b": 1.0}
    assert create_balancer("fixed", ["a", "b"]).weights == {"a": 1.0, "b": 1.0}
    with pytest.raises(ValueError):
        FixedWeighting(["a"], weights={"z": 1.0})
    with pytest.raises(ValueError):
        FixedWeighting(["a"], weights={"a": -1.0})


# ----------------------------------------------------------------------------- properties
ORDER_INVARIANT = ["equal", "fixed", "uncertainty", "dwa", "famo", "gls", "scale_invariant", "imtl_l", "gradnorm"]


@settings(max_examples=25, deadline=None)
@given(values=st.tuples(positive, positive, positive), perm=st.permutations(list(TASKS)))
@pytest.mark.parametrize("name", ORDER_INVARIANT)
def test_loss_weights_are_finite_and_invariant_to_task_order(name: str, values, perm) -> None:
    def run(order):
        bal = create_balancer(name, list(TASKS))
        out = []
        for scale in (1.0, 0.5):
            losses = {t: torch.tensor(values[TASKS.index(t)] * scale, requires_grad=True) for t in order}
            if name == "gradnorm":
                losses = {t: v * 1.0 for t, v in losses.items()}
                out.append(_gradnorm_step(bal, losses))
            else:
                out.append(bal.backward(losses, StepContext([])))
            bal.on_epoch_end(0, {t: float(v.detach()) for t, v in losses.items()})
        return out

    a, b = run(list(TASKS)), run(list(perm))
    for wa, wb in zip(a, b):
        assert all(math.isfinite(v) for v in wa.values())
        assert wa == pytest.approx(wb, rel=1e-5)


def _gradnorm_step(bal: GradNorm, losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """GradNorm on a stand-in network: each task's 'last block' is one scalar parameter."""
    from automtl.build import ParamGroup

    params = {t: torch.nn.Parameter(torch.tensor(1.0 + i)) for i, t in enumerate(sorted(losses))}
    scaled = {t: loss * params[t] for t, loss in losses.items()}
    groups = [ParamGroup(f"b0:{t}", (t,), (params[t],)) for t in sorted(losses)]
    return bal.backward(scaled, StepContext(groups))


@pytest.mark.parametrize("shapes", [[1, 1, 1], [3, 1, 4]], ids=["one-output-heads", "mixed-widths"])
def test_gradnorm_head_norms_equal_the_input_gradient_norm(shapes: list[int]) -> None:
    """‖g W‖ from a head's output gradient and weight is the norm of the gradient it sends into
    its input, checked against autograd for one-output (squeezed) and wider heads."""
    from automtl.balance._gradnorm import _linear_head_norms

    torch.manual_seed(0)
    grads, weights, want = [], [], []
    for o in shapes:
        z = torch.randn(7, 5, requires_grad=True)
        head = torch.nn.Linear(5, o)
        y = head(z)
        y = y.squeeze(-1) if o == 1 else y
        g = torch.randn_like(y)
        want.append(torch.linalg.vector_norm(torch.autograd.grad(y, z, g)[0]))
        grads.append(g)
        weights.append(head.weight)
    got = _linear_head_norms(grads, weights, torch.zeros(()))
    torch.testing.assert_close(got, torch.stack(want))


@pytest.mark.parametrize("partitions", [HPS, BRANCHED], ids=["hps", "branched"])
@pytest.mark.parametrize("hidden", [(), ("b",)], ids=["all-labelled", "b-masked"])
def test_gradnorm_representation_paths_agree(partitions: list, hidden: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """"representation" from the heads' outputs (what the trainer passes), from the captured
    head-input rows (features only) and from one backward pass per task (features only, no
    graph hooks): the same weights step after step, and the same parameter gradients."""
    from automtl.balance import _gradnorm
    from automtl.train import task_losses

    nets = [make_net(partitions) for _ in range(3)]
    bals = [GradNorm(list(TASKS), mode="representation") for _ in range(3)]
    used = {"heads": 0, "capture": 0, "per_task": 0}
    real_create, real_norms, real_heads = _gradnorm.RowCapture.create, GradNorm.gradient_norms, GradNorm._linear_heads
    hooks_off = [False]

    def create(cls, *args):
        got = None if hooks_off[0] else real_create(*args)
        used["capture"] += got is not None
        return got

    def per_task(self, *args):
        used["per_task"] += 1
        return real_norms(self, *args)

    def heads(self, *args):
        got = real_heads(self, *args)
        used["heads"] += got is not None
        return got

    monkeypatch.setattr(_gradnorm.RowCapture, "create", classmethod(create))
    monkeypatch.setattr(GradNorm, "gradient_norms", per_task)
    monkeypatch.setattr(GradNorm, "_linear_heads", heads)
    for i in range(4):
        batch = make_batch(seed=20 + i, hidden=hidden if i % 2 else ())
        for k, (net, bal) in enumerate(zip(nets, bals)):
            features = net.features(batch.x)
            outputs = net.heads_forward(features)
            losses = task_losses(net, batch, outputs)
            net.zero_grad(set_to_none=True)
            hooks_off[0] = k == 2
            extra = {"features": features, "outputs": outputs} if k == 0 else {"features": features}
            bal.backward(losses, StepContext(net.param_groups(), 0, i, extra))
        for bal in bals[1:]:
            torch.testing.assert_close(bal.task_weights, bals[0].task_weights, rtol=1e-5, atol=1e-6)
        for params in zip(*(net.parameters() for net in nets)):
            for q in params[1:]:
                assert (q.grad is None) == (params[0].grad is None)
                if q.grad is not None:
                    torch.testing.assert_close(q.grad, params[0].grad)
            with torch.no_grad():
                for q in params:
                    if q.grad is not None:
                        q -= 0.1 * q.grad
    assert not torch.allclose(bals[0].task_weights, torch.ones(3))
    assert used == {"heads": 4, "capture": 4, "per_task": 4}  # each path, once per step
