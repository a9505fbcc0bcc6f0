"""A configuration made concrete: the data set (with task overrides) and the backbone.

:func:`prepare` is where a configuration's names become code: the data set, the backbone,
every task's loss and metric and the ``module:function`` balancers. An import path among them
is imported only if the config carries ``trust_code`` (see :mod:`automtl.registry`); once
imported here it is remembered, so the training steps that look these names up later need no
trust of their own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from automtl.backbones import Backbone, create_backbone
from automtl.balance import BALANCERS
from automtl.config import SearchConfig
from automtl.data import MultiTaskData, load_dataset
from automtl.errors import ConfigError, RegistryError
from automtl.losses import LOSSES
from automtl.metrics import METRICS
from automtl.registry import is_import_path

__all__ = ["Experiment", "prepare"]


@dataclass
class Experiment:
    """What every trial of a search shares."""

    config: SearchConfig
    data: MultiTaskData
    backbone: Backbone


def prepare(config: SearchConfig) -> Experiment:
    """Load the data set, apply the per-task loss/metric overrides, create the backbone.

    Raises:
        ConfigError: An override names an unknown task, loss or metric, or the data set or
            backbone name is unknown or its options are wrong, or a name is a
            ``module:function`` import path and ``config.trust_code`` is false (the key is named).
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
        ov: dict[str, Any] = config.task_overrides.get(task.name, {})
        task = dataclasses.replace(task, **ov) if ov else task
        for kind, registry in (("loss", LOSSES), ("metric", METRICS)):
            if kind not in ov:  # the data set's own choice (e.g. a CSV target's ``loss`` option)
                try:
                    registry.get(getattr(task, kind), trust_code=trust)
                except RegistryError as exc:
                    raise ConfigError("data.options", f"task '{task.name}': {exc}") from exc
        tasks.append(task)
    data.tasks = tasks
    try:
        backbone = create_backbone(config.backbone, data.input_shape, trust_code=trust, **config.backbone_options)
    except RegistryError as exc:
        raise ConfigError("backbone.name", str(exc)) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError("backbone.options", str(exc)) from exc
    return Experiment(config, data, backbone)
