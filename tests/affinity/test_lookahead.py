"""Lookahead (TAG) and gradient-cosine affinity: signs on a constructed problem, and that a
measurement leaves the network, the optimizer and the training run bitwise unchanged."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from automtl.affinity import (
    GradientCosine,
    LookaheadAffinity,
    TrainingStateGuard,
    shared_parameters,
)
from automtl.balance import create_balancer
from automtl.build import BranchedNet
from automtl.train import OPTIMIZERS, BatchContext, TrainConfig, fit, task_losses
from automtl.tree import BranchTree
from tests.affinity._toy import image_data, image_net, opposing_data, opposing_net

A, B, C = 0, 1, 2


def _train(net: BranchedNet, data: Any, meter: Any, optimizer: str = "adamw", epochs: int = 1, lr: float = 1e-2) -> None:
    fit(net, data, create_balancer("equal", data.task_names), TrainConfig(epochs=epochs, batch_size=32, lr=lr, optimizer=optimizer), on_batch=meter)


@pytest.mark.parametrize(("optimizer", "every"), [("adamw", 1), ("adam", 2), ("sgd", 1000)])
def test_lookahead_signs_shared_and_opposing_targets(optimizer: str, every: int) -> None:
    # a and b share a target, c's is its negative. (With SGD's momentum 0.9 only the first step
    # is measured: later, the momentum of the joint update dominates every lookahead step.)
    data = opposing_data()
    meter = LookaheadAffinity(data.task_names, every=every)
    _train(opposing_net(data), data, meter, optimizer)
    m = meter.matrix()
    assert m[A, B] > 0 and m[B, A] > 0
    assert m[A, C] < 0 and m[C, A] < 0 and m[B, C] < 0 and m[C, B] < 0
    assert (np.diag(m) > 0).all()
    assert m[A, B] == pytest.approx(m[A, A])  # identical task: the same effect as on itself


def test_cosine_signs_and_symmetry() -> None:
    data = opposing_data()
    meter = GradientCosine(data.task_names, every=1)
    _train(opposing_net(data), data, meter)
    m = meter.matrix()
    assert m[A, B] == pytest.approx(1.0, abs=1e-9)
    assert m[A, C] < 0 and m[B, C] < 0
    np.testing.assert_allclose(m, m.T)
    np.testing.assert_allclose(np.diag(m), 1.0)


def _state(net: BranchedNet, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "params": [p.detach().clone() for p in net.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in net.parameters()],
        "buffers": [b.clone() for b in net.buffers()],
        "opt": [
            {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
            for g in opt.param_groups
            for p in g["params"]
        ],
        "has_state": [p in opt.state for g in opt.param_groups for p in g["params"]],
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
        "rng": torch.get_rng_state().clone(),
        "modes": [m.training for m in net.modules()],
    }


def _assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    for a, b in zip(before["params"], after["params"], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    for a, b in zip(before["buffers"], after["buffers"], strict=True):  # BN running stats, num_batches_tracked
        assert torch.equal(a, b)
    assert before["has_state"] == after["has_state"]
    for sa, sb in zip(before["opt"], after["opt"], strict=True):
        assert sa.keys() == sb.keys()
        for k in sa:  # exp_avg, exp_avg_sq, momentum_buffer, and the step counts
            if torch.is_tensor(sa[k]):
                assert torch.equal(sa[k], sb[k]), k
            else:
                assert sa[k] == sb[k], k
    assert before["groups"] == after["groups"]
    assert torch.equal(before["rng"], after["rng"])
    assert before["modes"] == after["modes"]


@pytest.mark.parametrize("meter_cls", [LookaheadAffinity, GradientCosine])
@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
@pytest.mark.parametrize("warm", [False, True])
def test_measurement_leaves_everything_bitwise_unchanged(meter_cls: type, optimizer: str, warm: bool) -> None:
    data = image_data(missing=0.3)
    net = image_net(data, dropout=True)  # BatchNorm and dropout
    opt = OPTIMIZERS[optimizer](net.parameters(), lr=1e-2, weight_decay=1e-3)
    batches = list(data.train.batches(16))
    if warm:  # optimizer state exists (moments, step counts); grads left over from the last step
        for batch in batches[:3]:
            opt.zero_grad()
            sum(task_losses(net, batch).values()).backward()
            opt.step()
    net.train()
    before = _state(net, opt)
    meter = meter_cls(data.task_names)
    meter(BatchContext(net, opt, batches[3], epoch=0, step=0))
    assert meter.measurements == 1 and np.isfinite(meter.matrix()).any()
    _assert_same(before, _state(net, opt))


def test_guard_restores_after_arbitrary_steps() -> None:
    data = image_data()
    net = image_net(data)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    before = _state(net, opt)
    with TrainingStateGuard(net, opt):
        for batch in data.train.batches(16):
            sum(task_losses(net, batch).values()).backward()
            opt.step()
            torch.rand(3)
        net.eval()
    _assert_same(before, _state(net, opt))


@pytest.mark.parametrize("meter_cls", [LookaheadAffinity, GradientCosine])
def test_training_run_is_unchanged_by_measuring(meter_cls: type) -> None:
    data = image_data(missing=0.2)
    finals = []
    for measure in (False, True):
        net = image_net(data, dropout=True)
        balancer = create_balancer("uncertainty", data.task_names)  # its parameters are in the optimizer too
        meter = meter_cls(data.task_names, every=2) if measure else None
        fit(net, data, balancer, TrainConfig(epochs=2, batch_size=16, lr=1e-2), on_batch=meter)
        finals.append([t.clone() for t in [*net.state_dict().values(), *balancer.parameters()]])
    for a, b in zip(*finals, strict=True):
        assert torch.equal(a, b)


def test_every_counts_and_history() -> None:
    data = image_data(n=64, missing=0.4)
    meter = LookaheadAffinity(data.task_names, every=3)
    net = image_net(data)
    fit(net, data, create_balancer("equal", data.task_names), TrainConfig(epochs=2, batch_size=8, lr=1e-2), on_batch=meter)
    steps = 2 * 8
    assert meter.measurements == len(range(0, steps, 3))
    assert meter.counts.max() <= meter.measurements
    assert len(meter.history()) == 2 and meter.history_epochs() == [0, 1]
    # per-pair counts: with missing labels, pairs are measured only when both are labelled
    np.testing.assert_array_equal(meter.counts, meter.counts.T)
    total = sum(meter.epoch_counts.values())
    np.testing.assert_array_equal(total, meter.counts)
    expected = np.where(meter.counts > 0, meter.sums / np.maximum(meter.counts, 1), np.nan)
    np.testing.assert_allclose(meter.matrix(), expected)


def test_pairs_sharing_nothing_have_zero_affinity() -> None:
    data = image_data()
    tasks = data.task_names
    # bright and quadrant share blocks 0-1 and 2; left has its own network from block 0
    tree = BranchTree(tasks, [[tasks[:2], tasks[2:]]] * 3)
    net = image_net(data, tree=tree)
    meter = LookaheadAffinity(tasks, every=1)
    fit(net, data, create_balancer("equal", tasks), TrainConfig(epochs=1, batch_size=16), on_batch=meter)
    m = meter.matrix()
    assert m[0, 2] == 0.0 and m[2, 0] == 0.0 and m[1, 2] == 0.0 and m[2, 1] == 0.0
    assert m[0, 1] != 0.0


def test_nothing_shared_is_an_error() -> None:
    data = image_data()
    net = image_net(data, tree=BranchTree.single_task(data.task_names, 3))
    with pytest.raises(ValueError, match="shares no parameter"):
        shared_parameters(net)


def test_momentum_baseline() -> None:
    data = opposing_data()
    net = opposing_net(data)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.0)
    meter = LookaheadAffinity(data.task_names)
    batches = list(data.train.batches(32))
    meter(BatchContext(net, opt, batches[0], epoch=0, step=0))
    # no optimizer state yet and no weight decay: a zero gradient moves nothing
    np.testing.assert_array_equal(meter.momentum_baseline(), 0.0)
    for batch in batches[1:4]:
        opt.zero_grad()
        sum(task_losses(net, batch).values()).backward()
        opt.step()
    meter(BatchContext(net, opt, batches[4], epoch=0, step=4))
    assert np.all(meter.momentum_baseline() != 0.0)  # the moments carried over now move θ_s


def test_every_must_be_positive() -> None:
    with pytest.raises(ValueError, match="every"):
        LookaheadAffinity(["a"], every=0)
