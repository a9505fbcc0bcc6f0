"""The search space: an Optuna trial in, a :class:`Candidate` out.

Encoding (fixed parameter names and ranges in every trial, so a sampler learns across trials;
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

The tree part lives in :mod:`automtl.encoding` (both directions). Every space can express the
two obvious designs: hard parameter sharing (every split at ``B``) and single-task networks
(every task split at 0). A config's ``group_split_points``/``task_split_points`` are therefore
completed with ``B`` (both) and ``0`` (tasks); :attr:`SearchSpace.added_points` says which
points were added.

**Canonical rounding.** Every sampled float (learning rate, weight decay, a balancer's
hyperparameters) is rounded to 3 significant digits before it is used, so two trials whose
candidates print the same are the same design: :meth:`Candidate.key` identifies a design
(tree, balancer, hyperparameters, training settings; not the seed), and a search trains one
design more than once only as a declared extra seed (:mod:`automtl.search`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import optuna

from automtl.balance import BALANCERS, Balancer, HParam
from automtl.config import ParamSpec, SearchConfig
from automtl.encoding import (
    group_param,
    group_split_param,
    task_split_param,
    tree_from_params,
    trial_params_for_tree,
)
from automtl.errors import ConfigError, RegistryError
from automtl.seeds import trial_seed
from automtl.train import OPTIMIZERS, TrainConfig
from automtl.tree import BranchTree

__all__ = ["FAMILY_DEFAULTS", "Candidate", "ObviousDesign", "SearchSpace", "canonical", "default_value"]

#: The default strategy of each balancer family: what "hard sharing with the family's default"
#: trains among the obvious designs (when the space offers it; else the family's first).
FAMILY_DEFAULTS: dict[str, str] = {"loss_weighting": "equal", "gradient_aggregation": "upgrad"}


def canonical(value: Any) -> Any:
    """``value`` with every float rounded to 3 significant digits (recursively in lists and
    mappings); ints, strings and booleans unchanged. Two candidates equal after this are one design."""
    if isinstance(value, float) and math.isfinite(value) and value != 0.0:
        return float(f"{value:.3g}")
    if isinstance(value, Mapping):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


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
        train = dict(d["train"])
        if train.get("lr_by_task") is not None:
            train["lr_by_task"] = dict(train["lr_by_task"])
        return cls(BranchTree.from_dict(d["tree"]), d["balancer"], dict(d["balancer_params"]), TrainConfig(**train))

    def key(self) -> str:
        """A design's identity: 16 hex digits of a hash of the tree, the balancer, its
        hyperparameters and the training settings, all canonically rounded; the seed is left out."""
        train = {k: v for k, v in self.train.to_dict().items() if k != "seed"}
        blob = json.dumps(
            {
                "tree": self.tree.to_dict()["partitions"],
                "balancer": self.balancer,
                "balancer_params": canonical(dict(self.balancer_params)),
                "train": canonical(train),
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def with_seed(self, seed: int) -> Candidate:
        """The same design trained from seed ``seed``."""
        return replace(self, train=replace(self.train, seed=seed))


@dataclass(frozen=True)
class ObviousDesign:
    """A design every search measures before it samples (hard sharing, single-task networks).

    Attributes:
        label: What it is, e.g. ``"hard sharing + equal"``.
        params: The trial parameters that give it (``study.enqueue_trial``).
    """

    label: str
    params: dict[str, Any]


def default_value(spec: ParamSpec) -> Any:
    """A fixed design's value of a searched setting: the fixed value, else the first choice, else
    the middle of the range (geometric middle on a log scale; rounded for an integer range);
    floats canonically rounded, as :meth:`SearchSpace.sample` rounds them."""
    if spec.kind == "fixed":
        return canonical(spec.value)
    if spec.kind == "choice":
        return canonical(spec.choices[0])
    value = math.sqrt(spec.low * spec.high) if spec.log else (spec.low + spec.high) / 2
    return round(value) if spec.is_int else canonical(float(value))


def _hparam_default(spec: ParamSpec, hp: HParam) -> Any:
    """A balancer's own default where the space allows it, else :func:`default_value`."""
    if spec.kind == "fixed":
        return spec.value
    if spec.kind == "choice":
        return hp.default if hp.default in spec.choices else spec.choices[0]
    if isinstance(hp.default, (int, float)) and spec.low <= hp.default <= spec.high:
        return hp.default
    return default_value(spec)


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
        group_points = self._check_points(space.group_split_points or all_points, "space.group_split_points")
        task_points = self._check_points(space.task_split_points or all_points, "space.task_split_points")
        # hard sharing needs n_blocks in both; single-task networks need 0 among the task points
        self.added_points: dict[str, list[int]] = {
            "group_split_points": sorted({n_blocks} - set(group_points)),
            "task_split_points": sorted({0, n_blocks} - set(task_points)),
        }
        self.group_points = tuple(sorted({*group_points, n_blocks}))
        self.task_points = tuple(sorted({*task_points, 0, n_blocks}))
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
            missing: list[str] = list(getattr(cls, "missing_requirements", list)())
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
            if getattr(cls, "missing_requirements", list)():
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
        """Draw a candidate through ``trial`` (define-by-run); floats canonically rounded,
        training seed :func:`automtl.seeds.trial_seed` of the trial number."""
        params: dict[str, Any] = {}
        for t in self.tasks:
            params[group_param(t)] = trial.suggest_int(group_param(t), 0, self.max_groups - 1)
        for g in range(self.max_groups):
            params[group_split_param(g)] = _suggest_point(trial, group_split_param(g), self.group_points)
        for t in self.tasks:
            params[task_split_param(t)] = _suggest_point(trial, task_split_param(t), self.task_points)
        tree = tree_from_params(params, self.tasks, self.n_blocks, self.max_groups)
        name = trial.suggest_categorical("balancer", list(self.balancers))
        hparams = {hp: canonical(_suggest(trial, f"balancer.{name}.{hp}", spec)) for hp, spec in self.balancers[name].items()}
        train_values = {k: canonical(_suggest(trial, f"train.{k}", spec)) for k, spec in self.train.items()}
        train = TrainConfig(seed=trial_seed(self.seed, trial.number), **train_values)
        return Candidate(tree, name, hparams, train)

    def random_tree(self, rng: random.Random) -> BranchTree:
        """A tree drawn with every parameter of the encoding uniform (random search's distribution)."""
        params: dict[str, Any] = {group_param(t): rng.randrange(self.max_groups) for t in self.tasks}
        params.update({group_split_param(g): rng.choice(self.group_points) for g in range(self.max_groups)})
        params.update({task_split_param(t): rng.choice(self.task_points) for t in self.tasks})
        return self.decode_tree(params)

    def fixed_defaults(self) -> dict[str, Any]:
        """Trial parameters fixing everything but the tree: the loss-weighting default (else the
        first balancer) and every open training setting at :func:`default_value` (for
        ``optuna.samplers.PartialFixedSampler``; the supernet strategy ranks trees only)."""
        name = self.family_default("loss_weighting") or next(iter(self.balancers))
        fixed: dict[str, Any] = {"balancer": name}
        fixed.update({f"train.{k}": default_value(s) for k, s in self.train.items() if s.kind != "fixed"})
        return fixed

    def decode_tree(self, params: Mapping[str, Any]) -> BranchTree:
        """The tree that trial parameters (:mod:`automtl.encoding`) give in this space."""
        return tree_from_params(params, self.tasks, self.n_blocks, self.max_groups)

    def params_for(
        self,
        tree: BranchTree,
        balancer: str,
        balancer_params: Mapping[str, Any] | None = None,
        train: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The trial parameters that make :meth:`sample` return this design (for
        ``study.enqueue_trial``). Hyperparameters not given take :func:`default_value` (a
        balancer's own default where the space allows it).

        Raises:
            ValueError: The tree is not expressible in this space, or the balancer is not in it.
        """
        tree_params = trial_params_for_tree(tree, self.max_groups, self.group_points, self.task_points)
        if tree_params is None:
            raise ValueError(f"tree [{tree.compact()}] is not expressible in this search space")
        if balancer not in self.balancers:
            raise ValueError(f"balancer '{balancer}' is not in this search space ({sorted(self.balancers)})")
        params: dict[str, Any] = dict(tree_params)
        params["balancer"] = balancer
        given_hp = dict(balancer_params or {})
        cls = BALANCERS.get(balancer)
        for hp_name, spec in self.balancers[balancer].items():
            if spec.kind != "fixed":
                params[f"balancer.{balancer}.{hp_name}"] = given_hp.get(hp_name, _hparam_default(spec, cls.hyperparameters[hp_name]))
        given_train = dict(train or {})
        for key, spec in self.train.items():
            if spec.kind != "fixed":
                params[f"train.{key}"] = given_train.get(key, default_value(spec))
        return params

    def balancers_of(self, family: str) -> list[str]:
        """The space's balancers of ``family`` (``loss_weighting`` or ``gradient_aggregation``), in order."""
        return [n for n in self.balancers if BALANCERS.get(n).family == family]

    def family_default(self, family: str) -> str | None:
        """:data:`FAMILY_DEFAULTS` of ``family`` if the space offers it, else its first such
        balancer, else ``None``."""
        names = self.balancers_of(family)
        if not names:
            return None
        return FAMILY_DEFAULTS[family] if FAMILY_DEFAULTS[family] in names else names[0]

    def obvious_designs(self) -> list[ObviousDesign]:
        """Hard parameter sharing with each balancer family's default, then single-task
        networks (with the loss-weighting default, else the first balancer); training settings
        at :func:`default_value`. Every search trains these before it samples."""
        hps = BranchTree.hard_sharing(self.tasks, self.n_blocks)
        out = []
        for family in ("loss_weighting", "gradient_aggregation"):
            name = self.family_default(family)
            if name is not None:
                out.append(ObviousDesign(f"hard sharing + {name}", self.params_for(hps, name)))
        lone = self.family_default("loss_weighting") or next(iter(self.balancers))
        single = BranchTree.single_task(self.tasks, self.n_blocks)
        out.append(ObviousDesign(f"single-task networks + {lone}", self.params_for(single, lone)))
        return out

    def describe(self) -> dict[str, Any]:
        """The space as plain data (for ``show`` and the docs)."""
        return {
            "tasks": self.tasks,
            "n_blocks": self.n_blocks,
            "max_groups": self.max_groups,
            "group_split_points": list(self.group_points),
            "task_split_points": list(self.task_points),
            "added_points": {k: v for k, v in self.added_points.items() if v},
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
