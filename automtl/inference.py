"""Predictions on raw data with an exported bundle: ``automtl predict`` and :func:`predict`.

The input is what the data set was built from, before any encoding:

* a **table bundle** (``csv``, ``star``) takes raw rows, a ``.csv`` or ``.parquet`` file or a
  pandas DataFrame, with the training table's feature columns (named; any order; other
  columns such as labels are ignored). The bundle's ``preprocess.json`` encodes them exactly
  as the training rows were (:class:`automtl.data.TableInput`). A category not seen in
  training sets no one-hot bit, as at training time, and is counted per column
  (``unseen="error"`` refuses it instead);
* an **array bundle** (``fashion_scenes``: ``[N, 1, 28, 28]`` float32, pixels in [0, 1]) takes a
  ``.npy`` file, a ``.npz`` file holding one array (or one named ``x``), or an array.

Inputs are read and run in chunks (a CSV through pandas' ``chunksize``, Parquet by record
batch, ``.npy`` memory-mapped), the network in batches of ``batch_size`` (2048, as
:func:`automtl.evaluate`, so a split's rows give bit-identical outputs), with a tqdm progress
bar on a terminal when the input has more than one chunk.

Output, one row per input row (:meth:`Predictions.table`):

============  ============================  ==========================================
task type     default column(s)             with ``proba``
============  ============================  ==========================================
binary        ``task``: the class label     ``task:<positive class>``: its probability
multiclass    ``task``: the class label     ``task:<class>`` per class: probabilities
multilabel    ``task``: positive labels,    ``task:<label>`` per label: probability of
              ``;``-separated               its positive class
regression    ``task``: the value in the target's original unit (both modes)
============  ============================  ==========================================

A binary label is the positive class where the logit is > 0 (probability > 0.5), as the
accuracy metric counts it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from automtl.build import restrict_network
from automtl.bundle import Bundle, default_mode, read_bundle
from automtl.data import ArrayInput, TableInput, TargetLabels
from automtl.data._tabular import require
from automtl.errors import DataError
from automtl.tasks import TaskSpec

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BATCH_SIZE", "CHUNK_ROWS", "PredictReport", "Predictions", "predict", "predict_file"]

#: Samples per forward pass (as in :func:`automtl.train.evaluate`).
BATCH_SIZE = 2048
#: Rows read at once from a file (a multiple of :data:`BATCH_SIZE`).
CHUNK_ROWS = 8 * BATCH_SIZE
_TABLE_SUFFIXES = (".csv", ".parquet")
_ARRAY_SUFFIXES = (".npy", ".npz")


@dataclass
class Predictions:
    """A model's outputs on some inputs.

    Attributes:
        tasks: The tasks predicted, in output order.
        targets: Per task, how its labels read (:class:`automtl.data.TargetLabels`).
        raw: Per task, the network's raw output: logits ``[N]`` / ``[N, C]`` or standardized
            regression values ``[N]``, float32 (what the metrics read).
        unseen: Per categorical column, the rows whose category was not seen in training.
    """

    tasks: list[TaskSpec]
    targets: dict[str, TargetLabels]
    raw: dict[str, np.ndarray]
    unseen: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.raw.values()))) if self.raw else 0

    def table(self, proba: bool = False) -> pd.DataFrame:
        """One column per task (see the module docstring): labels, or probabilities with ``proba``."""
        return output_table(self.raw, self.tasks, self.targets, proba)


@dataclass
class PredictReport:
    """What :func:`predict_file` wrote: rows, columns, the file, and unseen categories per column."""

    rows: int
    columns: list[str]
    out: Path
    unseen: dict[str, int]


def _label_names(labels: TargetLabels, width: int) -> list[str]:
    return list(labels.columns) if len(labels.columns) == width else [str(i) for i in range(width)]


def output_table(
    raw: Mapping[str, np.ndarray], tasks: Sequence[TaskSpec], targets: Mapping[str, TargetLabels], proba: bool
) -> pd.DataFrame:
    """Raw outputs to the output columns of the module docstring's table."""
    pd = require("pandas")
    columns: dict[str, Any] = {}
    for task in tasks:
        y, labels = raw[task.name], targets[task.name]
        if task.type == "regression":
            columns[task.name] = y.astype(np.float64) * task.target_std + task.target_mean
            continue
        classes = list(labels.classes or [])
        if task.type == "multiclass":
            if proba:
                p = torch.softmax(torch.from_numpy(y), dim=-1).numpy()
                columns.update({f"{task.name}:{c}": p[:, i] for i, c in enumerate(classes)})
            else:
                columns[task.name] = np.asarray(classes, dtype=object)[y.argmax(axis=1)]
        elif task.type == "binary":
            if proba:
                columns[f"{task.name}:{labels.positive}"] = torch.sigmoid(torch.from_numpy(y)).numpy()
            else:
                columns[task.name] = np.where(y > 0, classes[1], classes[0])
        else:  # multilabel
            names = _label_names(labels, y.shape[1])
            if proba:
                p = torch.sigmoid(torch.from_numpy(y)).numpy()
                columns.update({f"{task.name}:{name}": p[:, j] for j, name in enumerate(names)})
            else:
                columns[task.name] = [";".join(n for n, on in zip(names, row) if on) for row in y > 0]
    return pd.DataFrame(columns)


# ----------------------------------------------------------------------------- reading inputs
def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _table_chunks(source: TableInput, data: Any, chunk_rows: int, name: str) -> tuple[Iterator[pd.DataFrame], int | None]:
    """Raw rows in chunks, and the row count where it is known without reading everything."""
    pandas = require("pandas")
    if isinstance(data, pandas.DataFrame):
        return (data.iloc[i : i + chunk_rows] for i in range(0, len(data), chunk_rows)), len(data)
    path = Path(data)
    if _suffix(path) == ".parquet":
        require("pyarrow")
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises its own error types for a foreign file
            raise DataError(f"{name}: cannot read it as Parquet: {' '.join(str(exc).split())}") from exc
        absent = [c for c in source.columns if c not in file.schema_arrow.names]
        if absent:
            raise DataError(f"{name}: {source.absent_message(absent)}")
        batches = file.iter_batches(batch_size=chunk_rows, columns=source.columns)
        return (b.to_pandas() for b in batches), file.metadata.num_rows
    try:
        header = pandas.read_csv(path, nrows=0).columns
    except (ValueError, OSError) as exc:  # pandas' EmptyDataError is a ValueError
        raise DataError(f"{name}: cannot read it as CSV: {' '.join(str(exc).split())}") from exc
    absent = [c for c in source.columns if c not in header]
    if absent:
        raise DataError(f"{name}: {source.absent_message(absent)}")
    dtypes = {c: str for c in source.text_columns()}

    def chunks() -> Iterator[pd.DataFrame]:
        try:
            yield from pandas.read_csv(path, usecols=source.columns, dtype=dtypes, chunksize=chunk_rows)
        except ValueError as exc:  # ParserError: a malformed line (pandas names it)
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{name}: cannot read it as CSV: {' '.join(str(exc).split())}") from exc

    return chunks(), None


def _array(data: Any, name: str) -> np.ndarray:
    if isinstance(data, torch.Tensor):
        return data.detach().cpu().numpy()
    if isinstance(data, np.ndarray):
        return data
    path = Path(data)
    try:
        if _suffix(path) == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)  # type: ignore[no-any-return]
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if len(keys) != 1 and "x" not in keys:
                raise DataError(f"{name}: holds arrays {keys}; give one array, or name it 'x'")
            return archive["x" if "x" in keys else keys[0]]  # type: ignore[no-any-return]
    except (ValueError, OSError) as exc:  # a pickled object array, a truncated file
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{name}: cannot read it: {' '.join(str(exc).split())}") from exc


def _describe_input(opened: Bundle) -> str:
    source = opened.preprocess.input
    if isinstance(source, ArrayInput):
        shape = ", ".join(map(str, source.shape))
        span = f" in [{source.low:g}, {source.high:g}]" if source.low is not None and source.high is not None else ""
        return f"an array [N, {shape}] of float32{span} (.npy, or .npz)"
    return "a table of raw rows (.csv or .parquet)"


def _feature_chunks(
    opened: Bundle, data: Any, *, chunk_rows: int, unseen: str
) -> tuple[Iterator[tuple[np.ndarray, dict[str, int]]], int | None]:
    """Encoded float32 feature chunks with their unseen-category counts, and the total rows if known."""
    source = opened.preprocess.input
    name = str(data) if isinstance(data, (str, os.PathLike)) else f"input {type(data).__name__}"
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        expected = _TABLE_SUFFIXES if isinstance(source, TableInput) else _ARRAY_SUFFIXES
        if _suffix(path) not in expected:
            raise DataError(f"{name}: bundle {opened.path} takes {_describe_input(opened)}, not a '{path.suffix}' file")
        if not path.is_file():
            raise FileNotFoundError(f"input {path} does not exist")
    if isinstance(source, TableInput):
        pandas = require("pandas")
        if not isinstance(data, (str, os.PathLike, pandas.DataFrame)):
            raise DataError(f"{name}: bundle {opened.path} takes {_describe_input(opened)} or a DataFrame")
        frames, total = _table_chunks(source, data, chunk_rows, name)

        def encoded() -> Iterator[tuple[np.ndarray, dict[str, int]]]:
            first = 0
            for frame in frames:
                yield source.encode(frame, source=name, first_row=first, unseen=unseen)
                first += len(frame)

        return encoded(), total
    assert isinstance(source, ArrayInput)
    if isinstance(data, (np.ndarray, torch.Tensor, str, os.PathLike)):
        array = _array(data, name)
    else:
        raise DataError(f"{name}: bundle {opened.path} takes {_describe_input(opened)}")
    source.check_layout(array.shape, array.dtype, source=name)  # before reading any value

    def checked() -> Iterator[tuple[np.ndarray, dict[str, int]]]:
        for start in range(0, len(array), chunk_rows):
            yield source.check(array[start : start + chunk_rows], source=name, first_row=start), {}

    return checked(), len(array)


# ----------------------------------------------------------------------------- running
def _open(bundle: str | os.PathLike[str] | Bundle, device: str | None, trust_code: bool) -> Bundle:
    return bundle if isinstance(bundle, Bundle) else read_bundle(bundle, device, trust_code=trust_code)


def _task_subset(opened: Bundle, tasks: str | Sequence[str] | None) -> tuple[Any, list[TaskSpec]]:
    if tasks is None:
        return opened.net, opened.tasks
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    known = [t.name for t in opened.tasks]
    unknown = [t for t in names if t not in known]
    if unknown or not names:
        raise ValueError(f"task(s) {unknown or names} are not in bundle {opened.path}; its tasks are {known}")
    net = restrict_network(opened.net, opened.backbone, names).eval()
    return net, net.tasks


def _outputs(
    net: Any, chunks: Iterator[tuple[np.ndarray, dict[str, int]]], total: int | None, batch_size: int, progress: bool | None
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, int]]]:
    """Per chunk, the raw outputs (in batches) and its unseen counts; a progress bar over rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(net.parameters()).device
    disable = (not progress) if progress is not None else (None if total is None or total > CHUNK_ROWS else True)
    with tqdm(total=total, unit="row", desc="predict", disable=disable) as bar, torch.no_grad():
        for x, unseen in chunks:
            parts: dict[str, list[np.ndarray]] = {}
            batch = torch.from_numpy(np.ascontiguousarray(x) if x.flags.writeable else np.array(x))
            for start in range(0, len(batch), batch_size):
                for task, y in net(batch[start : start + batch_size].to(device)).items():
                    parts.setdefault(task, []).append(y.cpu().numpy())
            bar.update(len(batch))
            if parts:
                yield {t: np.concatenate(v) for t, v in parts.items()}, unseen


def predict(
    bundle: str | os.PathLike[str] | Bundle,
    data: Any,
    *,
    tasks: str | Sequence[str] | None = None,
    batch_size: int = BATCH_SIZE,
    unseen: str = "ignore",
    device: str | None = "cpu",
    progress: bool | None = None,
    trust_code: bool = False,
) -> Predictions:
    """Predict on raw data with an exported bundle (the Python twin of ``automtl predict``).

    Args:
        bundle: The bundle folder (or a :class:`~automtl.bundle.Bundle` already read).
        data: A ``.csv``/``.parquet`` file or a DataFrame of raw rows (table bundles), or a
            ``.npy``/``.npz`` file or an array (array bundles); see the module docstring.
        tasks: Only these tasks (a list, or ``"a,b"``); only the blocks they use are run.
        batch_size: Samples per forward pass.
        unseen: ``"ignore"`` (an unseen category sets no bit; counted) or ``"error"``.
        device: Where to run the network.
        progress: Show a progress bar (default: on a terminal, for inputs of several chunks).
        trust_code: Allow a ``module:function`` backbone in the bundle (runs code).

    Returns:
        :class:`Predictions`: raw outputs per task, unseen-category counts, and
        :meth:`Predictions.table` for labels, probabilities and values.

    Raises:
        FileNotFoundError: The bundle or the input is missing.
        DataError: The input does not fit the bundle: absent columns (all named), a value
            that is not a number in a numeric column (column and row named), an array of
            another shape or dtype (the expected one named), an unseen category with
            ``unseen="error"``.
        ValueError: An unknown task.
        BundleError: A malformed bundle, or an import path without ``trust_code``.
    """
    opened = _open(bundle, device, trust_code)
    net, specs = _task_subset(opened, tasks)
    chunks, total = _feature_chunks(opened, data, chunk_rows=CHUNK_ROWS, unseen=unseen)
    raw: dict[str, list[np.ndarray]] = {t.name: [] for t in specs}
    counts: dict[str, int] = {}
    for outputs, seen in _outputs(net, chunks, total, batch_size, progress):
        for task, y in outputs.items():
            raw[task].append(y)
        for column, n in seen.items():
            counts[column] = counts.get(column, 0) + n
    empty = {t.name: np.zeros((0, *([t.output_dim] if t.output_dim > 1 else [])), np.float32) for t in specs}
    arrays = {t: np.concatenate(v) if v else empty[t] for t, v in raw.items()}
    return Predictions(list(specs), {t.name: opened.preprocess.targets[t.name] for t in specs}, arrays, counts)


def predict_file(
    bundle: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    proba: bool = False,
    tasks: str | Sequence[str] | None = None,
    batch_size: int = BATCH_SIZE,
    chunk_rows: int = CHUNK_ROWS,
    unseen: str = "ignore",
    device: str | None = "cpu",
    progress: bool | None = None,
    trust_code: bool = False,
) -> PredictReport:
    """``automtl predict BUNDLE INPUT --out OUT``: stream ``data`` through the model into ``out``.

    ``out`` is a ``.csv`` or ``.parquet`` file, written chunk by chunk to a temporary file
    beside it that replaces ``out`` only when every row has been predicted (on an error,
    nothing is left). Arguments as in :func:`predict`; ``proba`` writes probabilities.

    Raises:
        ValueError: ``out`` is neither ``.csv`` nor ``.parquet``; see also :func:`predict`.
        FileNotFoundError: ``out``'s folder does not exist.
    """
    require("pandas")
    target = Path(out)
    if _suffix(target) not in _TABLE_SUFFIXES:
        raise ValueError(f"output {target}: give a .csv or .parquet file name")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"output {target}: folder {target.parent} does not exist")
    if target.is_dir():
        raise ValueError(f"output {target} is a directory; give a .csv or .parquet file name")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    opened = _open(bundle, device, trust_code)
    net, specs = _task_subset(opened, tasks)
    targets = {t.name: opened.preprocess.targets[t.name] for t in specs}
    chunks, total = _feature_chunks(opened, data, chunk_rows=chunk_rows, unseen=unseen)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    rows, counts, columns = 0, dict[str, int](), list[str]()
    writer: Any = None
    try:
        for outputs, seen in _outputs(net, chunks, total, batch_size, progress):
            frame = output_table(outputs, specs, targets, proba)
            if _suffix(target) == ".csv":
                frame.to_csv(tmp, mode="w" if rows == 0 else "a", header=rows == 0, index=False)
            else:
                import pyarrow as pa
                import pyarrow.parquet as pq

                table = pa.Table.from_pandas(frame, preserve_index=False)
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
            rows += len(frame)
            columns = list(frame.columns)
            for column, n in seen.items():
                counts[column] = counts.get(column, 0) + n
        if rows == 0:  # a header-only input: still a well-formed (empty) output
            frame = output_table(
                {t.name: np.zeros((0, *([t.output_dim] if t.output_dim > 1 else [])), np.float32) for t in specs},
                specs, targets, proba,
            )  # fmt: skip
            columns = list(frame.columns)
            if _suffix(target) == ".csv":
                frame.to_csv(tmp, index=False)
            else:
                frame.to_parquet(tmp, index=False)
        if writer is not None:
            writer.close()
            writer = None
        tmp.chmod(default_mode())  # mkstemp's file is private; the output is not
        os.replace(tmp, target)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return PredictReport(rows, columns, target, counts)
