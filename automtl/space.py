"""The search space: an Optuna trial in, a :class:`Candidate` out.

Encoding (fixed parameter names and ranges in every trial, so TPE learns across trials;
``T`` tasks, ``G = space.max_groups``, ``B`` backbone blocks, branching points ``0..B`` where
``B`` means "never split"):

=============================  =====================================================
parameter                      meaning
=============================  =====================================================
``tree.group.<task>``          task grouping: the group (``0..G-1``) of each task
``tree.group_split.<g>``       branching point at which group ``g`` leaves the trunk
``tree.task_split.<task>``     branching point at which the task leaves its group
``balancer``                   the balancing strategy (a registered name)
``balancer.<name>.<hparam>``   its hyperparameters (sampled only when it is chosen)
``train.<key>``                training hyperparameters that the config leaves open
=============================  =====================================================

The tree is :meth:`automtl.tree.BranchTree.from_branch_points` of these values: a shared
trunk, then groups, then single tasks. Hard parameter sharing (every split at ``B``) and
single-task networks (every task split at 0) are both in the space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from automtl.balance import BALANCERS, Balancer, HParam
from automtl.config import ParamSpec, SearchConfig
from automtl.errors import ConfigError, RegistryError
from automtl.train import OPTIMIZERS, TrainConfig
from automtl.tree import BranchTree

__all__ = ["Candidate", "SearchSpace"]


@dataclass(frozen=True)
class Candidate:
    """One point of the search space: an architecture, a balancer and training settings."""

    tree: BranchTree
    balancer: str
    balancer_params: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tree": self.tree.to_dict(),
            "balancer": self.balancer,
            "balancer_params": dict(self.balancer_params),
            "train": self.train.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        return cls(BranchTree.from_dict(d["tree"]), d["balancer"], dict(d["balancer_params"]), TrainConfig(**d["train"]))


def _suggest(trial: optuna.Trial, name: str, spec: ParamSpec) -> Any:
    if spec.kind == "fixed":
        return spec.value
    if spec.kind == "choice":
        return trial.suggest_categorical(name, list(spec.choices))
    if spec.is_int:
        return trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log)
    return trial.suggest_float(name, float(spec.low), float(spec.high), log=spec.log)


def _suggest_point(trial: optuna.Trial, name: str, points: Sequence[int]) -> int:
    lo, hi = min(points), max(points)
    if list(points) == list(range(lo, hi + 1)):
        return trial.suggest_int(name, lo, hi)
    return int(trial.suggest_categorical(name, list(points)))


class SearchSpace:
    """Branching points, task grouping, balancer and training hyperparameters.

    Args:
        config: The search configuration (its ``space`` and ``train`` parts are used).
        tasks: Task names in data order.
        n_blocks: Number of backbone blocks.

    Raises:
        ConfigError: An unknown balancer or hyperparameter, a branching point outside
            ``[0, n_blocks]``, or a balancer that needs a value the config does not give.
    """

    def __init__(self, config: SearchConfig, tasks: Sequence[str], n_blocks: int) -> None:
        self.tasks = list(tasks)
        self.n_blocks = n_blocks
        self.seed = config.seed
        space = config.space
        self.max_groups = min(space.max_groups, len(self.tasks))
        all_points = tuple(range(n_blocks + 1))
        self.group_points = self._check_points(space.group_split_points or all_points, "space.group_split_points")
        self.task_points = self._check_points(space.task_split_points or all_points, "space.task_split_points")
        self.train = config.train
        optimizer = self.train.get("optimizer")
        if optimizer is not None:
            names = [optimizer.value] if optimizer.kind == "fixed" else list(optimizer.choices)
            if optimizer.kind == "range" or any(n not in OPTIMIZERS for n in names):
                raise ConfigError(
                    "train.optimizer",
                    f"must be one of {sorted(OPTIMIZERS)} or a list of them, got {optimizer.to_yaml_value()!r}",
                )
        self.balancers: dict[str, dict[str, ParamSpec]] = {}
        for name, overrides in self._expand_all(space.balancers).items():
            try:
                cls: type[Balancer] = BALANCERS.get(name)
            except RegistryError as exc:
                raise ConfigError(f"space.balancers.{name}", str(exc)) from exc
            missing = getattr(cls, "missing_requirements", lambda: [])()
            if missing:
                raise ConfigError(
                    f"space.balancers.{name}",
                    f"needs {missing}, which are not installed: {getattr(cls, 'install_hint', '')}",
                )
            specs: dict[str, ParamSpec] = {}
            for hp_name, hp in cls.hyperparameters.items():
                searchable = hp.choices is not None or (hp.low is not None and hp.high is not None)
                given = overrides.get(hp_name)
                if given is not None and searchable and given.kind == "fixed" and isinstance(given.value, Mapping):
                    raise ConfigError(
                        f"space.balancers.{name}.{hp_name}",
                        f"a range takes low, high, log; got {given.value!r}",
                    )
                if hp_name in overrides:
                    spec = overrides[hp_name]
                    values = spec.choices if spec.kind == "choice" else (spec.value,) if spec.kind == "fixed" else ()
                    if hp.choices is not None and (spec.kind == "range" or any(v not in hp.choices for v in values)):
                        raise ConfigError(
                            f"space.balancers.{name}.{hp_name}", f"must be among {list(hp.choices)}, got {spec.to_yaml_value()!r}"
                        )
                    specs[hp_name] = spec
                elif hp.choices is not None:
                    specs[hp_name] = ParamSpec("choice", choices=hp.choices)
                elif hp.low is not None and hp.high is not None:
                    specs[hp_name] = ParamSpec("range", low=hp.low, high=hp.high, log=hp.log)
                elif hp.default is None:
                    raise ConfigError(f"space.balancers.{name}.{hp_name}", f"required by '{name}' ({hp.doc})")
                else:
                    specs[hp_name] = ParamSpec("fixed", value=hp.default)
            unknown = sorted(set(overrides) - set(cls.hyperparameters))
            if unknown:
                raise ConfigError(
                    f"space.balancers.{name}.{unknown[0]}",
                    f"'{name}' has no such hyperparameter; it has {sorted(cls.hyperparameters) or 'none'}",
                )
            self.balancers[name] = specs

    @staticmethod
    def _expand_all(balancers: Mapping[str, dict[str, ParamSpec]]) -> dict[str, dict[str, ParamSpec]]:
        """``all``: every registered balancer whose optional requirements are installed; its
        overrides apply to each balancer that has that hyperparameter; named entries win."""
        if "all" not in balancers:
            return dict(balancers)
        shared = balancers["all"]
        out: dict[str, dict[str, ParamSpec]] = {}
        for name in BALANCERS.list():
            cls = BALANCERS.get(name)
            if getattr(cls, "missing_requirements", lambda: [])():
                continue
            if name == "fixed" and "weights" not in shared:
                continue  # equal weighting already covers fixed weights of 1
            own: dict[str, ParamSpec] = {}
            for k, spec in shared.items():
                hp = cls.hyperparameters.get(k)
                if hp is None:
                    continue
                if hp.choices is not None and spec.kind in ("choice", "fixed"):
                    wanted = spec.choices if spec.kind == "choice" else (spec.value,)
                    allowed = tuple(c for c in wanted if c in hp.choices)
                    if not allowed:
                        continue  # e.g. mode: [representation] for a full-mode-only method
                    spec = ParamSpec("choice", choices=allowed)
                own[k] = spec
            out[name] = own
        out.update({k: v for k, v in balancers.items() if k != "all"})
        return out

    def _check_points(self, points: Sequence[int], key: str) -> tuple[int, ...]:
        bad = [p for p in points if not 0 <= p <= self.n_blocks]
        if bad:
            raise ConfigError(key, f"branching points {bad} outside [0, {self.n_blocks}] for this backbone")
        return tuple(sorted(set(points)))

    def sample(self, trial: optuna.Trial) -> Candidate:
        """Draw a candidate through ``trial`` (define-by-run)."""
        group_of = {t: trial.suggest_int(f"tree.group.{t}", 0, self.max_groups - 1) for t in self.tasks}
        group_split = {g: _suggest_point(trial, f"tree.group_split.{g}", self.group_points) for g in range(self.max_groups)}
        task_split = {t: _suggest_point(trial, f"tree.task_split.{t}", self.task_points) for t in self.tasks}
        tree = BranchTree.from_branch_points(self.tasks, self.n_blocks, group_of, group_split, task_split)
        name = trial.suggest_categorical("balancer", list(self.balancers))
        params = {hp: _suggest(trial, f"balancer.{name}.{hp}", spec) for hp, spec in self.balancers[name].items()}
        train_values = {k: _suggest(trial, f"train.{k}", spec) for k, spec in self.train.items()}
        train = TrainConfig(seed=self.seed * 1_000_003 + trial.number, **train_values)
        return Candidate(tree, name, params, train)

    def describe(self) -> dict[str, Any]:
        """The space as plain data (for ``show`` and the docs)."""
        return {
            "tasks": self.tasks,
            "n_blocks": self.n_blocks,
            "max_groups": self.max_groups,
            "group_split_points": list(self.group_points),
            "task_split_points": list(self.task_points),
            "balancers": {n: {k: v.to_yaml_value() for k, v in s.items()} for n, s in self.balancers.items()},
            "train": {k: v.to_yaml_value() for k, v in self.train.items()},
        }


def hparam_table(hparams: Mapping[str, HParam]) -> str:
    """``name=default [low, high] (log)`` per hyperparameter, for listings."""
    parts = []
    for name, hp in hparams.items():
        rng = f" in {list(hp.choices)}" if hp.choices else f" in [{hp.low}, {hp.high}]" if hp.low is not None else ""
        parts.append(f"{name}={hp.default}{rng}{' log' if hp.log else ''}")
    return ", ".join(parts) or "-"
