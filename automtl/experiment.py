"""A configuration made concrete: the data set (with task overrides) and the backbone."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from automtl.backbones import Backbone, create_backbone
from automtl.config import SearchConfig
from automtl.data import MultiTaskData, load_dataset
from automtl.errors import ConfigError, RegistryError
from automtl.losses import LOSSES
from automtl.metrics import METRICS

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
            backbone name is unknown or its options are wrong (the key is named).
        DataError: The data are absent or malformed.
    """
    try:
        data = load_dataset(config.data, config.data_options)
    except RegistryError as exc:
        raise ConfigError("data.name", str(exc)) from exc
    except TypeError as exc:
        raise ConfigError("data.options", str(exc)) from exc
    names = data.task_names
    tasks = []
    for task in data.tasks:
        ov = config.task_overrides.get(task.name, {})
        for kind, registry in (("loss", LOSSES), ("metric", METRICS)):
            if kind in ov and ov[kind] not in registry:
                try:
                    registry.get(ov[kind])
                except RegistryError as exc:
                    raise ConfigError(f"tasks.{task.name}.{kind}", str(exc)) from exc
        tasks.append(dataclasses.replace(task, **ov) if ov else task)
    unknown = sorted(set(config.task_overrides) - set(names))
    if unknown:
        raise ConfigError(f"tasks.{unknown[0]}", f"no such task in data set '{data.name}'; tasks are {names}")
    data.tasks = tasks
    try:
        backbone = create_backbone(config.backbone, data.input_shape, **config.backbone_options)
    except RegistryError as exc:
        raise ConfigError("backbone.name", str(exc)) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError("backbone.options", str(exc)) from exc
    return Experiment(config, data, backbone)
