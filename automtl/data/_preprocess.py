"""How a raw input becomes a model's input tensor, and how its labels read, as plain data.

A data loader fits this on the training split and hands it on as
:attr:`MultiTaskData.preprocess <automtl.data.MultiTaskData.preprocess>`; an exported bundle
keeps it (``preprocess.json``, see :mod:`automtl.bundle`) so that :func:`automtl.predict` takes
raw rows on another machine with the bundle folder alone. Everything here is numbers, strings
and lists: reading it back imports nothing and runs nothing but this module.

* :class:`TableInput` (tables: ``csv``, ``star``): the input columns in order, with each
  column's :class:`~automtl.data._tabular.ColumnEncoding` (standardization, category
  vocabulary, missing-value flag), the type each column had in the training table, and the
  named conversions applied before encoding (:data:`CONVERTERS`, e.g. STAR's birth quarter).
* :class:`ArrayInput` (images, and data sets without a preprocessing of their own): the array
  a model takes, ``[N, *shape]`` float32, with its value range. Fashion-MNIST scenes take
  ``[N, 1, 28, 28]`` with pixels in [0, 1].
* :class:`TargetLabels`: per task, its label column(s) in the raw table and its classes in
  index order (a binary task's are ``(negative, positive)``), so predictions read in the
  user's own labels; regression values come back in their original unit (the scaling is in
  the task's :class:`~automtl.tasks.TaskSpec`).

**Unseen categories.** A category not seen in the training rows sets no one-hot bit (and no
missing flag): the encoding every validation and test row got at training time, so
predictions on the training table reproduce its metrics. :meth:`TableInput.encode` counts
such values per column (``unseen="ignore"``, the default) or refuses them, naming column, row
and value (``unseen="error"``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from automtl.data._tabular import ColumnEncoding, TabularEncoder, data_row, require
from automtl.errors import DataError
from automtl.tasks import TASK_TYPES, TaskSpec

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CONVERTERS",
    "RAW_TYPES",
    "UNSEEN_POLICIES",
    "ArrayInput",
    "Preprocess",
    "TableInput",
    "TargetLabels",
    "raw_types",
    "table_preprocess",
    "year_quarter",
]

#: The type of a raw input column in the training table: read back the same way at prediction.
RAW_TYPES: tuple[str, ...] = ("number", "bool", "text")
#: What :meth:`TableInput.encode` does with a category not seen in training.
UNSEEN_POLICIES: tuple[str, ...] = ("ignore", "error")

_QUARTER = re.compile(r"^\s*(\d{4})\s*Q([1-4])\s*$")


def year_quarter(values: pd.Series, *, source: str, column: str, first_row: int = 0) -> np.ndarray:
    """``"1979 Q3"`` to 1979.5: the year plus the quarter's start, ``(q - 1) / 4``; missing stays NaN.

    Raises:
        DataError: A value not like ``"1979 Q3"`` (names the column and the 1-based data row).
    """
    out = np.full(len(values), np.nan)
    for i, value in enumerate(values.to_numpy()):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        match = _QUARTER.match(str(value))
        if match is None:
            raise DataError(f"{source}: column '{column}', {data_row(first_row + i)}: value {value!r} is not like '1979 Q3'")
        out[i] = int(match.group(1)) + (int(match.group(2)) - 1) / 4
    return out


#: Conversions a table's raw column goes through before encoding, by name (a closed set: a
#: bundle names one of these, never code).
CONVERTERS: dict[str, Callable[..., np.ndarray]] = {"year_quarter": year_quarter}


def raw_types(frame: pd.DataFrame) -> dict[str, str]:
    """Per column of ``frame``, its :data:`RAW_TYPES` entry (``number``, ``bool`` or ``text``)."""
    pd = require("pandas")
    out = {}
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_bool_dtype(column):
            out[str(name)] = "bool"
        elif pd.api.types.is_numeric_dtype(column):
            out[str(name)] = "number"
        else:
            out[str(name)] = "text"
    return out


# ----------------------------------------------------------------------------- plain data in and out
def _frozen(value: Any) -> Any:
    """Lists (from JSON) back to the tuples a frozen dataclass holds."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _fits(value: Any, default: Any) -> bool:
    """Whether a value read from a file has the plain type of a field's default."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple):
        return isinstance(value, list)
    return True


def _dataclass_from(cls: type, d: Any, where: str) -> Any:
    """``cls(**d)`` for a frozen dataclass of plain fields, checked generically field by field.

    Unknown keys are refused (a newer automtl may have added a field whose meaning this one
    would silently drop); a value must have its field default's plain type.
    """
    if not isinstance(d, Mapping):
        raise DataError(f"{where}: expected a mapping, got {type(d).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise DataError(f"{where}: unknown field(s) {unknown} (written by a newer automtl?); expected some of {sorted(known)}")
    for name, spec in known.items():
        if name not in d:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise DataError(f"{where}: field '{name}' is missing")
            continue
        if spec.default is not dataclasses.MISSING and d[name] is not None and not _fits(d[name], spec.default):
            raise DataError(f"{where}: field '{name}' has {d[name]!r}, expected a {type(spec.default).__name__}")
    try:
        return cls(**{k: _frozen(v) for k, v in d.items()})
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: {exc}") from exc


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise DataError(f"{where}: expected a list of positive integers, got {value!r}")
    return tuple(value)


# ----------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class TargetLabels:
    """How one task's labels read in the raw data.

    Attributes:
        type: The task type (:data:`automtl.tasks.TASK_TYPES`).
        columns: Its label column(s) in a raw table (a multilabel task has one per label);
            empty where labels are no table column (image data sets).
        classes: Class labels in index order: ``(negative, positive)`` for binary and
            multilabel tasks, every class of a multiclass task; ``None`` for regression.
        unit: The unit of a regression target, where known.
    """

    type: str
    columns: tuple[str, ...] = ()
    classes: tuple[Any, ...] | None = None
    unit: str = ""

    def __post_init__(self) -> None:
        if self.type not in TASK_TYPES:
            raise DataError(f"type: expected one of {list(TASK_TYPES)}, got {self.type!r}")
        if self.classes is not None and not isinstance(self.classes, tuple):
            raise DataError(f"classes: expected a list of class labels, got {self.classes!r}")
        if self.type in ("binary", "multilabel") and self.classes is not None and len(self.classes) != 2:
            raise DataError(f"classes: a {self.type} task has exactly 2 classes (negative, positive), got {self.classes!r}")

    @property
    def positive(self) -> Any:
        """The positive class of a binary or multilabel task."""
        if self.type not in ("binary", "multilabel") or not self.classes:
            raise ValueError(f"a {self.type} task has no positive class")
        return self.classes[1]

    @classmethod
    def for_task(cls, task: TaskSpec) -> TargetLabels:
        """Labels of a task whose data set says nothing more: 0/1, class indices or names."""
        if task.type in ("binary", "multilabel"):
            return cls(task.type, classes=(0, 1))
        if task.type == "multiclass":
            return cls(task.type, classes=task.classes or tuple(range(task.num_classes or 0)))
        return cls(task.type)


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class TableInput:
    """A table's raw columns to the feature matrix a model reads, fitted on the training rows.

    Attributes:
        encoder: Per input column, in order, its :class:`~automtl.data._tabular.ColumnEncoding`.
        raw_types: Per input column, its type in the training table (:data:`RAW_TYPES`): a
            ``text`` column is read as text at prediction, so ``"01"`` stays ``"01"``.
        converters: Per column, the name of a conversion in :data:`CONVERTERS` applied to the
            raw values before encoding.
    """

    kind: ClassVar[str] = "table"
    encoder: TabularEncoder
    raw_types: Mapping[str, str] = field(default_factory=dict)
    converters: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for column, name in self.converters.items():
            if name not in CONVERTERS:
                raise DataError(f"column '{column}': unknown conversion '{name}'; known: {sorted(CONVERTERS)}")
        for column, kind in self.raw_types.items():
            if kind not in RAW_TYPES:
                raise DataError(f"column '{column}': unknown raw type '{kind}'; expected one of {list(RAW_TYPES)}")

    @property
    def columns(self) -> list[str]:
        """The raw input columns, in the order the model reads them."""
        return [enc.column for enc in self.encoder.columns]

    @property
    def n_features(self) -> int:
        return len(self.encoder.feature_names)

    def absent_message(self, absent: Sequence[str]) -> str:
        """What to say when input columns are absent: each of them, and how many the model reads."""
        shown = list(absent[:20]) + ([f"... ({len(absent)} in all)"] if len(absent) > 20 else [])
        listed = ", ".join(self.columns[:8]) + (", ..." if len(self.columns) > 8 else "")
        return f"input column(s) {shown} absent; the model reads {len(self.columns)} column(s): {listed}"

    def text_columns(self) -> list[str]:
        """Input columns to read as text (``dtype=str``) from a CSV."""
        return [c for c in self.columns if self.raw_types.get(c) == "text"]

    def encode(
        self, frame: pd.DataFrame, *, source: str, first_row: int = 0, unseen: str = "ignore"
    ) -> tuple[np.ndarray, dict[str, int]]:
        """Encode raw rows exactly as the training rows were.

        Args:
            frame: Raw rows; other columns (labels, identifiers) are ignored.
            source: Names the input in error messages.
            first_row: Position of ``frame``'s first row in the whole input (for row numbers).
            unseen: ``"ignore"`` (no category bit, counted) or ``"error"``.

        Returns:
            float32 ``[N, F]`` features, and per categorical column the number of rows with a
            category not seen in training (columns without any are left out).

        Raises:
            DataError: Absent columns (all named), a value that is not a number in a numeric
                column or is infinite, or an unseen category with ``unseen="error"`` (column,
                1-based data row and value named).
        """
        pd = require("pandas")
        if unseen not in UNSEEN_POLICIES:
            raise ValueError(f"unseen must be one of {list(UNSEEN_POLICIES)}, got {unseen!r}")
        absent = [c for c in self.columns if c not in frame.columns]
        if absent:
            raise DataError(f"{source}: {self.absent_message(absent)}")
        frame = frame.loc[:, self.columns].copy()
        for column, name in self.converters.items():
            frame[column] = CONVERTERS[name](frame[column], source=source, column=column, first_row=first_row)
        for enc in self.encoder.columns:
            series = frame[enc.column]
            if enc.kind != "numeric" or pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
                continue
            numbers = pd.to_numeric(series, errors="coerce")
            bad = (series.notna() & numbers.isna()).to_numpy()
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"{source}: column '{enc.column}', {data_row(first_row + row)}: value {series.iloc[row]!r} is not "
                    f"a number; the model reads '{enc.column}' as a number"
                )
            frame[enc.column] = numbers
        try:
            x = self.encoder.transform(frame, source=source)
        except DataError as exc:  # its rows count from this chunk's start; say which chunk
            raise DataError(f"{exc} (rows counted from data row {first_row + 1})" if first_row else str(exc)) from exc
        counts: dict[str, int] = {}
        start = 0
        for enc in self.encoder.columns:
            width = len(enc.feature_names)
            if enc.kind == "categorical":
                series = frame[enc.column]
                block = x[:, start : start + len(enc.categories)]
                rows = np.flatnonzero((block.sum(axis=1) == 0) & series.notna().to_numpy())
                if rows.size and unseen == "error":
                    shown = list(enc.categories[:10]) + (["..."] if len(enc.categories) > 10 else [])
                    raise DataError(
                        f"{source}: column '{enc.column}', {data_row(first_row + int(rows[0]))}: category "
                        f"{series.iloc[int(rows[0])]!r} was not seen in training (known: {shown})"
                    )
                if rows.size:
                    counts[enc.column] = int(rows.size)
            start += width
        return x, counts


@dataclass(frozen=True)
class ArrayInput:
    """An array input: ``[N, *shape]`` float32, optionally within ``[low, high]``.

    Attributes:
        shape: One sample's shape (``(1, 28, 28)`` for Fashion-MNIST scenes).
        low, high: The range of the values, where the data set has one (pixels: 0 and 1).
        description: What one sample is.
    """

    kind: ClassVar[str] = "array"
    shape: tuple[int, ...]
    low: float | None = None
    high: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise DataError(f"{name}: expected a finite number or null, got {value!r}")

    def _span(self) -> str:
        return f" in [{self.low:g}, {self.high:g}]" if self.low is not None and self.high is not None else ""

    def check_layout(self, shape: Sequence[int], dtype: Any, *, source: str) -> None:
        """Check an array's shape and dtype before reading its values.

        Raises:
            DataError: Another shape (the expected one is named), or a dtype that is not floating point.
        """
        expected = "[N, " + ", ".join(map(str, self.shape)) + "]"
        if len(shape) != len(self.shape) + 1 or tuple(shape[1:]) != self.shape:
            raise DataError(f"{source}: expected an array of shape {expected}, got {list(shape)}")
        if not np.issubdtype(dtype, np.floating):
            raise DataError(f"{source}: expected floating-point values{self._span()} (float32), got dtype {np.dtype(dtype)}")

    def check(self, array: Any, *, source: str, first_row: int = 0) -> np.ndarray:
        """``array`` as float32 ``[N, *shape]``, checked.

        Raises:
            DataError: See :meth:`check_layout`; or a non-finite value or one outside
                ``[low, high]`` (its sample is named, 0-based).
        """
        a = np.asarray(array)
        self.check_layout(a.shape, a.dtype, source=source)
        span = self._span()
        a = a.astype(np.float32, copy=False)
        flat = a.reshape(len(a), math.prod(self.shape))
        low = -np.inf if self.low is None else self.low
        high = np.inf if self.high is None else self.high
        ok = np.isfinite(flat) & (flat >= low) & (flat <= high)
        bad = ~ok.all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            value = float(flat[i][~ok[i]][0])
            raise DataError(f"{source}: sample {first_row + i} (0-based) holds {value!r}; expected finite values{span}")
        return a


# ----------------------------------------------------------------------------- the whole
@dataclass(frozen=True)
class Preprocess:
    """A model's input preprocessing and its tasks' labels (see the module docstring).

    Attributes:
        input: A :class:`TableInput` or an :class:`ArrayInput`.
        targets: Per task name, its :class:`TargetLabels`.
    """

    input: TableInput | ArrayInput
    targets: Mapping[str, TargetLabels]

    @classmethod
    def for_arrays(cls, tasks: Sequence[TaskSpec], shape: Sequence[int], **input_options: Any) -> Preprocess:
        """An :class:`ArrayInput` of ``shape`` and default labels (:meth:`TargetLabels.for_task`)."""
        return cls(ArrayInput(tuple(int(d) for d in shape), **input_options), {t.name: TargetLabels.for_task(t) for t in tasks})

    def complete(self, tasks: Sequence[TaskSpec]) -> Preprocess:
        """Every classification task with its classes: those a data set left out come from the
        task (a multiclass task's names, or class indices; 0 and 1 for binary and multilabel)."""
        targets = dict(self.targets)
        for task in tasks:
            labels = targets.get(task.name) or TargetLabels(task.type)
            if labels.classes is None and task.type != "regression":
                labels = dataclasses.replace(labels, classes=TargetLabels.for_task(task).classes)
            targets[task.name] = labels
        return Preprocess(self.input, targets)

    def restrict(self, tasks: Sequence[str]) -> Preprocess:
        """The same input, with the labels of ``tasks`` only."""
        return Preprocess(self.input, {t: self.targets[t] for t in tasks})

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (every field of every :class:`ColumnEncoding`, generically)."""
        if isinstance(self.input, TableInput):
            source: dict[str, Any] = {
                "kind": "table",
                "columns": [dataclasses.asdict(enc) for enc in self.input.encoder.columns],
                "raw_types": dict(self.input.raw_types),
                "converters": dict(self.input.converters),
            }
        else:
            source = {"kind": "array", **dataclasses.asdict(self.input)}
        return {"input": source, "targets": {t: dataclasses.asdict(labels) for t, labels in self.targets.items()}}

    @classmethod
    def from_dict(cls, d: Any) -> Preprocess:
        """Inverse of :meth:`to_dict`.

        Raises:
            DataError: A missing or unknown key, or a value of the wrong type (the key is named).
        """
        if not isinstance(d, Mapping) or set(d) != {"input", "targets"}:
            raise DataError(f"expected the keys ['input', 'targets'], got {sorted(d) if isinstance(d, Mapping) else d!r}")
        raw_input = d["input"]
        if not isinstance(raw_input, Mapping):
            raise DataError(f"input: expected a mapping, got {type(raw_input).__name__}")
        kind = raw_input.get("kind")
        if kind == "table":
            extra = sorted(set(raw_input) - {"kind", "columns", "raw_types", "converters"})
            if extra:
                raise DataError(f"input: unknown key(s) {extra}")
            columns = raw_input.get("columns")
            if not isinstance(columns, list) or not columns:
                raise DataError("input.columns: expected a non-empty list of column encodings")
            encodings = tuple(_dataclass_from(ColumnEncoding, c, f"input.columns[{i}]") for i, c in enumerate(columns))
            for key in ("raw_types", "converters"):
                if not isinstance(raw_input.get(key, {}), Mapping):
                    raise DataError(f"input.{key}: expected a mapping of column to name")
            try:
                source: TableInput | ArrayInput = TableInput(
                    TabularEncoder(encodings), dict(raw_input.get("raw_types", {})), dict(raw_input.get("converters", {}))
                )
            except DataError as exc:
                raise DataError(f"input: {exc}") from exc
        elif kind == "array":
            body = {k: v for k, v in raw_input.items() if k != "kind"}
            body["shape"] = list(_shape(body.get("shape"), "input.shape"))
            source = _dataclass_from(ArrayInput, body, "input")
        else:
            raise DataError(f"input.kind: expected 'table' or 'array', got {kind!r}")
        targets = d["targets"]
        if not isinstance(targets, Mapping):
            raise DataError("targets: expected a mapping of task name to labels")
        labels = {str(t): _dataclass_from(TargetLabels, v, f"targets.{t}") for t, v in targets.items()}
        unnamed = [t for t, v in labels.items() if v.type != "regression" and not v.classes]
        if unnamed:
            raise DataError(f"targets.{unnamed[0]}: a {labels[unnamed[0]].type} task needs its classes")
        return cls(source, labels)


def table_preprocess(
    encoder: TabularEncoder,
    features: pd.DataFrame,
    targets: Mapping[str, Mapping[str, Any]],
    *,
    converters: Mapping[str, str] | None = None,
    units: Mapping[str, str] | None = None,
) -> Preprocess:
    """The :class:`Preprocess` of a table data set.

    Args:
        encoder: Fitted on the training rows.
        features: The raw feature columns as read (before any conversion), for their types.
        targets: Per task, ``{"type", "columns", "classes"}`` (``classes`` may be ``None``).
        converters: Per column, a conversion name in :data:`CONVERTERS`.
        units: Per regression task, its unit.
    """
    labels = {
        str(name): TargetLabels(
            spec["type"],
            tuple(str(c) for c in spec.get("columns") or ()),
            None if spec.get("classes") is None else tuple(spec["classes"]),
            (units or {}).get(str(name), ""),
        )
        for name, spec in targets.items()
    }
    return Preprocess(TableInput(encoder, raw_types(features), dict(converters or {})), labels)
