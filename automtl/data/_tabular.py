"""Shared machinery of the tabular data sets (``star``, ``csv``).

One feature encoding (:class:`TabularEncoder`), one seeded train/val/test split
(:func:`random_split`), one standardization of regression targets (:func:`regression_labels`)
and one way to put the pieces into a :class:`MultiTaskData` (:func:`assemble`).

pandas is an optional dependency: nothing here imports it at module level, and
:func:`require` turns its absence into an ImportError that says what to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from automtl.data._base import SPLITS, MultiTaskData, Split
from automtl.errors import DataError
from automtl.tasks import TaskSpec

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "MAX_CATEGORIES",
    "ColumnEncoding",
    "TabularEncoder",
    "assemble",
    "data_row",
    "random_split",
    "regression_labels",
    "require",
]

#: A categorical feature with more distinct training values than this is refused: it is
#: almost always an identifier or free text, and its one-hot block would not fit in memory.
MAX_CATEGORIES = 1000


def require(module: str) -> ModuleType:
    """Import an optional dependency of the data extra.

    Raises:
        ImportError: If it is not installed; the message says ``pip install 'automtl[data]'``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"this data set needs '{module}': pip install 'automtl[data]'") from exc


def data_row(position: int) -> str:
    """How error messages name a row: 1-based, counting data rows only (header excluded)."""
    return f"data row {position + 1} (1-based, header excluded)"


def random_split(
    n_rows: int, *, val_fraction: float, test_fraction: float, seed: int, source: str
) -> dict[str, np.ndarray]:
    """Seeded random partition of ``n_rows`` rows into train, val and test.

    ``round(test_fraction * n_rows)`` rows go to test, ``round(val_fraction * n_rows)`` to val,
    the rest to train.

    Args:
        n_rows: Number of rows.
        val_fraction: Share of rows for validation, in ``[0, 1)``.
        test_fraction: Share of rows for test, in ``[0, 1)``.
        seed: Seed of the permutation.
        source: Name of the data (for error messages).

    Returns:
        Per split name, sorted int64 row positions.

    Raises:
        DataError: If the fractions are out of range or a split would be empty.
    """
    for option, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise DataError(f"{source}: option {option} must be in (0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(
            f"{source}: val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
        )
    n_test = round(test_fraction * n_rows)
    n_val = round(val_fraction * n_rows)
    n_train = n_rows - n_val - n_test
    if min(n_train, n_val, n_test) < 1:
        raise DataError(
            f"{source}: {n_rows} rows give {n_train} train, {n_val} val and {n_test} test rows; "
            "every split needs at least one (add rows or change val_fraction/test_fraction)"
        )
    order = np.random.default_rng(seed).permutation(n_rows)
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    return {name: np.sort(parts[name]).astype(np.int64) for name in SPLITS}


def _category_key(value: Any) -> str:
    """A category's name: integral floats lose their ``.0`` (school id 63.0 is ``"63"``)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _blank(cells: np.ndarray) -> np.ndarray:
    """Bool ``[N]``: text cells that hold nothing but spaces (missing values, like empty cells)."""
    return np.array([isinstance(v, str) and not v.strip() for v in cells], dtype=bool)


def _as_numbers(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A column read as numbers: a numeric or boolean dtype as it is, text or objects cell by cell.

    Returns:
        float64 ``[N]`` (NaN where the cell is empty or not a number) and bool ``[N]``, True
        where a non-empty cell is not a number.
    """
    pd = require("pandas")
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        return values, np.zeros(len(values), dtype=bool)
    cells = column.to_numpy(dtype=object, na_value=None)
    empty = column.isna().to_numpy() | _blank(cells)
    distinct = pd.unique(cells[~empty])
    # each distinct cell is parsed once: a column of 11,598 rows holds a few dozen values
    parsed = pd.to_numeric(pd.Series([str(v).strip() for v in distinct], dtype=object), errors="coerce")
    number = dict(zip(distinct, parsed.to_numpy(dtype=np.float64, na_value=np.nan)))
    values = np.array([np.nan if e else number[v] for v, e in zip(cells, empty)], dtype=np.float64)
    return values, ~empty & np.isnan(values)


def _numeric_values(column: pd.Series, name: str, source: str) -> np.ndarray | None:
    """float64 ``[N]`` (NaN where missing) if ``column`` is numeric by the rule of
    :class:`TabularEncoder`, ``None`` if it is plainly non-numeric.

    Raises:
        DataError: The column mixes number and text cells (names the first odd cell).
    """
    values, text = _as_numbers(column)
    n_text, n_numbers = int(text.sum()), int((~np.isnan(values)).sum())
    if n_text == 0:
        return values
    if n_numbers == 0:
        return None
    odd = text if n_numbers >= n_text else ~np.isnan(values)
    row = int(np.flatnonzero(odd)[0])
    what = (
        f"is not a number, but {n_numbers} of the column's {n_numbers + n_text} non-empty cells are numbers"
        if n_numbers >= n_text
        else f"is a number, but {n_text} of the column's {n_numbers + n_text} non-empty cells are text"
    )
    raise DataError(
        f"{source}: column '{name}', {data_row(row)}: value {column.iloc[row]!r} {what}; correct the cell, "
        "or declare the column categorical to one-hot encode it (csv option categorical: [column, ...])"
    )


@dataclass(frozen=True)
class ColumnEncoding:
    """How one input column becomes feature columns.

    Attributes:
        column: Input column name.
        kind: ``"categorical"`` (one-hot) or ``"numeric"`` (standardized).
        categories: One-hot categories, sorted (categorical only).
        mean: Training mean (numeric only).
        std: Training standard deviation, 1.0 for a constant column (numeric only).
        missing_indicator: Whether a 0/1 column flags missing values.
    """

    column: str
    kind: str
    categories: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0
    missing_indicator: bool = False

    @property
    def feature_names(self) -> list[str]:
        names = [f"{self.column}={c}" for c in self.categories] if self.kind == "categorical" else [self.column]
        return names + ([f"{self.column}:missing"] if self.missing_indicator else [])


@dataclass(frozen=True)
class TabularEncoder:
    """Table columns to a float32 feature matrix, fitted on the training rows.

    Which columns are categorical (the rule, applied to the whole table, every split):

    * a column named in ``categorical`` (declared) is categorical, whatever its cells hold;
    * a column of a numeric or boolean dtype is numeric;
    * any other column (text, objects) is **plainly non-numeric**, hence categorical, when none
      of its non-empty cells reads as a number; it is numeric when every non-empty cell reads as
      one (``" 3.5"``, ``"1e3"``: surrounding spaces are ignored; pandas' ``to_numeric``
      decides); a column with both kinds of cells is an error that names the column, the
      first odd cell's 1-based data row and its value (declare the column categorical to
      one-hot encode it). A column with no non-empty cell is numeric (pandas reads an empty
      CSV column as numbers).

    Empty cells (what pandas reads as missing, and text cells of spaces only) are missing
    values and count as neither kind.

    * A **categorical** column becomes one 0/1 column per category seen in the training rows
      (sorted). A missing value sets no category bit; a value not seen in training sets none
      either (and no missing flag).
    * A **numeric** column (numbers, booleans, text of numbers) is standardized with the
      training rows' mean and standard deviation (population, ``ddof=0``; 1.0 if constant); a
      missing value becomes 0 (the training mean).
    * Every column with a missing value anywhere in the table gets a 0/1 ``"<col>:missing"``
      column, so the train/val/test splits share one layout.

    Attributes:
        columns: Per input column, its encoding, in input order.
    """

    columns: tuple[ColumnEncoding, ...]

    @property
    def feature_names(self) -> list[str]:
        """Names of the output columns, in order (``"col"``, ``"col=value"``, ``"col:missing"``)."""
        return [name for enc in self.columns for name in enc.feature_names]

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        train_rows: np.ndarray,
        *,
        categorical: Collection[str] = (),
        source: str,
    ) -> TabularEncoder:
        """Learn the encoding of every column of ``frame`` from its rows ``train_rows``.

        Args:
            frame: The whole table (all splits), features only.
            train_rows: Positions of the training rows.
            categorical: Columns to treat as categorical whatever they hold (identifiers,
                codes, or text columns with some numeric-looking cells).
            source: Name of the data (for error messages).

        Returns:
            The fitted encoder.

        Raises:
            DataError: A column that mixes number and text cells and is not declared
                categorical (names the column, the data row and the value), or a categorical
                column with more than :data:`MAX_CATEGORIES` values.
        """
        encodings = []
        for name in frame.columns:
            column = frame[name]
            values = None if name in categorical else _numeric_values(column, str(name), source)
            if values is not None:
                missing = bool(np.isnan(values).any())
                train = values[train_rows]
                train = train[~np.isnan(train)]
                mean = float(train.mean()) if train.size else 0.0
                std = float(train.std()) if train.size else 0.0
                std = std if std > 0 else 1.0
                encodings.append(ColumnEncoding(str(name), "numeric", mean=mean, std=std, missing_indicator=missing))
                continue
            missing = bool(column.isna().any())
            train_cells = column.iloc[train_rows]
            train_cells = train_cells[train_cells.notna()]
            categories = sorted({_category_key(v) for v in train_cells.to_numpy()})
            if len(categories) > MAX_CATEGORIES:
                raise DataError(
                    f"{source}: column '{name}' has {len(categories)} distinct values in the training rows "
                    f"(e.g. {categories[0]!r}); more than {MAX_CATEGORIES} is almost surely an identifier or "
                    "free text: leave it out of the features"
                )
            encodings.append(
                ColumnEncoding(str(name), "categorical", categories=tuple(categories), missing_indicator=missing)
            )
        return cls(tuple(encodings))

    def transform(self, frame: pd.DataFrame, *, source: str) -> np.ndarray:
        """Encode ``frame`` (same columns as at fit time).

        Returns:
            float32 ``[N, F]`` with ``F = len(self.feature_names)``, all finite.

        Raises:
            DataError: A column is absent, or a cell of a numeric column is infinite or not a
                number (names the column, the data row and the value).
        """
        n = len(frame)
        blocks: list[np.ndarray] = []
        for enc in self.columns:
            if enc.column not in frame.columns:
                raise DataError(f"{source}: feature column '{enc.column}' is absent")
            column = frame[enc.column]
            if enc.kind == "numeric":
                values, text = _as_numbers(column)
                if text.any():
                    row = int(np.flatnonzero(text)[0])
                    raise DataError(
                        f"{source}: column '{enc.column}', {data_row(row)}: value {column.iloc[row]!r} is not a "
                        "number (the column is numeric)"
                    )
                isna = np.isnan(values)
                bad = np.flatnonzero(np.isinf(values))
                if bad.size:
                    raise DataError(
                        f"{source}: column '{enc.column}', {data_row(int(bad[0]))}: "
                        f"value {values[bad[0]]!r} is not finite"
                    )
                blocks.append(np.where(isna, 0.0, (values - enc.mean) / enc.std)[:, None])
            else:
                isna = column.isna().to_numpy()
                index = {c: i for i, c in enumerate(enc.categories)}
                keys = (None if m else _category_key(v) for v, m in zip(column.to_numpy(), isna))
                codes = np.array([index.get(k, -1) if k is not None else -1 for k in keys], dtype=np.int64)
                onehot = np.zeros((n, len(enc.categories)))
                known = np.flatnonzero(codes >= 0)
                onehot[known, codes[known]] = 1.0
                blocks.append(onehot)
            if enc.missing_indicator:
                blocks.append(isna.astype(np.float64)[:, None])
        return np.concatenate(blocks, axis=1).astype(np.float32) if blocks else np.zeros((n, 0), np.float32)

    def describe(self) -> dict[str, Any]:
        """Plain-data summary for :attr:`MultiTaskData.info`.

        Returns:
            ``columns`` (per input column, in order: ``column``, ``kind``, ``inputs`` (its
            feature columns), ``categories`` (0 for numeric), ``missing_indicator``),
            ``categorical`` (column -> categories), ``numeric`` (column -> mean and std),
            ``missing_indicators`` and ``feature_names``.
        """
        return {
            "columns": [
                {
                    "column": e.column,
                    "kind": e.kind,
                    "inputs": len(e.feature_names),
                    "categories": len(e.categories),
                    "missing_indicator": e.missing_indicator,
                }
                for e in self.columns
            ],
            "categorical": {e.column: list(e.categories) for e in self.columns if e.kind == "categorical"},
            "numeric": {e.column: {"mean": e.mean, "std": e.std} for e in self.columns if e.kind == "numeric"},
            "missing_indicators": [e.column for e in self.columns if e.missing_indicator],
            "feature_names": self.feature_names,
        }


def regression_labels(
    name: str, values: np.ndarray, splits: Mapping[str, np.ndarray], *, source: str, loss: str = "", metric: str = ""
) -> tuple[TaskSpec, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A regression task from a float column with NaN for missing values.

    The target is standardized with the mean and standard deviation (``ddof=0``) of its
    observed training values; missing values are masked and hold 0.

    Args:
        name: Task name.
        values: float64 ``[N]`` in the target's unit, NaN where unknown.
        splits: Per split name, row positions.
        source: Name of the data (for error messages).
        loss: Loss name (default by type when empty).
        metric: Metric name (default by type when empty).

    Returns:
        The task, and per split its float32 ``[n]`` labels and bool ``[n]`` mask.

    Raises:
        DataError: If no training row has a value.
    """
    train = values[splits["train"]]
    observed = train[~np.isnan(train)]
    if observed.size == 0:
        raise DataError(f"{source}: target '{name}' has no labelled training row")
    mean, std = float(observed.mean()), float(observed.std())
    std = std if std > 0 else 1.0
    task = TaskSpec(name, "regression", loss=loss, metric=metric, target_mean=mean, target_std=std)
    y, mask = {}, {}
    for split, rows in splits.items():
        v = values[rows]
        known = ~np.isnan(v)
        y[split] = torch.from_numpy(np.where(known, (v - mean) / std, 0.0).astype(np.float32))
        mask[split] = torch.from_numpy(known)
    return task, y, mask


def assemble(
    name: str,
    tasks: list[TaskSpec],
    x: np.ndarray,
    splits: Mapping[str, np.ndarray],
    y: Mapping[str, Mapping[str, torch.Tensor]],
    mask: Mapping[str, Mapping[str, torch.Tensor]],
    info: dict[str, Any],
) -> MultiTaskData:
    """Put a table's encoded features and per-task labels into a :class:`MultiTaskData`.

    Args:
        name: Data-set name.
        tasks: Task descriptions, in order.
        x: float32 ``[N, F]`` features of all rows.
        splits: Per split name, row positions into ``x``.
        y: Per task, per split, labels (already restricted to the split's rows).
        mask: Per task, per split, bool masks (same).
        info: Facts about the build; split sizes and the feature count are added.
    """
    parts = {
        split: Split(
            torch.from_numpy(np.ascontiguousarray(x[rows])),
            {t.name: y[t.name][split] for t in tasks},
            {t.name: mask[t.name][split] for t in tasks},
        )
        for split, rows in splits.items()
    }
    info = {**info, "sizes": {s: len(r) for s, r in splits.items()}, "num_features": int(x.shape[1])}
    return MultiTaskData(name, tasks, parts["train"], parts["val"], parts["test"], (int(x.shape[1]),), info)
