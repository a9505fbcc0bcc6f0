"""Users' own tables (``.csv`` or ``.parquet``): one task per declared target column."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from automtl.data._base import SPLITS, MultiTaskData, register_dataset
from automtl.data._preprocess import table_preprocess
from automtl.data._tabular import (
    TabularEncoder,
    assemble,
    data_row,
    random_split,
    regression_labels,
    require,
)
from automtl.errors import DataError
from automtl.tasks import TASK_TYPES, TaskSpec

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["csv"]

_TARGET_KEYS = ("type", "column", "columns", "classes", "loss", "metric")


def _label_key(value: Any) -> object:
    """What a label is compared by: its number if it reads as a finite one (``1``, ``"1"``, ``1.0``),
    else its stripped text."""
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)) and math.isfinite(float(value)):
        return float(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def _read(path: Path, text_columns: set[str]) -> pd.DataFrame:
    """The table at ``path``; ``text_columns`` (labels, split) of a CSV are kept as written."""
    pd = require("pandas")
    if not path.is_file():
        raise DataError(f"csv: file {path} does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"csv: file {path} is empty")
    try:
        if path.suffix.lower() == ".parquet":
            require("pyarrow")
            table = pd.read_parquet(path)
        elif path.suffix.lower() == ".csv":
            header = pd.read_csv(path, nrows=0).columns
            table = pd.read_csv(path, dtype={c: str for c in text_columns if c in header})
        else:
            raise DataError(f"csv: file {path} is neither .csv nor .parquet")
    except (ValueError, OSError) as exc:  # pandas' EmptyDataError and ParserError are ValueErrors
        if isinstance(exc, DataError):
            raise
        raise DataError(f"csv: cannot read {path}: {' '.join(str(exc).split())}") from exc  # pandas ends it with a newline
    if len(table) == 0:
        raise DataError(f"csv: file {path} has no data rows (only a header)")
    return table


def _require_columns(path: Path, table: pd.DataFrame, columns: Sequence[str], role: str) -> None:
    for column in columns:
        if column not in table.columns:
            raise DataError(
                f"csv: {path}: {role} column '{column}' is absent; available columns: {list(table.columns)}"
            )


def _first_bad(path: Path, column: str, series: pd.Series, bad: np.ndarray, why: str) -> DataError:
    row = int(np.flatnonzero(bad)[0])
    return DataError(f"csv: {path}: column '{column}', {data_row(row)}: value {series.iloc[row]!r} {why}")


def _numbers(path: Path, column: str, series: pd.Series) -> np.ndarray:
    """float64 ``[N]``, NaN for empty cells; anything else that is not a finite number is an error."""
    pd = require("pandas")
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = series.notna().to_numpy() & ~np.isfinite(values)
    if bad.any():
        raise _first_bad(path, column, series, bad, "is not a finite number (the target is a regression)")
    return values


def _class_codes(
    path: Path,
    column: str,
    series: pd.Series,
    classes: Sequence[Any],
    kind: str,
    split_of: np.ndarray | None = None,
) -> np.ndarray:
    """int64 ``[N]``: index of each cell's label in ``classes``, -1 for an empty cell.

    Args:
        path: The file (for errors).
        column: The column's name (for errors).
        series: The column.
        classes: The allowed labels, in index order.
        kind: The target's type (for errors).
        split_of: Per row, its split name, when ``classes`` were inferred from the training
            rows: a label outside them is then reported as one the training split never has.

    Raises:
        DataError: A label outside ``classes`` (names the column, the rows and the labels).
    """
    index = {_label_key(c): i for i, c in enumerate(classes)}
    cells = series.to_numpy()
    known = np.flatnonzero(series.notna().to_numpy())
    seen: dict[Any, int] = {}  # raw cell value to code, so each distinct value is parsed once
    codes = np.full(len(series), -1, dtype=np.int64)
    unseen: dict[object, int] = {}  # label key -> first row, for inferred classes
    for row in known:
        cell = cells[row]
        code = seen.get(cell)
        if code is None:
            code = seen[cell] = index.get(_label_key(cell), -1)
        if code < 0:
            if split_of is None:
                raise DataError(
                    f"csv: {path}: column '{column}', {data_row(int(row))}: value {cell!r} is not one of the "
                    f"{kind} target's classes {list(classes)}"
                )
            unseen.setdefault(_label_key(cell), int(row))
        codes[row] = code
    if unseen and split_of is not None:
        shown = ", ".join(
            f"{cells[row]!r} at {data_row(row)} in the {split_of[row]} split" for row in list(unseen.values())[:5]
        )
        more = f" and {len(unseen) - 5} more" if len(unseen) > 5 else ""
        raise DataError(
            f"csv: {path}: column '{column}': label(s) {shown}{more}: never in the training split, from "
            f"which the classes {list(classes)} were inferred; declare 'classes' for the target, or move such "
            "rows into the training split"
        )
    return codes


def _class_name(key: object) -> str:
    """A label's name as an inferred class: ``2.0`` reads ``"2"``, text as written (stripped)."""
    if isinstance(key, float) and key.is_integer():
        return str(int(key))
    return str(key)


def _infer_classes(path: Path, name: str, column: str, series: pd.Series, train_rows: np.ndarray) -> list[str]:
    """The distinct labels of a multiclass column's training rows: numbers first (by value),
    then text (sorted); ``1``, ``"1"`` and ``1.0`` are one label, named ``"1"``.

    Raises:
        DataError: Fewer than 2 distinct labels in the training rows.
    """
    train = series.iloc[train_rows]
    keys = {_label_key(v) for v in train[train.notna()].to_numpy()}
    numbers = sorted(k for k in keys if isinstance(k, float))
    texts = sorted(str(k) for k in keys if not isinstance(k, float))
    classes = [_class_name(k) for k in numbers] + texts
    if len(classes) < 2:
        raise DataError(
            f"csv: {path}: target '{name}' (column '{column}'): its training rows hold {len(classes)} distinct "
            f"label(s) {classes}; a multiclass target needs at least 2 (declare 'classes', or use more data)"
        )
    return classes


def _target_spec(name: str, spec: Any) -> dict[str, Any]:
    """A target's options, checked and completed with defaults."""
    if not isinstance(spec, Mapping):
        raise DataError(f"csv: target '{name}': expected a mapping of options (type, column, ...), got {spec!r}")
    unknown = sorted(set(spec) - set(_TARGET_KEYS))
    if unknown:
        raise DataError(f"csv: target '{name}': unknown option(s) {unknown}; expected some of {list(_TARGET_KEYS)}")
    kind = spec.get("type")
    if kind not in TASK_TYPES:
        raise DataError(f"csv: target '{name}': type must be one of {list(TASK_TYPES)}, got {kind!r}")
    classes = spec.get("classes")
    if classes is not None and (isinstance(classes, (str, Mapping)) or not isinstance(classes, Sequence)):
        raise DataError(f"csv: target '{name}': 'classes' must be a list of labels, got {classes!r}")
    if kind in ("binary", "multilabel"):
        classes = [0, 1] if classes is None else classes
        if len(classes) != 2:
            raise DataError(
                f"csv: target '{name}': a {kind} target has exactly 2 classes (negative, positive), got {classes!r}"
            )
    if kind == "multiclass" and classes is not None and len(classes) < 2:
        raise DataError(f"csv: target '{name}': a multiclass target needs at least 2 classes, got {list(classes)}")
    if classes is not None and len({_label_key(c) for c in classes}) != len(classes):
        raise DataError(f"csv: target '{name}': classes {list(classes)} repeat a label")
    if kind == "multilabel":
        columns = spec.get("columns")
        if isinstance(columns, str) or not columns or len(columns) < 2:
            raise DataError(
                f"csv: target '{name}': a multilabel target needs 'columns', a list of 2 or more 0/1 label columns"
            )
        columns = [str(c) for c in columns]
    else:
        if "columns" in spec:
            raise DataError(f"csv: target '{name}': 'columns' is only for multilabel targets; use 'column'")
        columns = [str(spec.get("column", name))]
    loss, metric = spec.get("loss", ""), spec.get("metric", "")
    return {"type": kind, "columns": columns, "classes": classes, "loss": loss, "metric": metric}


def _split_rows(path: Path, table: pd.DataFrame, split_column: str) -> dict[str, np.ndarray]:
    series = table[split_column]
    values = np.array([str(v).strip().lower() for v in series.to_numpy()], dtype=object)
    bad = series.isna().to_numpy() | ~np.isin(values, SPLITS)
    if bad.any():
        raise _first_bad(path, split_column, series, bad, f"is not a split; expected one of {list(SPLITS)}")
    splits = {s: np.flatnonzero(values == s).astype(np.int64) for s in SPLITS}
    empty = [s for s, rows in splits.items() if len(rows) == 0]
    if empty:
        raise DataError(f"csv: {path}: split column '{split_column}' has no row for split(s) {empty}")
    return splits


@register_dataset("csv")
def csv(
    *,
    path: str,
    targets: Mapping[str, Mapping[str, Any]],
    features: list[str] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    split_column: str | None = None,
    categorical: Sequence[str] = (),
) -> MultiTaskData:
    """A multi-task data set from a user's table, one row per sample.

    Each target is a task. Per target (``targets[name]``, a mapping):

    * ``type``: ``binary``, ``multiclass``, ``multilabel`` or ``regression``;
    * ``column``: its column (default: the target's name); a multilabel target instead has
      ``columns``, a list of 0/1 columns, one per label (a row is labelled only if all are);
    * ``classes``: allowed labels in index order; optional. Binary and multilabel default to
      ``[0, 1]`` (negative, positive). A multiclass target without ``classes`` takes the
      distinct labels of its training rows, sorted: numbers first, by value (``2`` before
      ``10``), then text, alphabetically; a label of a validation or test row that no training
      row has is then an error (naming the column, the rows and the labels). Labels match by
      value, so ``1``, ``"1"`` and ``1.0`` are the same label (inferred, it is named ``"1"``);
    * ``loss``, ``metric``: optional names (defaults by type, see :mod:`automtl.tasks`).

    An empty cell in a target column is a missing label (masked, never imputed). Regression
    targets are standardized with the mean and standard deviation (``ddof=0``) of their
    observed training values. Features are encoded by
    :class:`automtl.data._tabular.TabularEncoder` fitted on the training rows: a column is
    one-hot encoded when it is declared in ``categorical`` or is plainly non-numeric (none of
    its non-empty cells reads as a number); otherwise it is standardized. A column that mixes
    numbers and text is an error naming the first odd cell, unless declared categorical.
    Missing values become 0 plus a ``"<col>:missing"`` flag.

    Args:
        path: A ``.csv`` (comma-separated, with a header row) or ``.parquet`` file.
        targets: Per task name, its options (above).
        features: Feature columns; default every column that is neither a target nor
            ``split_column``.
        val_fraction: Share of rows for validation in the random split, in (0, 1).
        test_fraction: Share of rows for test in the random split, in (0, 1).
        seed: Seed of the random split; same options give bitwise-identical tensors.
        split_column: A column whose values (``train``, ``val``, ``test``) assign each row
            to a split, instead of the random split.
        categorical: Feature columns to one-hot encode even though their cells are numbers
            (identifiers, codes, or text columns with some numeric-looking values).

    Returns:
        :class:`MultiTaskData` named ``"csv"``: ``x`` float32 ``[N, F]``; labels and masks in
        the layout of :mod:`automtl.tasks`. ``info`` records the file, split, columns and
        encoding.

    Raises:
        ImportError: If pandas (or pyarrow, for Parquet) is not installed.
        DataError: For an absent or empty file, an absent column (lists those available), a
            bad label, split or feature value (names the column, the 1-based data row, header
            excluded, and the value), a validation or test label outside the classes inferred
            from the training rows, or a target with no labelled training row.
    """
    file = Path(path).expanduser().resolve()
    if not targets:
        raise DataError("csv: option targets is empty; declare at least one target column")
    specs = {str(name): _target_spec(str(name), spec) for name, spec in targets.items()}
    label_columns = {c for s in specs.values() for c in s["columns"]}
    table = _read(file, label_columns | ({split_column} if split_column else set()))
    _require_columns(file, table, [c for s in specs.values() for c in s["columns"]], "target")
    if split_column is not None:
        _require_columns(file, table, [split_column], "split")
    reserved = label_columns | {split_column}
    if features is None:
        features = [str(c) for c in table.columns if c not in reserved]
    else:
        _require_columns(file, table, features, "feature")
        clash = [c for c in features if c in reserved]
        if clash:
            raise DataError(f"csv: {file}: feature column(s) {clash} are also target or split columns")
    if not features:
        raise DataError(f"csv: {file}: no feature column left; columns: {list(table.columns)}")
    if isinstance(categorical, str):
        raise DataError(f"csv: option categorical must be a list of feature columns, got {categorical!r}")
    _require_columns(file, table, categorical, "categorical")
    not_features = [c for c in categorical if c not in features]
    if not_features:
        raise DataError(f"csv: {file}: categorical column(s) {not_features} are not feature columns; features: {features}")

    if split_column is None:
        splits = random_split(
            len(table), val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, source=f"csv: {file}"
        )
    else:
        splits = _split_rows(file, table, split_column)
    split_of = np.empty(len(table), dtype=object)
    for split, rows in splits.items():
        split_of[rows] = split

    encoded: dict[str, np.ndarray] = {}
    inferred: set[str] = set()
    for name, spec in specs.items():
        if spec["type"] == "regression":
            encoded[name] = _numbers(file, spec["columns"][0], table[spec["columns"][0]])
            continue
        if spec["classes"] is None:
            column = spec["columns"][0]
            spec["classes"] = _infer_classes(file, name, column, table[column], splits["train"])
            inferred.add(name)
        encoded[name] = np.stack(
            [
                _class_codes(file, c, table[c], spec["classes"], spec["type"], split_of if name in inferred else None)
                for c in spec["columns"]
            ],
            axis=1,
        )

    tasks, y, mask = [], {}, {}
    for name, spec in specs.items():
        if spec["type"] == "regression":
            task, y[name], mask[name] = regression_labels(
                name, encoded[name], splits, source=f"csv: {file}", loss=spec["loss"], metric=spec["metric"]
            )
        else:
            task, y[name], mask[name] = _class_task(file, name, spec, encoded[name], splits)
        tasks.append(task)

    encoder = TabularEncoder.fit(table[features], splits["train"], categorical=set(categorical), source=f"csv: {file}")
    x = encoder.transform(table[features], source=f"csv: {file}")
    info = {
        "source": str(file),
        "format": file.suffix.lstrip("."),
        "rows": len(table),
        "seed": seed,
        "split": f"column '{split_column}'" if split_column else f"random (val {val_fraction}, test {test_fraction})",
        "targets": {
            n: {"type": s["type"], "columns": s["columns"], "classes": s["classes"], "classes_inferred": n in inferred}
            for n, s in specs.items()
        },
        "features": list(features),
        "categorical": list(categorical),
        "labelled": {t: {s: int(m.sum()) for s, m in mask[t].items()} for t in specs},
        "encoding": encoder.describe(),
    }
    data = assemble("csv", tasks, x, splits, y, mask, info)
    data.preprocess = table_preprocess(encoder, table[features], specs)
    return data


def _class_task(
    file: Path, name: str, spec: Mapping[str, Any], codes: np.ndarray, splits: Mapping[str, np.ndarray]
) -> tuple[TaskSpec, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A binary, multiclass or multilabel task from class codes ``[N, columns]`` (-1: missing)."""
    kind = spec["type"]
    labelled = np.all(codes >= 0, axis=1)
    if not labelled[splits["train"]].any():
        raise DataError(f"csv: {file}: target '{name}' (column(s) {spec['columns']}) has no labelled training row")
    if kind == "multiclass":
        task = TaskSpec(name, kind, num_classes=len(spec["classes"]), classes=tuple(str(c) for c in spec["classes"]),
                        loss=spec["loss"], metric=spec["metric"])  # fmt: skip
    else:
        width = len(spec["columns"]) if kind == "multilabel" else None
        task = TaskSpec(name, kind, num_classes=width, loss=spec["loss"], metric=spec["metric"])
    y, mask = {}, {}
    for split, rows in splits.items():
        known = labelled[rows]
        values = np.where(known[:, None], codes[rows], 0)
        if kind == "multiclass":
            y[split] = torch.from_numpy(values[:, 0].astype(np.int64))
        elif kind == "binary":
            y[split] = torch.from_numpy(values[:, 0].astype(np.float32))
        else:
            y[split] = torch.from_numpy(values.astype(np.float32))
        mask[split] = torch.from_numpy(known)
    return task, y, mask
