"""The training loop: masked task losses, a balancer, per-epoch validation, callbacks.

:func:`fit` reads the training and validation splits only; the test split is for
:func:`evaluate` after model selection.

Training stops with an error, never with a silently useless network:

* a NaN or infinite task loss raises :class:`~automtl.errors.NonFiniteLossError` before the
  step that would apply it;
* divergence raises :class:`~automtl.errors.DivergenceError` (a subclass, so a search fails
  the trial and goes on) at the end of an epoch, before validation is reported, when

  - a task's mean training loss over the epoch exceeds :data:`DIVERGENCE_FACTOR` (1000) times
    its mean over the first epoch in which it was trained (the reference), provided that
    reference is finite and positive; or
  - a network output for a labelled validation row is NaN or infinite, or a task's validation
    metric is infinite (the labels are finite by construction, so the network diverged).

  Why 1000: the first epoch's mean includes the untrained network's loss, the largest that
  ordinary training sees. On the shipped configurations (``csv_example``, ``star``,
  ``quickstart``; hard sharing and single-task networks; equal, uncertainty and DWA weighting;
  the top of each learning-rate range and three times it) no later epoch's mean exceeded the
  first epoch's (largest ratio 0.99). A run that diverges without reaching NaN gains orders of
  magnitude per epoch instead (SGD at lr 0.6 on the tiny test MLP: mean loss 1.75, then
  1.3e6 at epoch 5, with a validation R² of -2e21). On a squared error, 1000 times the loss
  means predictions about 30 times farther off than the untrained network's: no longer a
  trial worth ranking, and far from any ordinary noise. A blow-up that stays finite within the
  very first epoch only raises the reference; it is caught when it grows further or reaches
  the outputs as inf or NaN.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from automtl.balance import Balancer, StepContext
from automtl.build import BranchedNet
from automtl.data import MultiTaskData, Split
from automtl.errors import DivergenceError, NonFiniteLossError
from automtl.losses import masked_loss
from automtl.metrics import aggregate_score, compute_metric
from automtl.tasks import TaskSpec

__all__ = [
    "DIVERGENCE_FACTOR",
    "BatchContext",
    "EpochResult",
    "FitResult",
    "TrainConfig",
    "evaluate",
    "fit",
    "predict",
    "seed_everything",
    "task_losses",
]

#: Divergence: a task's mean training loss in an epoch above this many times its first epoch's
#: mean (module docstring).
DIVERGENCE_FACTOR = 1e3

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9),
}


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters.

    Attributes:
        epochs: Passes over the training split.
        batch_size: Samples per optimizer step.
        lr: Learning rate.
        weight_decay: Decoupled weight decay (AdamW) or L2 (others).
        optimizer: ``adamw`` (default), ``adam`` or ``sgd`` (momentum 0.9).
        seed: Seeds parameter initialisation (via :func:`seed_everything`) and batch order.
        eval_batch_size: Samples per forward pass in evaluation.
        lr_by_task: Per-task learning rates of the parameters used by one task only (a
            single-task network's blocks and every head); ``None``: ``lr`` everywhere. The
            tuned single-task baselines use it (:mod:`automtl.baselines`).
    """

    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    seed: int = 0
    eval_batch_size: int = 2048
    lr_by_task: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer '{self.optimizer}'; expected one of {sorted(OPTIMIZERS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        for name, lr in [("lr", self.lr), *((f"lr_by_task.{t}", v) for t, v in (self.lr_by_task or {}).items())]:
            if not (lr > 0 and math.isfinite(lr)):
                raise ValueError(f"{name} must be a positive finite number, got {lr}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpochResult:
    """What one epoch produced.

    Attributes:
        epoch: 0-based epoch index.
        train_losses: Mean training loss per task (over the steps where it was labelled).
        val_metrics: Validation metric per task.
        val_score: :func:`automtl.metrics.aggregate_score` of ``val_metrics`` (higher is better).
        seconds: Wall time of the epoch's training and validation, in seconds.
        weights: Mean weight the balancer gave each task.
    """

    epoch: int
    train_losses: dict[str, float]
    val_metrics: dict[str, float]
    val_score: float
    seconds: float
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class FitResult:
    """The outcome of :func:`fit`: the last epoch's validation scores and the history."""

    history: list[EpochResult]

    @property
    def val_metrics(self) -> dict[str, float]:
        return self.history[-1].val_metrics

    @property
    def val_score(self) -> float:
        return self.history[-1].val_score

    @property
    def seconds(self) -> float:
        return sum(e.seconds for e in self.history)


def seed_everything(seed: int) -> None:
    """Seed Python's, and torch's CPU and CUDA, random generators."""
    random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class BatchContext:
    """What an ``on_batch`` callback sees, before the step's forward pass.

    A callback may run extra forward/backward passes and optimizer steps (e.g. lookahead
    affinity) as long as it restores ``net``'s parameters and buffers and the optimizer state.
    """

    net: BranchedNet
    optimizer: torch.optim.Optimizer
    batch: Split
    epoch: int
    step: int


def task_losses(net: BranchedNet, batch: Split, outputs: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Masked mean loss of every task labelled in ``batch`` (tasks with no label are absent).

    Args:
        net: The network (its ``tasks`` name the losses).
        batch: A mini-batch.
        outputs: ``net(batch.x)`` if already computed.
    """
    outputs = net(batch.x) if outputs is None else outputs
    losses = {}
    for task in net.tasks:
        loss = masked_loss(task, outputs[task.name], batch.y[task.name], batch.mask[task.name])
        if loss is not None:
            losses[task.name] = loss
    return losses


def _epoch_means(
    step_tasks: Sequence[tuple[str, ...]],
    step_losses: Sequence[torch.Tensor],
    step_weights: Sequence[Mapping[str, float]],
) -> tuple[dict[str, float], dict[str, float]]:
    """Each task's mean loss and mean weight over the steps where it was labelled.

    Args:
        step_tasks: Per step, the tasks labelled in it, in the order of ``step_losses``' entries.
        step_losses: Per step, the detached losses of those tasks, ``[len(step_tasks[i])]``.
        step_weights: Per step, the balancer's weights (a task it left out counts as NaN).
    """
    # losses are summed in float32, step by step, as the per-step tensors would add up
    values = torch.cat(list(step_losses)).cpu().numpy() if step_losses else np.zeros(0, dtype=np.float32)
    sums: dict[str, np.float32] = {}
    counts: dict[str, int] = {}
    weight_sums: dict[str, float] = {}
    i = 0
    for tasks, weights in zip(step_tasks, step_weights):
        for t in tasks:
            sums[t] = sums[t] + values[i] if t in sums else values[i]
            counts[t] = counts.get(t, 0) + 1
            weight_sums[t] = weight_sums.get(t, 0.0) + weights.get(t, float("nan"))
            i += 1
    return {t: float(sums[t]) / counts[t] for t in sums}, {t: weight_sums[t] / counts[t] for t in weight_sums}


def _optimizer(net: BranchedNet, balancer: Balancer, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer over the network's and the balancer's parameters; with ``lr_by_task``, a
    parameter group per learning rate (a node or head used by one task takes that task's rate)."""
    make = OPTIMIZERS[config.optimizer]
    if not config.lr_by_task:
        return make(list(net.parameters()) + list(balancer.parameters()), lr=config.lr, weight_decay=config.weight_decay)
    by_lr: dict[float, list[torch.nn.Parameter]] = {}
    for group in net.param_groups():
        lr = config.lr_by_task.get(group.tasks[0], config.lr) if len(group.tasks) == 1 else config.lr
        by_lr.setdefault(lr, []).extend(group.params)
    by_lr.setdefault(config.lr, []).extend(balancer.parameters())
    groups = [{"params": params, "lr": lr} for lr, params in by_lr.items() if params]
    return make(groups, lr=config.lr, weight_decay=config.weight_decay)


def fit(
    net: BranchedNet,
    data: MultiTaskData,
    balancer: Balancer,
    config: TrainConfig,
    *,
    on_epoch: Callable[[EpochResult], None] | None = None,
    on_batch: Callable[[BatchContext], None] | None = None,
) -> FitResult:
    """Train ``net`` on ``data.train`` with ``balancer``; validate on ``data.val`` each epoch.

    Args:
        net: The network, already on its device; trained in place.
        data: The data set; only ``train`` and ``val`` are read.
        balancer: Turns the task losses into gradients; moved to ``net``'s device.
        config: Training hyperparameters.
        on_epoch: Called after each epoch's validation (progress, pruning); an exception it
            raises (e.g. ``optuna.TrialPruned``) ends training and propagates.
        on_batch: Called before each training step (see :class:`BatchContext`).

    Returns:
        The per-epoch history; the last epoch's validation metrics are the result.

    Raises:
        NonFiniteLossError: A task loss is NaN or infinite (names the task, epoch and step).
        DivergenceError: Training diverged by the rule of this module's docstring (names the
            task, the epoch and both losses, or the non-finite validation output); raised
            before ``on_epoch`` sees that epoch.
    """
    device = next(net.parameters()).device
    balancer.to(device)
    train, val = data.train.to(device), data.val.to(device)
    optimizer = _optimizer(net, balancer, config)
    generator = torch.Generator().manual_seed(config.seed)
    param_groups = net.param_groups()
    history: list[EpochResult] = []
    reference: dict[str, float] = {}  # each task's mean loss in the first epoch it was trained
    step = 0
    for epoch in range(config.epochs):
        start = time.perf_counter()
        net.train()
        # per step: the labelled tasks, their detached losses and their weights; reduced once at
        # the epoch's end, so the step itself does no per-task tensor arithmetic and no sync
        step_tasks: list[tuple[str, ...]] = []
        step_losses: list[torch.Tensor] = []
        step_weights: list[Mapping[str, float]] = []
        for batch in train.batches(config.batch_size, shuffle=True, generator=generator):
            if on_batch is not None:
                on_batch(BatchContext(net, optimizer, batch, epoch, step))
            features = net.features(batch.x)
            outputs = net.heads_forward(features)
            losses = task_losses(net, batch, outputs)
            if not losses:
                continue
            stacked = torch.stack([loss.detach() for loss in losses.values()])
            # a NaN or infinite loss makes the sum non-finite (one op and one host read per step);
            # only then is each loss looked at, and a sum that merely overflowed goes on
            if not math.isfinite(float(stacked.sum())):
                bad = next((t for t, loss in losses.items() if not math.isfinite(float(loss.detach()))), None)
                if bad is not None:
                    raise NonFiniteLossError(bad, epoch, step, float(losses[bad].detach()))
            optimizer.zero_grad(set_to_none=True)
            ctx = StepContext(param_groups, epoch=epoch, step=step, extra={"features": features, "outputs": outputs})
            weights = balancer.backward(losses, ctx)
            optimizer.step()
            step_tasks.append(tuple(losses))
            step_losses.append(stacked)
            step_weights.append(dict(weights))
            step += 1
        mean_losses, mean_weights = _epoch_means(step_tasks, step_losses, step_weights)
        _check_divergence(mean_losses, reference, epoch, step)
        balancer.on_epoch_end(epoch, mean_losses)
        outputs = predict(net, val, config.eval_batch_size)
        _check_outputs(outputs, val, epoch, step)
        val_metrics = _metrics(outputs, val, net.tasks)
        for task, value in val_metrics.items():
            if math.isinf(value):
                raise DivergenceError(task, epoch, step, value, f"its validation metric is {value}")
        result = EpochResult(
            epoch=epoch,
            train_losses=mean_losses,
            val_metrics=val_metrics,
            val_score=aggregate_score(val_metrics, net.tasks),
            seconds=time.perf_counter() - start,
            weights=mean_weights,
        )
        history.append(result)
        if on_epoch is not None:
            on_epoch(result)
    return FitResult(history)


def _check_divergence(mean_losses: Mapping[str, float], reference: dict[str, float], epoch: int, step: int) -> None:
    """The loss rule of the module docstring; records each task's reference on first sight.

    Raises:
        DivergenceError: A task's mean loss exceeds :data:`DIVERGENCE_FACTOR` times its reference.
    """
    for task, loss in mean_losses.items():
        if task not in reference:
            reference[task] = loss
            continue
        first = reference[task]
        if math.isfinite(first) and first > 0 and loss > DIVERGENCE_FACTOR * first:
            raise DivergenceError(
                task,
                epoch,
                step,
                loss,
                f"its mean training loss {loss:.4g} is more than {DIVERGENCE_FACTOR:g} times its first epoch's "
                f"mean {first:.4g} (lower the learning rate)",
            )


def _check_outputs(outputs: Mapping[str, torch.Tensor], split: Split, epoch: int, step: int) -> None:
    """Raises :class:`DivergenceError` if an output for a labelled row of ``split`` is not finite."""
    for task, out in outputs.items():
        mask = split.mask[task].to(out.device)
        labelled = out[mask]
        finite = torch.isfinite(labelled)
        if not bool(finite.all()):
            rows = int((~finite).reshape(len(labelled), -1).any(dim=1).sum())
            value = float(labelled[~finite][0])
            raise DivergenceError(
                task, epoch, step, value, f"its validation outputs are not finite ({value}) on {rows} of {len(labelled)} labelled rows"
            )


@torch.no_grad()
def predict(net: BranchedNet, split: Split, batch_size: int = 2048) -> dict[str, torch.Tensor]:
    """Raw outputs of ``net`` on a whole split (eval mode), ``{task: [N] or [N, C]}``."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    chunks: dict[str, list[torch.Tensor]] = {t.name: [] for t in net.tasks}
    for batch in split.batches(batch_size):
        for t, out in net(batch.x.to(device)).items():
            chunks[t].append(out)
    net.train(was_training)
    return {t: torch.cat(c) for t, c in chunks.items()}


def evaluate(net: BranchedNet, split: Split, tasks: Sequence[TaskSpec], batch_size: int = 2048) -> dict[str, float]:
    """Each task's metric on ``split`` (labelled samples only; NaN where none is labelled)."""
    return _metrics(predict(net, split, batch_size), split, tasks)


def _metrics(outputs: Mapping[str, torch.Tensor], split: Split, tasks: Sequence[TaskSpec]) -> dict[str, float]:
    """Each task's metric of ``outputs`` (from :func:`predict`) against ``split``'s labels."""
    device = next(iter(outputs.values())).device
    return {
        t.name: compute_metric(t, outputs[t.name], split.y[t.name].to(device), split.mask[t.name].to(device))
        for t in tasks
    }
