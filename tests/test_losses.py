"""Masked losses: a hidden label contributes neither loss nor gradient."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from automtl.backbones import Backbone
from automtl.balance import EqualWeighting, StepContext
from automtl.build import build_model
from automtl.data import MultiTaskData
from automtl.losses import LOSSES, masked_loss
from automtl.tasks import TaskSpec
from automtl.train import TrainConfig, fit, task_losses
from automtl.tree import BranchTree
from tests import helpers

N = 8
# (task, loss, output shape, target maker)
CASES = {
    "binary-bce": (TaskSpec("t", "binary"), (N,), lambda g: torch.randint(0, 2, (N,), generator=g).float()),
    "multiclass-ce": (TaskSpec("t", "multiclass", num_classes=3), (N, 3), lambda g: torch.randint(0, 3, (N,), generator=g)),
    "multilabel-bce": (
        TaskSpec("t", "multilabel", num_classes=2),
        (N, 2),
        lambda g: torch.randint(0, 2, (N, 2), generator=g).float(),
    ),
    "regression-mse": (TaskSpec("t", "regression"), (N,), lambda g: torch.randn(N, generator=g)),
    "regression-l1": (TaskSpec("t", "regression", loss="l1"), (N,), lambda g: torch.randn(N, generator=g)),
    "regression-huber": (TaskSpec("t", "regression", loss="huber"), (N,), lambda g: 3 * torch.randn(N, generator=g)),
}


def _loss_and_grad(task: TaskSpec, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple:
    out = output.clone().requires_grad_(True)
    loss = masked_loss(task, out, target, mask)
    assert loss is not None and loss.dim() == 0
    loss.backward()
    return loss.detach(), out.grad


@settings(max_examples=40, deadline=None)
@given(case=st.sampled_from(sorted(CASES)), seed=st.integers(0, 2**16), bits=st.lists(st.booleans(), min_size=N, max_size=N))
def test_masked_labels_change_neither_loss_nor_gradient(case: str, seed: int, bits: list[bool]) -> None:
    task, shape, make_target = CASES[case]
    mask = torch.tensor(bits)
    if not mask.any() or mask.all():
        mask[0], mask[-1] = True, False
    g = torch.Generator().manual_seed(seed)
    output, target = torch.randn(shape, generator=g), make_target(g)
    loss, grad = _loss_and_grad(task, output, target, mask)

    # whatever a hidden label holds (NaN, a huge value, an impossible class) changes nothing
    poisoned = target.clone()
    if task.type == "multiclass":
        poisoned[~mask] = 10**6
    else:
        poisoned[~mask] = float("nan")
    loss2, grad2 = _loss_and_grad(task, output, poisoned, mask)
    assert torch.equal(loss, loss2) and torch.equal(grad, grad2)
    # nor does what the network outputs for those samples
    wild = output.clone()
    wild[~mask] = float("nan")
    loss3, grad3 = _loss_and_grad(task, wild, target, mask)
    assert torch.equal(loss, loss3) and torch.equal(grad, grad3)
    assert not grad[~mask].any()

    # and it equals the plain mean over the labelled samples
    expected = LOSSES.get(task.loss)(output[mask], target[mask]).mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_mean_equals_per_sample_mean_in_value_and_gradient(case: str) -> None:
    """The built-in losses take PyTorch's fused mean-reduced form; it must be the registered maths."""
    task, shape, make_target = CASES[case]
    g = torch.Generator().manual_seed(3)
    output, target = torch.randn(shape, generator=g), make_target(g)
    mask = torch.ones(N, dtype=torch.bool)
    mask[1] = False
    fused, fused_grad = _loss_and_grad(task, output, target, mask)
    out = output.clone().requires_grad_(True)
    reference = LOSSES.get(task.loss)(out[mask], target[mask]).mean()
    reference.backward()
    torch.testing.assert_close(fused, reference.detach())
    torch.testing.assert_close(fused_grad, out.grad)


def test_a_registered_loss_without_a_fused_form_is_averaged_per_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    cubed = lambda output, target: (output - target).abs() ** 3
    monkeypatch.setitem(LOSSES._entries, "cubed", cubed)
    out, target = torch.tensor([1.0, 2.0, 5.0]), torch.tensor([0.0, 0.0, 1.0])
    mask = torch.tensor([True, False, True])
    assert float(masked_loss(TaskSpec("r", "regression", loss="cubed"), out, target, mask)) == pytest.approx((1 + 64) / 2)


def test_known_values() -> None:
    reg = TaskSpec("r", "regression")
    out, target = torch.tensor([1.0, 2.0, 5.0]), torch.tensor([0.0, 0.0, 1.0])
    mask = torch.tensor([True, False, True])
    assert float(masked_loss(reg, out, target, mask)) == pytest.approx((1 + 16) / 2)
    assert float(masked_loss(TaskSpec("r", "regression", loss="l1"), out, target, mask)) == pytest.approx(2.5)
    assert float(masked_loss(TaskSpec("r", "regression", loss="huber"), out, target, mask)) == pytest.approx((0.5 + 3.5) / 2)
    binary = TaskSpec("b", "binary")
    logits = torch.tensor([0.0, 0.0])
    assert float(masked_loss(binary, logits, torch.tensor([1.0, 0.0]), torch.tensor([True, True]))) == pytest.approx(0.6931, abs=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_label_in_batch_gives_none(case: str) -> None:
    task, shape, make_target = CASES[case]
    g = torch.Generator().manual_seed(0)
    assert masked_loss(task, torch.randn(shape, generator=g), make_target(g), torch.zeros(N, dtype=torch.bool)) is None


def test_task_losses_leaves_out_an_unlabelled_task(data: MultiTaskData, backbone: Backbone) -> None:
    net = build_model(BranchTree.hard_sharing(data.task_names, backbone.n_blocks), backbone, data.tasks, "cpu")
    batch = data.train.subset(torch.arange(10))
    batch.mask["c"] = torch.zeros(10, dtype=torch.bool)
    losses = task_losses(net, batch)
    assert sorted(losses) == ["a", "b", "d"]
    assert all(torch.isfinite(v) for v in losses.values())


class _Spy(EqualWeighting):
    """Records which tasks' losses the trainer hands over at each step."""

    def __init__(self, tasks: list[str]) -> None:
        super().__init__(tasks)
        self.seen: list[list[str]] = []

    def backward(self, losses, ctx: StepContext):  # type: ignore[no-untyped-def]
        self.seen.append(sorted(losses))
        return super().backward(losses, ctx)


def test_trainer_leaves_out_a_task_with_no_label(backbone: Backbone) -> None:
    data = helpers.tiny_data(hide={"train": ["c"]})
    torch.manual_seed(0)
    net = build_model(BranchTree.hard_sharing(data.task_names, backbone.n_blocks), backbone, data.tasks, "cpu")
    head_c = [p.detach().clone() for p in net.heads["c"].parameters()]
    spy = _Spy(data.task_names)
    result = fit(net, data, spy, TrainConfig(epochs=2, batch_size=32, lr=1e-2, weight_decay=0.0))
    assert spy.seen and all(seen == ["a", "b", "d"] for seen in spy.seen)
    assert all("c" not in e.train_losses and "c" not in e.weights for e in result.history)
    # the unlabelled task's head received no gradient, so AdamW (no weight decay) left it as it was
    assert all(torch.equal(a, p) for a, p in zip(head_c, net.heads["c"].parameters()))
    assert set(result.val_metrics) == set(data.task_names)  # still evaluated on validation
