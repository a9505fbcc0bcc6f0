"""Measure task affinity for a search configuration: the Python twin of ``automtl affinity``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from automtl.affinity._base import AffinityMeter, shared_parameters
from automtl.affinity._cosine import GradientCosine
from automtl.affinity._lookahead import LookaheadAffinity
from automtl.affinity._representation import (
    REPRESENTATION_MEASURES,
    representation_affinity,
)
from automtl.affinity._result import AffinityResult
from automtl.balance import create_balancer
from automtl.build import build_model
from automtl.config import SearchConfig
from automtl.experiment import Experiment, prepare
from automtl.fixed import default_train_config
from automtl.train import TrainConfig, fit, seed_everything
from automtl.tree import BranchTree

__all__ = ["DEFAULT_EVERY", "MEASURES", "measure_affinity", "train_config_for"]

#: Steps between two lookahead measurements by default (``k``). With the default one-epoch
#: warm-up, measuring then costs 1.27-1.38× (quickstart CNN, 11 tasks) and 1.16-1.37× (STAR MLP,
#: 8 tasks) the same training run over two benchmark runs (goal: at most 1.5×); k = 10 cost
#: 1.41-1.59×. See benchmarks/RESULTS.md.
#: With so few measurements the raw matrix is noisy; :meth:`AffinityResult.without_momentum` is steadier.
DEFAULT_EVERY = 15

#: Measures taken during training (``on_batch`` hooks), by name.
MEASURES: dict[str, type[AffinityMeter]] = {"lookahead": LookaheadAffinity, "cosine": GradientCosine}


def train_config_for(config: SearchConfig) -> TrainConfig:
    """One training setting from the configuration's ``train`` space: a fixed value as given,
    the first of a choice, the middle of a range (geometric middle on a log scale); seeded with
    ``search.seed``."""
    return default_train_config(config, seed=config.seed)


def measure_affinity(
    config: SearchConfig,
    *,
    measure: str = "lookahead",
    every: int = DEFAULT_EVERY,
    warmup_epochs: int | None = None,
    tree: BranchTree | None = None,
    device: str | torch.device | None = None,
    train: TrainConfig | None = None,
    balancer: str = "equal",
    samples: int = 256,
    experiment: Experiment | None = None,
) -> AffinityResult:
    """Train one network on the training split and measure the tasks' affinity.

    ``lookahead`` (TAG, :class:`LookaheadAffinity`) and ``cosine`` (:class:`GradientCosine`) are
    measured every ``every`` steps of one training run of ``tree`` (hard parameter sharing by
    default) through :func:`automtl.train.fit`'s ``on_batch`` hook; the run itself is unchanged
    by measuring (bitwise). ``rsa`` and ``cka`` train single-task networks
    (:meth:`BranchTree.single_task`, all in one run) and compare their block outputs on
    ``samples`` training inputs.

    Only the training split is used for the affinity (``fit`` also scores the validation split
    each epoch, as in any trial; those scores are kept in ``info["val_score"]``).

    Convention: ``result.matrix[i, j]`` is the effect of task ``i`` on task ``j``; for
    lookahead, ``Z_{i→j} = 1 − L_j(θ_s after a step on i) / L_j(θ_s)`` (positive: ``i`` helps
    ``j``). See ``result.convention``.

    Args:
        config: The search configuration (data, task overrides, backbone, train settings).
        measure: ``lookahead``, ``cosine``, ``rsa`` or ``cka``.
        every: Steps between in-training measurements (``k``; 1 = every step).
        warmup_epochs: Epochs left unmeasured at the start of training. Default: 1 when the run
            has two epochs or more, else 0. In the first epoch every step changes every loss a
            lot and the affinity mostly says "learning anything helps": on STAR, the rank
            correlation of affinity with the label correlation is 0.33 in the first epoch and
            0.84-0.86 in each later one (benchmarks/RESULTS.md). Leaving it out also saves its cost.
        tree: The architecture to train while measuring; default hard parameter sharing.
            Must share some parameters for ``lookahead``/``cosine``; not used by ``rsa``/``cka``.
        device: ``auto``, ``cpu``, ``cuda``...; default ``config.device``.
        train: Training settings; default :func:`train_config_for` ``(config)``.
        balancer: Loss balancer of the training run (a registered name, default hyperparameters).
        samples: Inputs compared by ``rsa``/``cka``.
        experiment: An already prepared ``prepare(config)`` (saves reloading the data).

    Returns:
        An :class:`AffinityResult` with the mean matrix, per-pair counts, the per-epoch history
        and the cost of measuring.

    Raises:
        ValueError: Unknown measure, ``every < 1``, a tree for other tasks or blocks, or a tree
            sharing nothing (for the in-training measures).
        ConfigError, DataError: As :func:`automtl.experiment.prepare`.
    """
    known = [*MEASURES, *REPRESENTATION_MEASURES]
    if measure not in known:
        raise ValueError(f"unknown affinity measure '{measure}'; expected one of {known}")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if warmup_epochs is not None and warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    exp = experiment if experiment is not None else prepare(config)
    data, backbone = exp.data, exp.backbone
    tasks = data.task_names
    train_cfg = train if train is not None else train_config_for(config)
    dev = device if device is not None else config.device
    representation = measure in REPRESENTATION_MEASURES
    if representation:
        if tree is not None and tree != BranchTree.single_task(tasks, backbone.n_blocks):
            raise ValueError(f"'{measure}' compares single-task networks; leave tree unset")
        tree = BranchTree.single_task(tasks, backbone.n_blocks)
    elif tree is None:
        tree = BranchTree.hard_sharing(tasks, backbone.n_blocks)
    if list(tree.tasks) != tasks or tree.n_blocks != backbone.n_blocks:
        raise ValueError(
            f"tree has tasks {list(tree.tasks)} and {tree.n_blocks} blocks; the data have {tasks} and the "
            f"backbone {backbone.n_blocks} blocks"
        )
    seed_everything(train_cfg.seed)
    net = build_model(tree, backbone, data.tasks, dev)
    bal = create_balancer(balancer, tasks)
    info: dict[str, Any] = {
        "config": config.name,
        "data": data.name,
        "backbone": config.backbone,
        "backbone_options": dict(config.backbone_options),
        "train": train_cfg.to_dict(),
        "balancer": balancer,
        "device": str(next(net.parameters()).device),
        "split": "train",
    }
    if representation:
        start = time.perf_counter()
        fitted = fit(net, data, bal, train_cfg)
        fit_seconds = time.perf_counter() - start
        gen = torch.Generator().manual_seed(train_cfg.seed)
        pick = torch.randperm(len(data.train), generator=gen)[: min(samples, len(data.train))]
        x = data.train.x[pick].to(next(net.parameters()).device)
        start = time.perf_counter()
        per_block = representation_affinity(net, x, measure)
        seconds = time.perf_counter() - start
        n = len(tasks)
        info.update(samples=len(pick), val_score=fitted.val_score)
        return AffinityResult(
            measure=measure,
            tasks=tasks,
            matrix=np.mean(per_block, axis=0),
            counts=np.full((n, n), len(per_block), dtype=np.int64),
            convention=REPRESENTATION_MEASURES[measure]["convention"],
            source=REPRESENTATION_MEASURES[measure]["source"],
            symmetric=True,
            per_block=per_block,
            every=None,
            tree=tree,
            cost={"fit_seconds": fit_seconds, "measure_seconds": seconds, "measurements": 1.0},
            info=info,
        )
    warmup = warmup_epochs if warmup_epochs is not None else (1 if train_cfg.epochs >= 2 else 0)
    if warmup >= train_cfg.epochs:
        raise ValueError(f"warmup_epochs ({warmup}) leaves none of the {train_cfg.epochs} training epochs to measure")
    info["warmup_epochs"] = warmup
    shared_parameters(net)  # fail now, not after the warm-up, if the tree shares nothing
    meter = MEASURES[measure](tasks, every=every, start_epoch=warmup)
    steps = 0

    def count(ctx: Any) -> None:
        nonlocal steps
        steps = max(steps, ctx.step + 1)
        meter(ctx)

    start = time.perf_counter()
    fitted = fit(net, data, bal, train_cfg, on_batch=count)
    fit_seconds = time.perf_counter() - start
    info["val_score"] = fitted.val_score
    run_seconds = max(fit_seconds - meter.seconds, 1e-9)
    return AffinityResult(
        measure=measure,
        tasks=tasks,
        matrix=meter.matrix(),
        counts=meter.counts.copy(),
        convention=meter.convention,
        source=meter.source,
        symmetric=meter.symmetric,
        history=meter.history(),
        history_epochs=meter.history_epochs(),
        every=every,
        tree=tree,
        cost={
            "fit_seconds": fit_seconds,
            "measure_seconds": meter.seconds,
            "steps": float(steps),
            "measurements": float(meter.measurements),
            "overhead": fit_seconds / run_seconds,
        },
        info=info,
        baseline=meter.momentum_baseline() if isinstance(meter, LookaheadAffinity) else None,
    )
