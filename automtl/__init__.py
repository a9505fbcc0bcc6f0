"""automtl: search branched multi-task networks (branching points, task grouping, loss
balancing) jointly with Optuna, then export and reload the best.

Python twins of the CLI::

    import automtl
    config = automtl.load_config("search_spaces/quickstart.yaml")
    study = automtl.run_search(config)                    # automtl search
    automtl.export_trial(study, config.storage, "out")    # automtl export
    net = automtl.load("out")                             # {task: output} = net(x)
    automtl.evaluate_bundle("out", "test")                # automtl evaluate
    automtl.predict("out", "rows.csv").table()            # automtl predict out rows.csv --out p.csv

Loading runs no code: a ``module:function`` name in a bundle or a config is imported only with
``trust_code=True`` (see :mod:`automtl.registry`).
"""

from __future__ import annotations

from automtl.backbones import BACKBONES, Backbone, create_backbone
from automtl.balance import BALANCERS, Balancer, create_balancer
from automtl.build import BranchedNet, build_model
from automtl.bundle import FORMAT_VERSION, load
from automtl.config import SearchConfig, load_config, parse_config
from automtl.data import DATASETS, MultiTaskData, Preprocess, load_dataset
from automtl.errors import (
    AutoMTLError,
    BaselineError,
    BundleError,
    ConfigError,
    DataError,
    DivergenceError,
    NonFiniteLossError,
    ParityError,
    RegistryError,
    StorageError,
    UntrustedCodeError,
)
from automtl.export import evaluate_bundle, export_trial
from automtl.inference import Predictions, predict
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
    "FORMAT_VERSION",
    "AutoMTLError",
    "Backbone",
    "Balancer",
    "BaselineError",
    "BranchTree",
    "BranchedNet",
    "BundleError",
    "Candidate",
    "ConfigError",
    "DataError",
    "DivergenceError",
    "MultiTaskData",
    "NonFiniteLossError",
    "ParityError",
    "Predictions",
    "Preprocess",
    "RegistryError",
    "SearchConfig",
    "SearchSpace",
    "StorageError",
    "TaskSpec",
    "TrainConfig",
    "UntrustedCodeError",
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
    "predict",
    "run_search",
]
