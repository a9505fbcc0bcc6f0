"""automtl: search branched multi-task networks (branching points, task grouping, loss
balancing) jointly with Optuna, then export and reload the best.

Python twins of the CLI::

    import automtl
    config = automtl.load_config("search_spaces/quickstart.yaml")
    study = automtl.run_search(config)                    # automtl search
    automtl.export_trial(study, config.storage, "out")    # automtl export
    net = automtl.load("out")                             # {task: output} = net(x)
    automtl.evaluate_bundle("out", "test")                # automtl evaluate
"""

from __future__ import annotations

from automtl.backbones import BACKBONES, Backbone, create_backbone
from automtl.balance import BALANCERS, Balancer, create_balancer
from automtl.build import BranchedNet, build_model
from automtl.config import SearchConfig, load_config, parse_config
from automtl.data import DATASETS, MultiTaskData, load_dataset
from automtl.errors import (
    AutoMTLError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    RegistryError,
)
from automtl.export import evaluate_bundle, export_trial, load
from automtl.search import run_search
from automtl.space import Candidate, SearchSpace
from automtl.study import load_study
from automtl.tasks import TaskSpec
from automtl.train import TrainConfig, evaluate, fit
from automtl.tree import BranchTree

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "BALANCERS",
    "DATASETS",
    "AutoMTLError",
    "Backbone",
    "Balancer",
    "BranchTree",
    "BranchedNet",
    "Candidate",
    "ConfigError",
    "DataError",
    "MultiTaskData",
    "NonFiniteLossError",
    "RegistryError",
    "SearchConfig",
    "SearchSpace",
    "TaskSpec",
    "TrainConfig",
    "build_model",
    "create_backbone",
    "create_balancer",
    "evaluate",
    "evaluate_bundle",
    "export_trial",
    "fit",
    "load",
    "load_config",
    "load_dataset",
    "load_study",
    "parse_config",
    "run_search",
]
