"""describe_data: rows per split, labelled rows per task, task types and metrics, the inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from automtl.data import describe_data
from automtl.data._csv import csv
from automtl.data._fashion_scenes import fashion_scenes
from tests.data.test_csv import GOOD, LABELS, TARGETS, write
from tests.data.test_fashion_scenes import synthetic_set
from tests.helpers import tiny_data

pytest.importorskip("pandas", reason="the csv data set needs the data extra: pip install 'automtl[data]'")


def test_csv_summary(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    data = csv(path=path, targets=TARGETS, split_column="fold")
    lines = describe_data(data).splitlines()
    assert lines[0] == f"data 'csv' ({Path(path).resolve()}): 20 rows: train 14, val 3, test 3"
    header, *rows = lines[1:5]
    assert header.split() == ["task", "type", "metric", "labelled", "train", "labelled", "val", "labelled", "test"]
    # score misses its label at data row 3 (train), sick at 5 (train), kind at 7 (train): 13 of 14 = 93%
    assert rows[0].split() == ["score", "regression", "r2", "(higher", "is", "better)", "13", "(93%)", "3", "(100%)", "3", "(100%)"]
    assert rows[1].split()[:3] == ["sick", "binary", "auroc"] and rows[1].split()[-6:-4] == ["13", "(93%)"]
    assert rows[2].startswith("  kind ") and "multiclass (3 classes)" in rows[2] and "accuracy (higher is better)" in rows[2]
    for task, row in zip(TARGETS, rows):
        counts = [int(c) for c in row.split()[-6::2]]
        assert counts == [data.info["labelled"][task][s] for s in ("train", "val", "test")]
    # id and age are numbers, city is text; age has a missing value: 2 + 3 + 1 = 6 inputs
    assert lines[5:] == [
        "inputs: 6 from 3 columns",
        "  numeric, standardized, 2 columns: id, age",
        "  categorical, one-hot (3 inputs; (n) = categories), 1 column: city (3)",
        "  missing-value indicator (1 input each), 1 column: age",
    ]
    assert data.info["num_features"] == 6


def test_inferred_classes_and_declared_columns_are_marked(tmp_path: Path) -> None:
    data = csv(path=write(tmp_path, LABELS), targets={"k": {"type": "multiclass"}}, split_column="fold", categorical=["f"])
    text = describe_data(data)
    assert "multiclass (4 classes, inferred)" in text
    assert "inputs: 12 from 1 column\n" in text and "1 column: f (12, declared)" in text


def test_summary_of_a_data_set_without_an_encoding_shows_the_input_shape() -> None:
    data = tiny_data(hide={"val": ["c"]})
    lines = describe_data(data).splitlines()
    assert lines[0] == "data 'tiny': 192 rows: train 96, val 48, test 48"
    c_row = next(line for line in lines if line.startswith("  c "))
    assert "multiclass (3 classes)" in c_row and c_row.split()[-4:-2] == ["0", "(0%)"] and c_row.endswith("48 (100%)")
    d_row = next(line for line in lines if line.startswith("  d "))
    assert "multilabel (2 labels)" in d_row
    assert lines[-1] == "inputs: 6 per sample (shape [6])"


def test_summary_of_images(tmp_path: Path) -> None:
    synthetic_set(tmp_path / "idx", gz=False)
    data = fashion_scenes(path=str(tmp_path / "idx"), n_train=30, n_val=10, n_test=12)
    text = describe_data(data)
    assert text.splitlines()[-1] == "inputs: images of shape 1x28x28 (784 values per sample)"
    rows = {line.split()[0]: line.split()[1] for line in text.splitlines()[2:-1]}
    assert rows["count"] == "regression" and rows["has_tshirt"] == "binary" and len(rows) == 11
