"""YAML search configurations to validated, typed objects.

Every error is a :class:`~automtl.errors.ConfigError` naming the offending key by its dotted
path (``train.lr.low``). This module knows nothing of torch or optuna.

A value that the search may vary is written in one of three forms (:class:`ParamSpec`):

* a scalar: fixed (``epochs: 3``);
* a list: a categorical choice (``batch_size: [64, 128]``);
* a mapping ``{low, high, log}``: a range (``lr: {low: 1.0e-4, high: 1.0e-2, log: true}``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from automtl.errors import ConfigError

__all__ = [
    "BUDGET_NAMES",
    "COST_NAMES",
    "DEFAULT_STORAGE",
    "OBJECTIVE_NAMES",
    "ParamSpec",
    "SearchConfig",
    "SpaceConfig",
    "load_config",
    "parse_config",
]

DEFAULT_STORAGE = "sqlite:///runs/automtl.db"


@dataclass(frozen=True)
class ParamSpec:
    """A fixed value, a categorical choice or a numeric range.

    Attributes:
        kind: ``fixed``, ``choice`` or ``range``.
        value: The fixed value (``fixed``).
        choices: The options (``choice``).
        low, high: Inclusive bounds (``range``); an int range when both are ints.
        log: Log-scale range.
    """

    kind: str
    value: Any = None
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def to_yaml_value(self) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "choice":
            return list(self.choices)
        return {"low": self.low, "high": self.high, "log": self.log}


def _non_finite(value: Any) -> bool:
    """A float that is NaN or infinite (YAML ``.nan``, ``.inf``)."""
    return isinstance(value, float) and not math.isfinite(value)


def parse_param(value: Any, key: str, *, positive: bool = False, mapping_value: bool = False) -> ParamSpec:
    """Parse the fixed / choice / range forms above.

    Args:
        value: The YAML value.
        key: Its dotted path, for errors.
        positive: Every number must be > 0.
        mapping_value: A mapping with neither ``low`` nor ``high`` is a fixed value (e.g. the
            per-task weights of the ``fixed`` balancer) rather than a malformed range.

    Raises:
        ConfigError: Malformed form, empty choice, ``low > high``, a NaN or infinite number, a
            non-positive bound on a log scale or where ``positive`` is asked.
    """
    if _non_finite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    if isinstance(value, Mapping) and mapping_value and not {"low", "high"} & set(value):
        return ParamSpec("fixed", value=dict(value))
    if isinstance(value, Mapping):
        unknown = set(value) - {"low", "high", "log"}
        if unknown:
            raise ConfigError(f"{key}.{min(unknown)}", "unknown key; a range takes low, high, log")
        for bound in ("low", "high"):
            if bound not in value:
                raise ConfigError(f"{key}.{bound}", "missing; a range needs low and high")
            if isinstance(value[bound], bool) or not isinstance(value[bound], (int, float)) or _non_finite(value[bound]):
                raise ConfigError(f"{key}.{bound}", f"must be a finite number, got {value[bound]!r}")
        low, high, log = value["low"], value["high"], value.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{key}.log", f"must be true or false, got {log!r}")
        if low > high:
            raise ConfigError(key, f"low ({low}) is greater than high ({high})")
        if (log or positive) and low <= 0:
            raise ConfigError(f"{key}.low", f"must be > 0{' on a log scale' if log else ''}, got {low}")
        return ParamSpec("range", low=low, high=high, log=log)
    if isinstance(value, list):
        if not value:
            raise ConfigError(key, "an empty list offers no choice")
        bad = [v for v in value if _non_finite(v)]
        if bad:
            raise ConfigError(key, f"every choice must be finite, got {bad[0]!r} in {value}")
        if positive and any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in value):
            raise ConfigError(key, f"every choice must be a positive number, got {value}")
        return ParamSpec("choice", choices=tuple(value))
    if positive and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise ConfigError(key, f"must be a positive number, a list of them or a range, got {value!r}")
    return ParamSpec("fixed", value=value)


@dataclass(frozen=True)
class SpaceConfig:
    """The architecture and balancing part of the search space.

    Attributes:
        max_groups: At most this many task groups leave the shared trunk.
        group_split_points: Branching points at which a group may leave the trunk
            (``n_blocks`` means never); ``None``: every point.
        task_split_points: Branching points at which a task may leave its group; ``None``: every.
        balancers: Balancer name -> hyperparameter overrides (each a :class:`ParamSpec`; a
            mapping without ``low``/``high``, such as ``fixed``'s per-task ``weights``, is a
            fixed value).
    """

    max_groups: int = 3
    group_split_points: tuple[int, ...] | None = None
    task_split_points: tuple[int, ...] | None = None
    balancers: dict[str, dict[str, ParamSpec]] = field(default_factory=lambda: {"equal": {}})


@dataclass(frozen=True)
class SearchConfig:
    """A whole search configuration.

    Attributes:
        name: Study name by default.
        data: Registered data-set name (or ``module:function``).
        data_options: Keyword options of the data-set factory.
        task_overrides: Per task, ``loss`` and/or ``metric`` names replacing the defaults.
        backbone: Registered backbone name (or ``module:function``).
        backbone_options: Keyword options of the backbone factory.
        space: Tree and balancer search space.
        train: Training hyperparameters as :class:`ParamSpec` (epochs, batch_size, lr,
            weight_decay, optimizer).
        n_trials: Total finished trials the search aims for (resumption counts earlier ones).
        timeout: Seconds after which no new trial starts; ``None``: no limit.
        sampler: ``tpe`` or ``random``.
        pruner: ``auto`` (the median rule only at epochs where early and final ranks agree,
            :class:`automtl.pruning.RankAgreementPruner`), ``median`` (Optuna's median rule
            after the first epoch) or ``none``.
        seed: Seeds the sampler and every run's training (:mod:`automtl.seeds`).
        confirm_top_k: The confirmation stage retrains this many of the best screened designs
            (``search.confirm.top_k``), plus the best obvious hard-sharing design.
        confirm_seeds: With this many fresh seeds each (``search.confirm.seeds``); 0 turns the
            stage off (``search.confirm: false``, ``--no-confirm``).
        artifacts: Folder of the weights (``search.artifacts``); default beside a SQLite or
            journal file, required for a server storage (:func:`automtl.study.artifact_dir`).
        threads: Torch intra-op threads of each worker (``train.threads``); ``None``: the
            cores divided by the workers.
        strategy: ``full`` (each screening trial trains its own network) or ``supernet``
            (screening trials are scored with the weights of one weight-sharing supernet,
            :mod:`automtl.supernet`; the confirmation stage trains the best ones for real).
        supernet_budget: Training-run equivalents the supernet trains for (``search.supernet.budget``).
        objective: The quality objective (maximized), from ``search.objective``:
            ``delta_m`` (the default: Δm in percent against cached single-task baselines,
            :func:`automtl.metrics.delta_m`; the baselines are trained once, before the first
            trial, on train, scored on val), ``mean_score``
            (:func:`automtl.metrics.aggregate_score`), ``weighted`` (written
            ``{weighted: {task: weight}}``: the weighted mean of the direction-adjusted metrics,
            weights in ``objective_weights``) or ``per_task`` (each task's direction-adjusted
            metric is an objective of its own: a multi-objective search).
        objective_weights: Task name -> weight (>= 0) of the ``weighted`` objective.
        cost: Cost objectives minimized alongside the quality objective (``search.cost``; names
            in :data:`automtl.cost.COSTS`: ``n_params``, ``flops``, ``latency_ms``). Non-empty, or
            ``objective: per_task``, makes the study multi-objective (no pruning; see
            :mod:`automtl.search`).
        constraints: Hard budgets (``search.constraints``): ``max_params``, ``max_flops``,
            ``max_latency_ms`` -> limit. A candidate over a budget is measured before training
            and ends pruned, untrained; Optuna's trial constraints tell the sampler.
        storage: Optuna storage URL; default ``sqlite:///runs/automtl.db``.
        study_name: Default: ``name``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        source: The path the config was read from, if any. A relative ``data.options.path``
            is taken relative to it (and stored resolved in ``raw``).
        raw: The mapping it was parsed from (stored with the study and in exports).
        trust_code: Whether the ``module:function`` import paths this config names (data set,
            backbone, losses, metrics, balancers) may be imported, which runs their code (see
            :mod:`automtl.registry`). Not part of the search: it takes no part in comparisons
            and is not stored with the study.
    """

    name: str
    data: str
    data_options: dict[str, Any]
    task_overrides: dict[str, dict[str, str]]
    backbone: str
    backbone_options: dict[str, Any]
    space: SpaceConfig
    train: dict[str, ParamSpec]
    n_trials: int = 20
    timeout: float | None = None
    sampler: str = "tpe"
    pruner: str = "auto"
    seed: int = 0
    confirm_top_k: int = 3
    confirm_seeds: int = 3
    artifacts: str | None = None
    threads: int | None = None
    strategy: str = "full"
    supernet_budget: float = 2.0
    objective: str = "delta_m"
    objective_weights: dict[str, float] = field(default_factory=dict)
    cost: tuple[str, ...] = ()
    constraints: dict[str, float] = field(default_factory=dict)
    storage: str = DEFAULT_STORAGE
    study_name: str = ""
    device: str = "auto"
    source: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    trust_code: bool = field(default=False, compare=False)


_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")
_TOP_KEYS = {"name", "data", "tasks", "backbone", "space", "train", "search", "device"}
_TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 5,
    "batch_size": 128,
    "lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
    "weight_decay": 1.0e-4,
    "optimizer": "adamw",
}


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a mapping, got {type(value).__name__}")
    return dict(value)


def _reject_unknown(d: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    for k in d:
        if k not in allowed:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(where, f"unknown key; expected one of {sorted(allowed)}")


def _named(value: Any, key: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``{name: ..., options: {...}}``."""
    if isinstance(value, str):
        return value, {}
    d = _mapping(value, key)
    _reject_unknown(d, {"name", "options"}, key)
    if not isinstance(d.get("name"), str) or not d["name"]:
        raise ConfigError(f"{key}.name", "missing or not a string")
    return d["name"], _mapping(d.get("options"), f"{key}.options")


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _points(value: Any, key: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "must be a non-empty list of branching points")
    return tuple(_int(v, f"{key}[{i}]", 0) for i, v in enumerate(value))


def _parse_space(d: dict[str, Any]) -> SpaceConfig:
    _reject_unknown(d, {"max_groups", "group_split_points", "task_split_points", "balancers"}, "space")
    raw_bal = d.get("balancers", ["equal"])
    balancers: dict[str, dict[str, ParamSpec]] = {}
    if isinstance(raw_bal, str):
        raw_bal = [raw_bal]
    if isinstance(raw_bal, list):
        if not raw_bal:
            raise ConfigError("space.balancers", "needs at least one balancer")
        for i, name in enumerate(raw_bal):
            if not isinstance(name, str):
                raise ConfigError(f"space.balancers[{i}]", f"must be a balancer name, got {name!r}")
            balancers[name] = {}
    elif isinstance(raw_bal, Mapping):
        if not raw_bal:
            raise ConfigError("space.balancers", "needs at least one balancer")
        for name, hp in raw_bal.items():
            hp = _mapping(hp, f"space.balancers.{name}")
            balancers[str(name)] = {
                k: parse_param(v, f"space.balancers.{name}.{k}", mapping_value=True) for k, v in hp.items()
            }
    else:
        raise ConfigError("space.balancers", "must be a list of names or a mapping name -> hyperparameters")
    return SpaceConfig(
        max_groups=_int(d.get("max_groups", 3), "space.max_groups", 1),
        group_split_points=_points(d.get("group_split_points"), "space.group_split_points"),
        task_split_points=_points(d.get("task_split_points"), "space.task_split_points"),
        balancers=balancers,
    )


def _parse_confirm(value: Any) -> tuple[int, int]:
    """``search.confirm``: ``false``, ``true`` or ``{top_k: 3, seeds: 3}`` -> (top_k, seeds)."""
    if value is None or value is True:
        return 3, 3
    if value is False:
        return 3, 0
    d = _mapping(value, "search.confirm")
    _reject_unknown(d, {"top_k", "seeds"}, "search.confirm")
    return _int(d.get("top_k", 3), "search.confirm.top_k", 1), _int(d.get("seeds", 3), "search.confirm.seeds", 1)


def _parse_train(d: dict[str, Any]) -> dict[str, ParamSpec]:
    d = {k: v for k, v in d.items() if k != "threads"}
    _reject_unknown(d, set(_TRAIN_DEFAULTS), "train")
    merged = {**_TRAIN_DEFAULTS, **d}
    spec = {
        "epochs": ParamSpec("fixed", value=_int(merged["epochs"], "train.epochs", 1)),
        "batch_size": parse_param(merged["batch_size"], "train.batch_size", positive=True),
        "lr": parse_param(merged["lr"], "train.lr", positive=True),
        "weight_decay": parse_param(merged["weight_decay"], "train.weight_decay"),
        "optimizer": parse_param(merged["optimizer"], "train.optimizer"),
    }
    for key, p in spec.items():
        if key == "batch_size" and p.kind == "range" and not p.is_int:
            raise ConfigError("train.batch_size", "a range of batch sizes needs integer bounds")
        if key == "batch_size" and p.kind != "range":
            vals = [p.value] if p.kind == "fixed" else list(p.choices)
            if any(isinstance(v, bool) or not isinstance(v, int) for v in vals):
                raise ConfigError("train.batch_size", f"must be a positive integer (or a list of them), got {merged[key]!r}")
        if key == "weight_decay":
            vals = [p.value] if p.kind == "fixed" else list(p.choices) if p.kind == "choice" else [p.low]
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in vals):
                raise ConfigError("train.weight_decay", f"must be a number >= 0 (or choices/range of them), got {merged[key]!r}")
    return spec


OBJECTIVE_NAMES = ("delta_m", "mean_score", "per_task", "weighted")
COST_NAMES = ("n_params", "flops", "latency_ms")  # automtl.cost.COSTS (this module imports no torch)
BUDGET_NAMES = ("max_params", "max_flops", "max_latency_ms")


def _parse_objective(value: Any) -> tuple[str, dict[str, float]]:
    """``delta_m`` | ``mean_score`` | ``per_task`` | ``{weighted: {task: weight}}``."""
    if isinstance(value, Mapping):
        _reject_unknown(value, {"weighted"}, "search.objective")
        weights = _mapping(value.get("weighted"), "search.objective.weighted")
        if not weights:
            raise ConfigError("search.objective.weighted", "needs at least one task: weight")
        for task, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or _non_finite(w) or w < 0:
                raise ConfigError(f"search.objective.weighted.{task}", f"must be a finite number >= 0, got {w!r}")
        if not any(w > 0 for w in weights.values()):
            raise ConfigError("search.objective.weighted", "at least one weight must be > 0")
        return "weighted", {str(t): float(w) for t, w in weights.items()}
    if value not in ("delta_m", "mean_score", "per_task"):
        raise ConfigError(
            "search.objective",
            f"must be delta_m, mean_score, per_task or {{weighted: {{task: weight}}}}, got {value!r}",
        )
    return str(value), {}


def _parse_cost(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError("search.cost", f"must be a list of {list(COST_NAMES)}, got {value!r}")
    for i, name in enumerate(value):
        if name not in COST_NAMES:
            raise ConfigError(f"search.cost[{i}]", f"unknown cost {name!r}; expected one of {list(COST_NAMES)}")
    if len(set(value)) != len(value):
        raise ConfigError("search.cost", f"names a cost twice: {value}")
    return tuple(value)


def _parse_constraints(value: Any) -> dict[str, float]:
    d = _mapping(value, "search.constraints")
    _reject_unknown(d, set(BUDGET_NAMES), "search.constraints")
    for key, limit in d.items():
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or _non_finite(limit) or limit <= 0:
            raise ConfigError(f"search.constraints.{key}", f"must be a positive finite number, got {limit!r}")
    return {k: float(v) for k, v in d.items()}


def parse_config(raw: Mapping[str, Any], source: str | None = None, *, trust_code: bool = False) -> SearchConfig:
    """Validate a configuration mapping.

    Args:
        raw: The parsed YAML.
        source: Where it came from (its stem is the default ``name``).
        trust_code: Allow the ``module:function`` paths it names to be imported (runs code);
            see :attr:`SearchConfig.trust_code`.

    Raises:
        ConfigError: Naming the first offending key.
    """
    top = _mapping(raw, "(top level)")
    _reject_unknown(top, _TOP_KEYS, "")
    name = top.get("name") or (Path(source).stem if source else None)
    if not isinstance(name, str) or not name:
        raise ConfigError("name", "missing (and no file name to default to)")
    if "data" not in top:
        raise ConfigError("data", "missing; name a data set, e.g. data: {name: fashion_scenes}")
    data, data_options = _named(top["data"], "data")
    data_path = data_options.get("path")
    if source and isinstance(data_path, str) and not os.path.isabs(data_path):
        # a relative data path is relative to the config file, so a search runs from any folder
        data_options["path"] = str((Path(source).parent / data_path).resolve())
        top["data"] = {"name": data, "options": dict(data_options)}
    backbone, backbone_options = _named(top.get("backbone", "mlp"), "backbone")
    tasks = _mapping(top.get("tasks"), "tasks")
    overrides: dict[str, dict[str, str]] = {}
    for task, ov in tasks.items():
        ov = _mapping(ov, f"tasks.{task}")
        _reject_unknown(ov, {"loss", "metric"}, f"tasks.{task}")
        for k, v in ov.items():
            if not isinstance(v, str):
                raise ConfigError(f"tasks.{task}.{k}", f"must be a registered name, got {v!r}")
        overrides[str(task)] = ov
    search = _mapping(top.get("search"), "search")
    _reject_unknown(
        search,
        {
            "n_trials",
            "timeout",
            "sampler",
            "pruner",
            "seed",
            "objective",
            "cost",
            "constraints",
            "storage",
            "study_name",
            "confirm",
            "artifacts",
            "strategy",
            "supernet",
        },
        "search",
    )
    timeout = search.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or _non_finite(timeout) or timeout <= 0
    ):
        raise ConfigError("search.timeout", f"must be a positive number of seconds or null, got {timeout!r}")
    sampler = search.get("sampler", "tpe")
    if sampler not in ("tpe", "random"):
        raise ConfigError("search.sampler", f"must be 'tpe' or 'random', got {sampler!r}")
    pruner = search.get("pruner", "auto")
    if pruner not in ("auto", "median", "none"):
        raise ConfigError("search.pruner", f"must be 'auto', 'median' or 'none', got {pruner!r}")
    top_k, confirm_seeds = _parse_confirm(search.get("confirm"))
    strategy = search.get("strategy", "full")
    if strategy not in ("full", "supernet"):
        raise ConfigError("search.strategy", f"must be 'full' or 'supernet', got {strategy!r}")
    supernet = _mapping(search.get("supernet"), "search.supernet")
    _reject_unknown(supernet, {"budget"}, "search.supernet")
    budget = supernet.get("budget", 2.0)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (0 < budget < float("inf")):
        raise ConfigError("search.supernet.budget", f"must be a positive number of training-run equivalents, got {budget!r}")
    train_raw = _mapping(top.get("train"), "train")
    threads = train_raw.get("threads")
    if threads is not None:
        threads = _int(threads, "train.threads", 1)
    objective, weights = _parse_objective(search.get("objective", "delta_m"))
    cost = _parse_cost(search.get("cost"))
    constraints = _parse_constraints(search.get("constraints"))
    for key in ("storage", "study_name", "artifacts"):
        if search.get(key) is not None and (not isinstance(search[key], str) or not search[key].strip()):
            raise ConfigError(f"search.{key}", f"must be a non-empty string (or left out), got {search[key]!r}")
    device = top.get("device", "auto")
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ConfigError("device", f"must be auto, cpu, mps, cuda or cuda:N (also xpu, xpu:N), got {device!r}")
    seed = search.get("seed", 0)
    return SearchConfig(
        name=name,
        data=data,
        data_options=data_options,
        task_overrides=overrides,
        backbone=backbone,
        backbone_options=backbone_options,
        space=_parse_space(_mapping(top.get("space"), "space")),
        train=_parse_train(train_raw),
        n_trials=_int(search.get("n_trials", 20), "search.n_trials", 1),
        timeout=float(timeout) if timeout is not None else None,
        sampler=sampler,
        pruner=pruner,
        seed=_int(seed, "search.seed", 0),
        confirm_top_k=top_k,
        confirm_seeds=confirm_seeds,
        artifacts=search.get("artifacts"),
        threads=threads,
        strategy=strategy,
        supernet_budget=float(budget),
        objective=objective,
        objective_weights=weights,
        cost=cost,
        constraints=constraints,
        storage=search.get("storage") or DEFAULT_STORAGE,
        study_name=search.get("study_name") or name,
        device=device,
        source=source,
        raw=dict(top),
        trust_code=bool(trust_code),
    )


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one line: the problem and where (1-based)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" + (f" ({context})" if context else "")


def load_config(path: str | os.PathLike[str], *, trust_code: bool = False) -> SearchConfig:
    """Read and validate a YAML search configuration.

    Args:
        path: The YAML file.
        trust_code: Allow the ``module:function`` paths it names to be imported, which runs
            their code; see :attr:`SearchConfig.trust_code`.

    Raises:
        FileNotFoundError: No such file.
        ConfigError: Invalid YAML or an invalid key (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} {'is a directory' if path.is_dir() else 'does not exist'}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError("(file)", f"{path} is not valid YAML: {_yaml_problem(exc)}") from exc
    if raw is None:
        raise ConfigError("(file)", f"{path} is empty")
    return parse_config(raw, str(path), trust_code=trust_code)
