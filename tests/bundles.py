"""Small real bundles for the deployment tests: a one-trial search, exported as ``automtl export`` does.

* :func:`csv_example_raw`: ``search_spaces/csv_example.yaml`` (iris), one trial;
* :func:`categorical_raw`: a synthetic table with text, numeric-looking text, boolean and
  numeric columns, missing values, a category seen only in test rows, and missing labels of a
  binary, a multiclass and a regression task (:func:`write_categorical_table`);
* :func:`scenes_raw`: a tiny ``fashion_scenes`` (the quickstart's data set and backbone, small);
* :func:`star_raw`: ``star`` with three of its tasks and a small MLP.

Each search uses ``mean_score``, so no single-task baselines are trained.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from automtl.config import parse_config
from automtl.errors import DataError
from automtl.export import export_trial
from automtl.search import run_search

ROOT = Path(__file__).resolve().parent.parent
CSV_EXAMPLE = ROOT / "search_spaces" / "csv_example.yaml"
IRIS = ROOT / "search_spaces" / "data" / "iris.csv"


def export_small(
    raw: Mapping[str, Any], folder: Path, *, source: str | None = None, formats: str = "safetensors", tasks: Sequence[str] | None = None
) -> Path:
    """Search ``raw`` for one trial (storage in ``folder``), export the best to ``folder/bundle``."""
    config_raw: dict[str, Any] = copy.deepcopy(dict(raw))
    config_raw.setdefault("search", {}).update(
        n_trials=1, objective="mean_score", confirm={"top_k": 1, "seeds": 1}, storage=f"sqlite:///{folder / 'study.db'}"
    )
    config = parse_config(config_raw, source)
    study = run_search(config, progress=False)
    out = folder / "bundle"
    export_trial(study, config.storage, out, formats=formats, tasks=tasks)
    return out


def csv_example_raw() -> dict[str, Any]:
    return yaml.safe_load(CSV_EXAMPLE.read_text())


CATEGORIES = ("red", "green", "blue")


def write_categorical_table(path: Path, n: int = 240, seed: int = 0) -> dict[str, np.ndarray]:
    """A table whose test rows (``split == test``) hold a colour never seen in training ("purple").

    Returns:
        Per split, the 0-based positions of its rows.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    split = np.array(["train"] * n, dtype=object)
    split[rng.permutation(n)[: n // 4]] = "test"
    rest = np.flatnonzero(split == "train")
    split[rest[rng.permutation(len(rest))[: n // 6]]] = "val"
    color = rng.choice(CATEGORIES, size=n).astype(object)
    test_rows = np.flatnonzero(split == "test")
    color[test_rows[::5]] = "purple"
    color[rng.random(n) < 0.1] = None
    size = rng.normal(10.0, 3.0, size=n).round(3)
    size[rng.random(n) < 0.1] = np.nan
    # text, mostly numeric-looking: a chunk of rows without "x7" must still read "01" as "01", not 1
    code = rng.choice(["01", "02", "10", "x7"], size=n, p=[0.3, 0.3, 0.3, 0.1])
    flag = rng.random(n) < 0.5
    signal = size - 10 + np.where(color == "red", 2.0, 0.0) + np.where(code == "10", -1.5, 0.0) + flag
    signal = np.nan_to_num(signal)
    kind = np.where(signal + rng.normal(0, 1, n) > 0, "yes", "no").astype(object)
    level = np.array(["low", "mid", "high"], dtype=object)[np.digitize(signal, [-1.5, 1.5])]
    score = (50 + 5 * signal + rng.normal(0, 1, n)).round(2)
    kind[rng.random(n) < 0.15] = None
    level[rng.random(n) < 0.15] = None
    score[rng.random(n) < 0.15] = np.nan
    frame = pd.DataFrame(
        {"color": color, "size": size, "code": code, "flag": flag, "kind": kind, "level": level, "score": score, "split": split}
    )
    frame.to_csv(path, index=False)
    return {s: np.flatnonzero(split == s) for s in ("train", "val", "test")}


def categorical_raw(path: Path) -> dict[str, Any]:
    return {
        "name": "categorical",
        "data": {
            "name": "csv",
            "options": {
                "path": str(path),
                "split_column": "split",
                "categorical": ["code"],  # codes like "01": numbers in form, labels in meaning (and "x7")
                "targets": {
                    "kind": {"type": "binary", "classes": ["no", "yes"]},
                    "level": {"type": "multiclass", "classes": ["low", "mid", "high"]},
                    "score": {"type": "regression"},
                },
            },
        },
        "tasks": {"score": {"metric": "mae"}},
        "backbone": {"name": "mlp", "options": {"hidden": [16, 16, 8]}},
        "space": {"max_groups": 2, "balancers": ["equal"]},
        "train": {"epochs": 15, "batch_size": 32, "lr": 0.01},
        "search": {"sampler": "random", "pruner": "none", "seed": 0},
        "device": "cpu",
    }


def scenes_raw(folder: Path) -> dict[str, Any]:
    """A tiny quickstart: real Fashion-MNIST when installed, else a synthetic stand-in in ``folder``."""
    from automtl.data._fashion_scenes import find_fashion_mnist

    options: dict[str, Any] = {"n_train": 600, "n_val": 200, "n_test": 200, "missing_label_fraction": 0.2, "seed": 0}
    try:
        find_fashion_mnist()
    except DataError:
        from tests.data.test_fashion_scenes import synthetic_set

        synthetic_set(folder / "fashion-mnist", gz=True, n_train=1000, n_test=200)
        options["path"] = str(folder)
    return {
        "name": "scenes",
        "data": {"name": "fashion_scenes", "options": options},
        "backbone": {"name": "small_cnn", "options": {"channels": [4, 8, 8], "hidden": 16}},
        "space": {"max_groups": 2, "group_split_points": [1, 2, 3, 4], "task_split_points": [3, 4], "balancers": ["equal"]},
        # the fewest epochs at which every tiny single-task network beats a constant (count needs 3 at lr 0.01)
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.01},
        "search": {"sampler": "random", "pruner": "none", "seed": 0},
        "device": "cpu",
    }


def star_raw() -> dict[str, Any]:
    return {
        "name": "star_small",
        "data": {"name": "star", "options": {"tasks": ["readk", "math1", "read3"], "seed": 0}},
        "backbone": {"name": "mlp", "options": {"hidden": [32, 32, 16]}},
        "space": {"max_groups": 2, "balancers": ["equal"]},
        "train": {"epochs": 1, "batch_size": 256, "lr": 0.003},
        "search": {"sampler": "random", "pruner": "none", "seed": 0},
        "device": "cpu",
    }


def raw_lines(table: Path, rows: np.ndarray, out: Path) -> Path:
    """The header and the data rows ``rows`` (0-based) of a CSV, copied as written (no parsing)."""
    lines = table.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + "".join(lines[1 + int(r)] for r in rows))
    return out
