"""Fixed designs: train one architecture (hard sharing, single-task, or a given tree) over seeds,
and the cached single-task baselines that Δm is measured against.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from automtl.balance import create_balancer
from automtl.build import build_model
from automtl.config import ParamSpec, SearchConfig
from automtl.experiment import Experiment
from automtl.metrics import aggregate_score, delta_m, mean_std
from automtl.train import TrainConfig, evaluate, fit, seed_everything
from automtl.tree import BranchTree

__all__ = [
    "FixedResult",
    "baseline_key",
    "default_train_config",
    "resolve_arch",
    "single_task_baseline",
    "train_fixed",
    "tuned_single_task",
]


def _default_value(spec: ParamSpec) -> Any:
    if spec.kind == "fixed":
        return spec.value
    if spec.kind == "choice":
        return spec.choices[0]
    if spec.log:
        value = math.sqrt(spec.low * spec.high)
    else:
        value = (spec.low + spec.high) / 2
    return round(value) if spec.is_int else value


def default_train_config(config: SearchConfig, seed: int = 0, **overrides: Any) -> TrainConfig:
    """Training hyperparameters for a fixed design: each config value if fixed, else the first
    choice, else the middle of the range (geometric middle on a log scale); ``overrides`` win."""
    values = {k: _default_value(v) for k, v in config.train.items()}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(seed=seed, **values)


def resolve_arch(arch: str | BranchTree, tasks: Sequence[str], n_blocks: int) -> BranchTree:
    """``"hps"`` (hard parameter sharing), ``"single"`` (single-task networks), a path to a tree
    YAML, or a :class:`BranchTree`.

    Raises:
        ValueError: Unknown name, or the tree's tasks or blocks do not match.
    """
    if isinstance(arch, BranchTree):
        tree = arch
    elif arch == "hps":
        return BranchTree.hard_sharing(tasks, n_blocks)
    elif arch == "single":
        return BranchTree.single_task(tasks, n_blocks)
    elif Path(arch).is_file():
        tree = BranchTree.from_yaml(Path(arch).read_text())
    else:
        raise ValueError(f"--arch '{arch}': expected hps, single or a tree YAML file")
    if list(tree.tasks) != list(tasks) or tree.n_blocks != n_blocks:
        raise ValueError(
            f"tree has tasks {list(tree.tasks)} and {tree.n_blocks} blocks; the data set has {list(tasks)} "
            f"and the backbone {n_blocks} blocks"
        )
    return tree


@dataclass
class FixedResult:
    """Per-seed validation and test metrics of one fixed design.

    Attributes:
        tree: The architecture.
        balancer: Balancer name; ``balancer_params`` its hyperparameters.
        train: Training hyperparameters of the first seed (later seeds differ only in seed).
        val, test: One ``{task: metric}`` per seed.
        n_params: Parameter count.
        seconds: Training wall time of each seed (s), ``fit`` only.
    """

    tree: BranchTree
    balancer: str
    balancer_params: dict[str, Any]
    train: TrainConfig
    val: list[dict[str, float]] = field(default_factory=list)
    test: list[dict[str, float]] = field(default_factory=list)
    n_params: int = 0
    seconds: list[float] = field(default_factory=list)

    def summary(self, tasks: Sequence[Any], baseline: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
        """Mean and standard deviation over seeds of every task's metric, of ``mean_score``,
        and of Δm (percent, positive is better) when ``baseline`` gives ``{"val": ..., "test": ...}``."""

        def stats(values: list[float]) -> dict[str, float]:
            mean, std = mean_std(values)
            return {"mean": mean, "std": std}

        out: dict[str, Any] = {"seeds": len(self.val), "n_params": self.n_params}
        for split, runs in (("val", self.val), ("test", self.test)):
            out[split] = {t.name: stats([r[t.name] for r in runs]) for t in tasks}
            out[split]["(mean_score)"] = stats([aggregate_score(r, tasks) for r in runs])
            if baseline is not None and split in baseline:
                out[split]["(delta_m %)"] = stats([delta_m(r, baseline[split], tasks) for r in runs])
        return out


def train_fixed(
    experiment: Experiment,
    arch: str | BranchTree = "hps",
    balancer: str = "equal",
    balancer_params: Mapping[str, Any] | None = None,
    seeds: int = 1,
    device: str | None = None,
    train: TrainConfig | None = None,
    first_seed: int = 0,
    **train_overrides: Any,
) -> FixedResult:
    """Train one fixed design with ``seeds`` seeds (``first_seed``, ``first_seed + 1``, ...);
    report validation and test metrics.

    Training hyperparameters are ``train`` (e.g. a searched candidate's) with each seed put in,
    else :func:`default_train_config` of the experiment's config; ``train_overrides`` win in both cases.

    Raises:
        ValueError: See :func:`resolve_arch`; ``seeds < 1``.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    data, backbone = experiment.data, experiment.backbone
    tree = resolve_arch(arch, data.task_names, backbone.n_blocks)
    overrides = {k: v for k, v in train_overrides.items() if v is not None}

    def config_of(seed: int) -> TrainConfig:
        if train is None:
            return default_train_config(experiment.config, seed, **overrides)
        return replace(train, seed=seed, **overrides)

    result = FixedResult(tree, balancer, dict(balancer_params or {}), config_of(first_seed))
    for seed in range(first_seed, first_seed + seeds):
        seed_everything(seed)
        net = build_model(tree, backbone, data.tasks, device or experiment.config.device)
        start = time.perf_counter()
        fit(net, data, create_balancer(balancer, data.task_names, **result.balancer_params), config_of(seed))
        result.seconds.append(time.perf_counter() - start)
        result.val.append(evaluate(net, data.val, data.tasks))
        result.test.append(evaluate(net, data.test, data.tasks))
        result.n_params = net.num_parameters()
    return result


def baseline_key(config: SearchConfig, train: TrainConfig) -> str:
    """Hash of everything that determines a single-task baseline (data, tasks, backbone, training)."""
    blob = json.dumps(
        {
            "data": [config.data, config.data_options],
            "tasks": config.task_overrides,
            "backbone": [config.backbone, config.backbone_options],
            "train": train.to_dict(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def single_task_baseline(
    experiment: Experiment,
    cache_dir: str | Path,
    splits: Sequence[str] = ("val",),
    device: str | None = None,
    **train_overrides: Any,
) -> dict[str, dict[str, float]]:
    """Single-task networks' metrics per split, trained once and cached.

    One network with every task split at branching point 0 and equal weighting trains each task
    independently (no parameter and no gradient is shared), with the default training
    hyperparameters of the config (:func:`default_train_config`, seed 0, ``train_overrides``
    applied, so that a fixed design and its baseline share one training budget). The result is cached
    in ``cache_dir/<baseline_key>.json``; asking for a split not yet cached retrains with the same
    seed (the same network on CPU) and evaluates it there.

    Returns:
        ``{split: {task: metric}}`` for each requested split.
    """
    train = default_train_config(experiment.config, 0, **train_overrides)
    path = Path(cache_dir) / f"{baseline_key(experiment.config, train)}.json"
    cached: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    missing = [s for s in splits if s not in cached.get("metrics", {})]
    if missing:
        data = experiment.data
        tree = BranchTree.single_task(data.task_names, experiment.backbone.n_blocks)
        seed_everything(train.seed)
        net = build_model(tree, experiment.backbone, data.tasks, device or experiment.config.device)
        fit(net, data, create_balancer("equal", data.task_names), train)
        metrics = cached.setdefault("metrics", {})
        for split in missing:
            metrics[split] = evaluate(net, data.split(split), data.tasks)
        cached["train"] = train.to_dict()
        cached["what"] = "single-task networks (tree: all singletons from branching point 0), equal weighting"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cached, indent=2))
    return {s: cached["metrics"][s] for s in splits}


def tuned_single_task(
    experiment: Experiment,
    cache_dir: str | Path,
    seeds: Sequence[int],
    device: str | None = None,
    epochs: int | None = None,
) -> list[dict[str, dict[str, float]]]:
    """The single-task networks as a search measures them (:mod:`automtl.baselines`): each task's
    learning rate chosen on validation on the config's grid (one tuning seed), then every task at
    its rate trained with each of ``seeds`` (so a fixed design trained with the same seeds is
    compared paired); ``epochs`` overrides the config's, as for the design. Cached in
    ``cache_dir`` under a hash of data, tasks, backbone and training settings, per seed.

    Returns:
        Per seed, ``{"val": {task: metric}, "test": {task: metric}}``.

    Raises:
        BaselineError: A task's tuned baseline is no better than a constant predictor.
    """
    from automtl.baselines import (
        baseline_candidate,
        check_sane,
        choose,
        lr_grid,
        trivial_metrics,
    )
    from automtl.runs import train_candidate
    from automtl.seeds import baseline_tuning_seed

    config, data = experiment.config, experiment.data
    n_blocks = experiment.backbone.n_blocks
    extra = {"epochs": epochs} if epochs is not None else {}
    key = baseline_key(config, default_train_config(config, 0, **extra))
    path = Path(cache_dir) / f"tuned-{key}.json"
    cached: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    dev = device or config.device
    if "lr_by_task" not in cached:
        grid, tune_seed = lr_grid(config.train["lr"]), baseline_tuning_seed(config.seed)
        results = {}
        for lr in grid:
            run = train_candidate(experiment, baseline_candidate(config, data.task_names, n_blocks, tune_seed, lr=lr, **extra), dev)
            results[lr] = run.val_metrics
        choice = choose(data.tasks, grid, tune_seed, results)
        choice.trivial = trivial_metrics(data, "val")
        check_sane(choice, data.tasks)
        cached["lr_by_task"] = choice.lr_by_task
    runs = cached.setdefault("runs", {})
    for seed in seeds:
        if str(seed) not in runs:
            candidate = baseline_candidate(config, data.task_names, n_blocks, seed, lr_by_task=cached["lr_by_task"], **extra)
            run = train_candidate(experiment, candidate, dev)
            runs[str(seed)] = {s: evaluate(run.net, data.split(s), data.tasks) for s in ("val", "test")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cached, indent=2))
    return [runs[str(seed)] for seed in seeds]
