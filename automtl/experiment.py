"""A configuration made concrete: the data set (with task overrides) and the backbone.

:func:`prepare` is where a configuration's names become code: the data set, the backbone,
every task's loss and metric and the ``module:function`` balancers. An import path among them
is imported only if the config carries ``trust_code`` (see :mod:`automtl.registry`); once
imported here it is remembered, so the training steps that look these names up later need no
trust of their own.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from automtl.backbones import BACKBONES, Backbone
from automtl.balance import BALANCERS
from automtl.config import SearchConfig, SpaceConfig
from automtl.data import MultiTaskData, load_dataset
from automtl.errors import ConfigError, RegistryError
from automtl.losses import LOSSES
from automtl.metrics import METRICS, Metric
from automtl.registry import is_import_path
from automtl.tasks import TaskSpec

__all__ = ["Experiment", "prepare"]

_BACKBONE_CALL = "fn(input_shape, **options) -> Backbone"
_LOSS_CALL = "fn(output, target) -> per-sample loss tensor [n]"
_METRIC_CALL = "Metric(fn, direction, unit) with fn(output, target, task) -> float"


@dataclass
class Experiment:
    """What every trial of a search shares."""

    config: SearchConfig
    data: MultiTaskData
    backbone: Backbone


def prepare(config: SearchConfig, *, check_space: bool = True) -> Experiment:
    """Load the data set, apply the per-task loss/metric overrides, create the backbone.

    Every user function named by ``module:function`` is checked here, before any training: a
    backbone factory must take ``fn(input_shape, **options)`` and return a
    :class:`~automtl.backbones.Backbone`; a loss must take ``fn(output, target)``; a metric must
    be a :class:`~automtl.metrics.Metric` whose ``fn`` takes ``(output, target, task)``. The
    signatures are read with :func:`inspect.signature` (user functions are not called, so none
    of their side effects happen twice).

    Args:
        config: The search configuration.
        check_space: Also check the values that only matter for training and the search:
            ``space.max_groups`` (when written) at most the number of tasks, and every
            ``train.batch_size`` at most the number of training rows. ``False`` is for loading
            what was trained before (a bundle, a study) under a configuration that passed the
            checks of its time.

    Returns:
        The data set (with the task overrides applied) and the backbone.

    Raises:
        ConfigError: An override names an unknown task, loss or metric, a loss or metric (an
            override or one the data set declares) is unknown or has a signature that does not
            fit, the data set or backbone name is unknown, the backbone factory's signature does
            not fit or its options are wrong, ``space.max_groups`` exceeds the number of tasks,
            ``train.batch_size`` exceeds the training rows, or a name is a ``module:function``
            import path and ``config.trust_code`` is false (the key is named).
        DataError: The data are absent or malformed.
    """
    trust = config.trust_code
    for name in config.space.balancers:
        if is_import_path(name):  # registered names are checked by the search space
            try:
                BALANCERS.get(name, trust_code=trust)
            except RegistryError as exc:
                raise ConfigError(f"space.balancers.{name}", str(exc)) from exc
    for name, named in config.task_overrides.items():
        for kind, registry in (("loss", LOSSES), ("metric", METRICS)):
            if kind in named:
                try:
                    registry.get(named[kind], trust_code=trust)
                except RegistryError as exc:
                    raise ConfigError(f"tasks.{name}.{kind}", str(exc)) from exc
    try:
        data = load_dataset(config.data, config.data_options, trust_code=trust)
    except RegistryError as exc:
        raise ConfigError("data.name", str(exc)) from exc
    except TypeError as exc:
        raise ConfigError("data.options", str(exc)) from exc
    names = data.task_names
    unknown = sorted(set(config.task_overrides) - set(names))
    if unknown:
        raise ConfigError(f"tasks.{unknown[0]}", f"no such task in data set '{data.name}'; tasks are {names}")
    tasks = []
    for task in data.tasks:
        ov = config.task_overrides.get(task.name, {})
        task = dataclasses.replace(task, loss=ov.get("loss", task.loss), metric=ov.get("metric", task.metric))
        for kind in ("loss", "metric"):
            key = f"tasks.{task.name}.{kind}" if kind in ov else _data_key(config, task.name, kind)
            if kind == "loss":
                _check_loss(task, key, trust)
            else:
                _check_metric(task, key, trust)
        tasks.append(task)
    data.tasks = tasks
    if check_space:
        _check_max_groups(config, data)
        _check_batch_size(config, data)
    return Experiment(config, data, _backbone(config, data.input_shape))


def _data_key(config: SearchConfig, task: str, kind: str) -> str:
    """Where a loss or metric that no ``tasks:`` override names came from (the data set's own
    choice, e.g. a csv target's option, or the default of the task's type)."""
    targets = config.data_options.get("targets")
    if isinstance(targets, Mapping) and isinstance(targets.get(task), Mapping) and kind in targets[task]:
        return f"data.options.targets.{task}.{kind}"
    return f"tasks.{task}.{kind}"


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (some builtins): the call will tell
        return None


def _plain(sig: inspect.Signature) -> inspect.Signature:
    """``sig`` without annotations (``fn(input_shape, width=4)``), as an error message shows it."""
    empty = inspect.Parameter.empty
    return sig.replace(parameters=[p.replace(annotation=empty) for p in sig.parameters.values()], return_annotation=empty)


def _shown(name: str, sig: inspect.Signature | None) -> str:
    """A function's name, with its signature when it is a user's ``module:function``."""
    return f"'{name}{_plain(sig)}'" if sig is not None and ":" in name else f"'{name}'"


def _check_loss(task: TaskSpec, key: str, trust: bool) -> None:
    try:
        fn = LOSSES.get(task.loss, trust_code=trust)
    except RegistryError as exc:
        raise ConfigError(key, str(exc)) from exc
    if not callable(fn):
        raise ConfigError(key, f"loss '{task.loss}' is a {type(fn).__name__}, not a function {_LOSS_CALL}")
    sig = _signature(fn)
    if sig is None:
        return
    try:
        sig.bind(torch.zeros(2), torch.zeros(2))
    except TypeError as exc:
        raise ConfigError(
            key, f"the signature of loss function {_shown(task.loss, sig)} does not fit the call {_LOSS_CALL}: {exc}"
        ) from exc


def _check_metric(task: TaskSpec, key: str, trust: bool) -> None:
    try:
        metric = METRICS.get(task.metric, trust_code=trust)
    except RegistryError as exc:
        raise ConfigError(key, str(exc)) from exc
    if not isinstance(metric, Metric):
        what = "function" if callable(metric) else type(metric).__name__
        raise ConfigError(
            key, f"metric '{task.metric}' is a {what}, not an automtl.metrics.Metric; expected {_METRIC_CALL}"
        )
    if metric.direction not in ("maximize", "minimize"):
        raise ConfigError(key, f"metric '{task.metric}' has direction {metric.direction!r}; expected maximize or minimize")
    sig = _signature(metric.fn)
    if sig is None:
        return
    try:
        sig.bind(torch.zeros(2), torch.zeros(2), task)
    except TypeError as exc:
        raise ConfigError(
            key, f"metric '{task.metric}': the signature of its fn{_plain(sig)} does not fit the call {_METRIC_CALL}: {exc}"
        ) from exc


def _written(config: SearchConfig, section: str, key: str, default: Any) -> bool:
    """Whether the user wrote ``section.key`` (a config built in Python has no ``raw``: then any
    value other than the default counts as written)."""
    raw = config.raw.get(section) if config.raw else None
    if isinstance(raw, Mapping):
        return key in raw
    if config.raw:
        return False
    value = getattr(config.space, key) if section == "space" else config.train[key].to_yaml_value()
    return bool(value != default)


def _check_max_groups(config: SearchConfig, data: MultiTaskData) -> None:
    n_tasks, groups = len(data.tasks), config.space.max_groups
    if groups > n_tasks and _written(config, "space", "max_groups", SpaceConfig().max_groups):
        raise ConfigError(
            "space.max_groups",
            f"{groups} groups asked for, but data set '{data.name}' has only {n_tasks} tasks; use at most {n_tasks}",
        )


def _check_batch_size(config: SearchConfig, data: MultiTaskData) -> None:
    spec = config.train.get("batch_size")
    if spec is None:
        return
    values: Sequence[Any] = (
        [spec.value] if spec.kind == "fixed" else list(spec.choices) if spec.kind == "choice" else [spec.high]
    )
    n_train = len(data.train)
    largest = max(int(v) for v in values)
    if largest > n_train:
        default = "" if _written(config, "train", "batch_size", 128) else " (the default)"
        raise ConfigError(
            "train.batch_size",
            f"{spec.to_yaml_value()!r}{default} asks for batches of {largest} samples, but the training split of "
            f"data set '{data.name}' has only {n_train} rows; use at most {n_train}",
        )


def _backbone(config: SearchConfig, input_shape: Sequence[int]) -> Backbone:
    name, options = config.backbone, config.backbone_options
    try:
        factory = BACKBONES.get(name, trust_code=config.trust_code)
    except RegistryError as exc:
        raise ConfigError("backbone.name", str(exc)) from exc
    if not callable(factory):
        raise ConfigError("backbone.name", f"'{name}' is a {type(factory).__name__}, not a function {_BACKBONE_CALL}")
    sig = _signature(factory)
    shape = tuple(input_shape)
    if sig is not None:
        try:
            sig.bind_partial(shape)
        except TypeError as exc:
            raise ConfigError(
                "backbone.name",
                f"the signature of backbone function {_shown(name, sig)} does not fit the call {_BACKBONE_CALL}: {exc}",
            ) from exc
        try:
            sig.bind(shape, **options)
        except TypeError as exc:
            raise ConfigError(
                "backbone.options", f"{exc}; backbone function {_shown(name, sig)} is called as {_BACKBONE_CALL}"
            ) from exc
    try:
        backbone = factory(shape, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError("backbone.options", str(exc)) from exc
    if not isinstance(backbone, Backbone):
        raise ConfigError(
            "backbone.name", f"backbone function '{name}' returned {type(backbone).__name__}, not a Backbone ({_BACKBONE_CALL})"
        )
    return backbone
