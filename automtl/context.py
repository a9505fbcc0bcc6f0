"""What every stage of one worker's search shares (:mod:`automtl.search`, :mod:`automtl.stages`,
:mod:`automtl.screening`): the configuration, the data and backbone, the space, the objectives, the
study and its job queue, the artifact store."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore

from automtl.baselines import (
    BaselineChoice,
)
from automtl.config import SearchConfig
from automtl.experiment import Experiment
from automtl.jobs import JobQueue
from automtl.metrics import aggregate_score, delta_m
from automtl.objectives import ObjectiveSpec, weighted_score
from automtl.space import SearchSpace

__all__ = ["POLL_SECONDS", "QUALITY_UNIT", "SETUP_WAIT", "SearchContext", "wait_until"]

#: Seconds between two looks at the storage while other workers finish their runs.
POLL_SECONDS = 1.0
#: How a difference of each quality objective is written in the verdict.
QUALITY_UNIT = {"delta_m": "Δm", "mean_score": "mean score", "per_task": "mean score", "weighted": "weighted score"}


@dataclass
class SearchContext:
    """What every stage of one worker's search needs."""

    config: SearchConfig
    experiment: Experiment
    space: SearchSpace
    spec: ObjectiveSpec
    device: str
    study: optuna.Study
    jobs: JobQueue
    store: FileSystemArtifactStore
    say: Callable[[str], None]
    baselines: BaselineChoice | None = None
    proxy: Any = None  # automtl.stages.Proxy with the supernet strategy
    store_dir: str = ""
    target: int = 0
    last: list[int] = field(default_factory=list)  # numbers of the trials this worker ran

    @property
    def tasks(self) -> list[str]:
        return self.experiment.data.task_names

    def quality(self, metrics: Mapping[str, float], reference: Mapping[str, float]) -> float:
        """The confirmed scalar objective of one run's validation metrics."""
        tasks = self.experiment.data.tasks
        if self.spec.quality == "delta_m":
            return delta_m(metrics, reference, tasks)
        if self.spec.quality == "weighted":
            return weighted_score(metrics, tasks, self.spec.weights)
        return aggregate_score(metrics, tasks)


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll ``condition`` until it holds (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS / 2)
    return True


#: Seconds a worker waits for the one that sets a new study up, before doing it itself.
SETUP_WAIT = 60.0
