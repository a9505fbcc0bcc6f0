"""Shared fixtures: a tiny synthetic multi-task data set and tiny search configurations.

The data set is reached through the ``tests.helpers:tiny_data`` import path (no registry entry,
so the data-set conformance suite does not see it); every storage lives under ``tmp_path``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from automtl.backbones import Backbone, create_backbone
from automtl.config import SearchConfig, parse_config
from automtl.data import MultiTaskData
from tests import helpers
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
        return parse_config(raw)

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
    config = parse_config(set_key(raw, "search.confirm", {"top_k": 2, "seeds": 2}))
    return config, run_search(config, progress=False)


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
