from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from automtl.data import load_dataset
from automtl.data._csv import csv
from automtl.data._tabular import TabularEncoder
from automtl.errors import DataError

pd = pytest.importorskip("pandas", reason="the csv data set needs the data extra: pip install 'automtl[data]'")

# 20 rows; row i (0-based) has id i. Missing labels: score at data row 3, sick at 5, kind at 7.
GOOD = "id,age,city,score,sick,kind,fold\n" + "".join(
    f"{i},{'' if i == 4 else 20 + i},{['paris', 'rome', 'oslo'][i % 3]},"
    f"{'' if i == 2 else 1.5 * i},{'' if i == 4 else i % 2},{'' if i == 6 else 'abc'[i % 3]},"
    f"{'test' if i >= 17 else 'val' if i >= 14 else 'train'}\n"
    for i in range(20)
)
TARGETS: dict[str, dict[str, Any]] = {
    "score": {"type": "regression"},
    "sick": {"type": "binary"},
    "kind": {"type": "multiclass", "classes": ["a", "b", "c"]},
}


def write(tmp_path: Path, text: str, name: str = "table.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def with_cell(row: int, column: str, value: str, text: str = GOOD) -> str:
    """``text`` with the cell at 1-based data row ``row`` replaced."""
    lines = text.splitlines()
    header = lines[0].split(",")
    cells = lines[row].split(",")
    cells[header.index(column)] = value
    lines[row] = ",".join(cells)
    return "\n".join(lines) + "\n"


def test_good_csv(tmp_path: Path) -> None:
    data = csv(path=write(tmp_path, GOOD), targets=TARGETS, split_column="fold")
    assert data.task_names == ["score", "sick", "kind"]
    assert [t.type for t in data.tasks] == ["regression", "binary", "multiclass"]
    assert data.task("kind").num_classes == 3 and data.task("kind").classes == ("a", "b", "c")
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [14, 3, 3]
    names = data.info["encoding"]["feature_names"]
    assert names == ["id", "age", "age:missing", "city=oslo", "city=paris", "city=rome"]
    train = data.train
    assert train.x.dtype == torch.float32 and bool(torch.isfinite(train.x).all())
    ids = np.rint(train.x[:, 0].numpy() * data.info["encoding"]["numeric"]["id"]["std"]
                  + data.info["encoding"]["numeric"]["id"]["mean"]).astype(int)  # fmt: skip
    assert ids.tolist() == list(range(14)), "split_column honored, file order kept"
    assert train.mask["score"].tolist() == [i != 2 for i in range(14)]
    assert train.mask["sick"].tolist() == [i != 4 for i in range(14)]
    assert train.mask["kind"].tolist() == [i != 6 for i in range(14)]
    assert train.y["sick"].dtype == torch.float32
    assert train.y["sick"].tolist() == [(i % 2) * (i != 4) for i in range(14)]
    assert train.y["kind"].dtype == torch.int64 and train.y["kind"].tolist() == [(i % 3) * (i != 6) for i in range(14)]
    score = data.task("score")
    restored = train.y["score"][train.mask["score"]].double() * score.target_std + score.target_mean
    np.testing.assert_allclose(restored.numpy(), [1.5 * i for i in range(14) if i != 2], atol=1e-5)
    assert data.info["labelled"]["score"] == {"train": 13, "val": 3, "test": 3}
    assert float(train.x[4, names.index("age:missing")]) == 1.0 and float(train.x[4, names.index("age")]) == 0.0


def test_parquet_round_trip_gives_the_same_tensors(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    from_csv = csv(path=write(tmp_path, GOOD), targets=TARGETS, seed=4)
    pd.read_csv(tmp_path / "table.csv").to_parquet(tmp_path / "table.parquet")
    from_parquet = csv(path=str(tmp_path / "table.parquet"), targets=TARGETS, seed=4)
    assert from_parquet.info["format"] == "parquet"
    assert from_csv.tasks == from_parquet.tasks
    for s in ("train", "val", "test"):
        a, b = from_csv.split(s), from_parquet.split(s)
        assert torch.equal(a.x, b.x)
        assert all(torch.equal(a.y[t], b.y[t]) and torch.equal(a.mask[t], b.mask[t]) for t in TARGETS)


def test_random_split_is_seeded(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    a, b, c = (csv(path=path, targets=TARGETS, seed=s, val_fraction=0.2, test_fraction=0.2) for s in (1, 1, 2))
    assert [len(a.split(s)) for s in ("train", "val", "test")] == [12, 4, 4]
    assert "fold" in a.info["features"], "a split column not named as such is a feature"
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)


def test_features_option_and_multilabel(tmp_path: Path) -> None:
    text = "f,l1,l2\n" + "".join(f"{i},{i % 2},{'' if i == 3 else (i // 2) % 2}\n" for i in range(12))
    targets = {"tags": {"type": "multilabel", "columns": ["l1", "l2"]}}
    data = csv(path=write(tmp_path, text), targets=targets, features=["f"], val_fraction=0.25, test_fraction=0.25)
    task = data.task("tags")
    assert task.type == "multilabel" and task.num_classes == 2
    all_rows = {s: data.split(s) for s in ("train", "val", "test")}
    assert all(p.y["tags"].shape == (len(p), 2) and p.y["tags"].dtype == torch.float32 for p in all_rows.values())
    assert sum(int((~p.mask["tags"]).sum()) for p in all_rows.values()) == 1, "a row with a missing label is masked"
    assert data.info["encoding"]["feature_names"] == ["f"]


def assert_names(exc: pytest.ExceptionInfo[DataError], *parts: str) -> None:
    for part in parts:
        assert part in str(exc.value), f"{part!r} not in {str(exc.value)!r}"


@pytest.mark.parametrize(
    ("row", "column", "value", "targets"),
    [
        (5, "score", "abc", TARGETS),
        (3, "kind", "d", TARGETS),
        (8, "sick", "2", TARGETS),
        (2, "sick", "maybe", {"sick": {"type": "binary", "classes": ["0", "1"]}}),
        (11, "fold", "training", TARGETS),
    ],
    ids=["regression-not-a-number", "class-not-declared", "binary-not-0-1", "binary-not-declared", "bad-split"],
)
def test_bad_cells_name_column_row_and_value(
    tmp_path: Path, row: int, column: str, value: str, targets: dict[str, dict[str, Any]]
) -> None:
    path = write(tmp_path, with_cell(row, column, value))
    with pytest.raises(DataError) as exc:
        csv(path=path, targets=targets, split_column="fold")
    assert_names(exc, f"'{column}'", f"data row {row} ", "header excluded", repr(value), path)


@pytest.mark.parametrize(
    ("options", "culprit"),
    [
        ({"features": ["age", "height"]}, "'height'"),
        ({"targets": {"weight": {"type": "regression"}}}, "'weight'"),
        ({"targets": {"sick": {"type": "binary", "column": "ill"}}}, "'ill'"),
        ({"split_column": "partition"}, "'partition'"),
    ],
    ids=["feature", "target", "target-column", "split"],
)
def test_absent_column_lists_available_ones(tmp_path: Path, options: dict[str, Any], culprit: str) -> None:
    with pytest.raises(DataError) as exc:
        csv(**{"path": write(tmp_path, GOOD), "targets": TARGETS, **options})
    assert_names(exc, culprit, "available columns", "'city'", "'fold'")


def test_empty_file_and_header_only(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty") as exc:
        csv(path=write(tmp_path, "", "empty.csv"), targets=TARGETS)
    assert_names(exc, "empty.csv")
    with pytest.raises(DataError, match="no data rows") as exc:
        csv(path=write(tmp_path, "id,score\n", "header.csv"), targets={"score": {"type": "regression"}})
    assert_names(exc, "header.csv")


def test_target_without_training_label(tmp_path: Path) -> None:
    text = GOOD
    for row in range(1, 15):  # every train row
        text = with_cell(row, "score", "", text)
    with pytest.raises(DataError, match="no labelled training row") as exc:
        csv(path=write(tmp_path, text), targets=TARGETS, split_column="fold")
    assert_names(exc, "'score'")


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ({"y": {"type": "ordinal"}}, "type must be one of"),
        ({"kind": {"type": "multiclass", "classes": ["a"]}}, "at least 2 classes"),
        ({"kind": {"type": "multiclass", "classes": "abc"}}, "must be a list"),
        ({"sick": {"type": "binary", "classes": [0, 1, 2]}}, "exactly 2 classes"),
        ({"sick": {"type": "binary", "clases": [0, 1]}}, "unknown option"),
        ({}, "targets is empty"),
    ],
)
def test_bad_target_declarations(tmp_path: Path, targets: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=message):
        csv(path=write(tmp_path, GOOD), targets=targets)


def test_feature_may_not_be_a_target(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'score'"):
        csv(path=write(tmp_path, GOOD), targets=TARGETS, features=["age", "score"])


def test_load_by_registered_name(tmp_path: Path) -> None:
    data = load_dataset("csv", {"path": write(tmp_path, GOOD), "targets": TARGETS})
    assert data.name == "csv" and data.info["source"] == str((tmp_path / "table.csv").resolve())


def test_encoder_uses_training_statistics_only() -> None:
    frame = pd.DataFrame({"n": [1.0, 3.0, 100.0, np.nan], "c": ["u", "v", "w", None]})
    encoder = TabularEncoder.fit(frame, np.array([0, 1]), source="t")
    x = encoder.transform(frame, source="t")
    assert encoder.feature_names == ["n", "n:missing", "c=u", "c=v", "c:missing"]
    np.testing.assert_allclose(x[:, 0], [-1.0, 1.0, 98.0, 0.0])
    np.testing.assert_array_equal(x[:, 1:], [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]])
    with pytest.raises(DataError, match=r"column 'n', data row 2 .*inf"):
        encoder.transform(pd.DataFrame({"n": [0.0, np.inf], "c": ["u", "u"]}), source="t")


def test_identifier_like_text_column_is_refused() -> None:
    frame = pd.DataFrame({"name": [f"person {i}" for i in range(1001)]})
    with pytest.raises(DataError, match="column 'name' has 1001 distinct values"):
        TabularEncoder.fit(frame, np.arange(1001), source="t")


# --- which feature columns are categorical -----------------------------------------------------

NUMERIC3 = "a,b,c,y\n" + "".join(f"{i},{2 * i},{i % 5},{i % 2}\n" for i in range(30))


def test_one_text_cell_in_a_numeric_column_is_an_error_not_a_one_hot_block(tmp_path: Path) -> None:
    # before: the 'abc' cell made column b categorical, and 3 inputs became 31
    path = write(tmp_path, with_cell(7, "b", "abc", NUMERIC3))
    with pytest.raises(DataError) as exc:
        csv(path=path, targets={"y": {"type": "binary"}})
    assert_names(exc, path, "column 'b'", "data row 7 ", "header excluded", "'abc'", "is not a number", "29 of")
    assert_names(exc, "categorical")  # says how to one-hot encode it on purpose


def test_one_number_in_a_text_column_is_an_error_naming_the_number(tmp_path: Path) -> None:
    path = write(tmp_path, with_cell(12, "city", "7"))
    with pytest.raises(DataError) as exc:
        csv(path=path, targets=TARGETS, split_column="fold")
    assert_names(exc, "column 'city'", "data row 12 ", "'7'", "is a number", "19 of the column's 20")


def test_declared_categorical_columns_are_one_hot_whatever_they_hold(tmp_path: Path) -> None:
    path = write(tmp_path, with_cell(7, "b", "abc", NUMERIC3))
    data = csv(path=path, targets={"y": {"type": "binary"}}, categorical=["b", "c"], seed=1)
    names = data.info["encoding"]["feature_names"]
    assert names[0] == "a" and "b=abc" in names and "c=0" in names and "c=4" in names
    assert len(names) == 1 + len({n for n in names if n.startswith("b=")}) + 5
    assert data.info["categorical"] == ["b", "c"]
    kinds = {c["column"]: c["kind"] for c in data.info["encoding"]["columns"]}
    assert kinds == {"a": "numeric", "b": "categorical", "c": "categorical"}
    without = csv(path=write(tmp_path, NUMERIC3, "clean.csv"), targets={"y": {"type": "binary"}}, seed=1)
    assert without.info["encoding"]["feature_names"] == ["a", "b", "c"]  # undeclared numbers stay numbers


@pytest.mark.parametrize(
    ("categorical", "message"),
    [(["zip"], "categorical column 'zip' is absent"), (["y"], "not feature columns"), ("b", "must be a list")],
)
def test_bad_categorical_option(tmp_path: Path, categorical: Any, message: str) -> None:
    with pytest.raises(DataError, match=message):
        csv(path=write(tmp_path, NUMERIC3), targets={"y": {"type": "binary"}}, categorical=categorical)


def test_text_cells_that_read_as_numbers_are_numbers() -> None:
    # pandas reads a column with any odd cell as text; " 3.5" (spaces) and "1e1" still count as numbers
    frame = pd.DataFrame({"n": pd.Series([" 3.5", "1e1", None, "  ", "-1.5"], dtype=object)})
    encoder = TabularEncoder.fit(frame, np.array([0, 1, 4]), source="t")
    assert encoder.columns[0].kind == "numeric" and encoder.feature_names == ["n", "n:missing"]
    assert encoder.columns[0].mean == pytest.approx(4.0)  # mean of 3.5, 10 and -1.5
    x = encoder.transform(frame, source="t")
    np.testing.assert_allclose(x[:, 1], [0, 0, 1, 1, 0])  # empty and blank cells are missing
    assert x[2, 0] == 0.0 and x[3, 0] == 0.0
    with pytest.raises(DataError, match=r"column 'n', data row 2 .*'x' is not a number"):
        encoder.transform(pd.DataFrame({"n": pd.Series(["1", "x"], dtype=object)}), source="t")


def test_plainly_text_column_is_categorical() -> None:
    frame = pd.DataFrame({"c": pd.Series(["red", "blue", None, " green"], dtype=object)})
    encoder = TabularEncoder.fit(frame, np.arange(4), source="t")
    assert encoder.columns[0].kind == "categorical" and encoder.columns[0].categories == (" green", "blue", "red")


# --- multiclass classes inferred from the training split ----------------------------------------

LABELS = "f,k,fold\n" + "".join(
    f"{i},{['10', '2', 'b', 'a', '2.0', ' 10'][i % 6]},{'test' if i >= 16 else 'val' if i >= 12 else 'train'}\n"
    for i in range(20)
)


def test_multiclass_classes_inferred_sorted_numbers_first(tmp_path: Path) -> None:
    data = csv(path=write(tmp_path, LABELS), targets={"k": {"type": "multiclass"}}, split_column="fold")
    task = data.task("k")
    assert task.classes == ("2", "10", "a", "b") and task.num_classes == 4  # 2 < 10 by value; "2.0" is "2"
    assert data.info["targets"]["k"]["classes"] == ["2", "10", "a", "b"]
    assert data.info["targets"]["k"]["classes_inferred"] is True
    assert data.train.y["k"].tolist() == [[1, 0, 3, 2, 0, 1][i % 6] for i in range(12)]


def test_explicit_classes_win(tmp_path: Path) -> None:
    targets = {"k": {"type": "multiclass", "classes": ["b", "a", 10, 2]}}
    data = csv(path=write(tmp_path, LABELS), targets=targets, split_column="fold")
    assert data.task("k").classes == ("b", "a", "10", "2")
    assert data.info["targets"]["k"]["classes_inferred"] is False
    assert data.train.y["k"].tolist() == [[2, 3, 0, 1, 3, 2][i % 6] for i in range(12)]


def test_unseen_validation_label_names_column_row_and_label(tmp_path: Path) -> None:
    text = with_cell(14, "k", "c", with_cell(18, "k", "zz", LABELS))
    path = write(tmp_path, text)
    with pytest.raises(DataError) as exc:
        csv(path=path, targets={"k": {"type": "multiclass"}}, split_column="fold")
    assert_names(exc, path, "column 'k'", "'c' at data row 14 ", "in the val split", "'zz' at data row 18 ", "in the test split")
    assert_names(exc, "never in the training split", "classes ['2', '10', 'a', 'b']")


def test_inferred_multiclass_needs_two_training_labels(tmp_path: Path) -> None:
    text = "f,k\n" + "".join(f"{i},a\n" for i in range(20))
    with pytest.raises(DataError, match=r"target 'k' .*1 distinct label\(s\) \['a'\]"):
        csv(path=write(tmp_path, text), targets={"k": {"type": "multiclass"}})
