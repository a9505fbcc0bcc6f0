"""A short text summary of a loaded data set: splits, labels per task, and how inputs are encoded."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from automtl.data._base import SPLITS, MultiTaskData
from automtl.errors import RegistryError
from automtl.metrics import direction_of

__all__ = ["describe_data"]

_WIDTH = 100


def describe_data(data: MultiTaskData, splits: Sequence[str] = SPLITS) -> str:
    """What was loaded, in a few lines: rows per split, labelled rows per task and split (count
    and share of the split), each task's type and metric, and the inputs.

    A search describes ``("train", "val")`` only: the test split stays unread until ``export``.

    Inputs are described from ``data.info["encoding"]`` when the loader records a
    :class:`~automtl.data._tabular.TabularEncoder`'s ``describe()`` there (``csv``, ``star``):
    each column's encoding (numeric, standardized; categorical, one-hot with its number of
    categories, marked ``declared`` when named in ``data.info["categorical"]``; a missing-value
    indicator) and the total input width ("9 inputs from 4 columns"). Other data sets (images,
    a user's own loader) show the input shape.

    Args:
        data: A loaded data set.
        splits: The splits to describe (others are named as not read).

    Returns:
        Lines of text (no trailing newline).
    """
    sizes = {s: len(data.split(s)) for s in splits}
    source = data.info.get("source")
    unread = [s for s in SPLITS if s not in splits]
    lines = [
        f"data '{data.name}'{f' ({source})' if source else ''}: {sum(sizes.values())} rows: "
        + ", ".join(f"{s} {n}" for s, n in sizes.items())
        + (f" ({', '.join(unread)}: not read until export)" if unread else "")
    ]
    lines += _task_table(data, sizes)
    lines += _inputs(data)
    return "\n".join(lines)


def _task_table(data: MultiTaskData, sizes: Mapping[str, int]) -> list[str]:
    targets = data.info.get("targets")
    rows = [["task", "type", "metric", *(f"labelled {s}" for s in sizes)]]
    for task in data.tasks:
        kind = task.type
        if task.type in ("multiclass", "multilabel"):
            noun = "classes" if task.type == "multiclass" else "labels"
            inferred = isinstance(targets, Mapping) and bool(targets.get(task.name, {}).get("classes_inferred"))
            kind += f" ({task.num_classes} {noun}{', inferred' if inferred else ''})"
        try:
            better = "higher" if direction_of(task.metric) == "maximize" else "lower"
            metric = f"{task.metric} ({better} is better)"
        except RegistryError:
            metric = task.metric
        counts = []
        for s in sizes:
            n = int(data.split(s).mask[task.name].sum())
            share = f"{100 * n / sizes[s]:.0f}%" if sizes[s] else "-"
            counts.append(f"{n} ({share})")
        rows.append([task.name, kind, metric, *counts])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]  # fmt: skip


def _inputs(data: MultiTaskData) -> list[str]:
    encoding = data.info.get("encoding")
    columns = encoding.get("columns") if isinstance(encoding, Mapping) else None
    shape = tuple(data.input_shape)
    if not columns:
        size = math.prod(shape)
        if len(shape) >= 2:
            return [f"inputs: images of shape {'x'.join(map(str, shape))} ({size} values per sample)"]
        return [f"inputs: {size} per sample (shape {list(shape)})"]
    width = sum(int(c["inputs"]) for c in columns)
    out = [f"inputs: {width} from {len(columns)} column{'s' if len(columns) != 1 else ''}"]
    numeric = [c["column"] for c in columns if c["kind"] == "numeric"]
    categorical = [c for c in columns if c["kind"] == "categorical"]
    flagged = [c["column"] for c in columns if c["missing_indicator"]]
    if numeric:
        out += _listed("numeric, standardized", numeric, len(numeric))
    if categorical:
        declared = set(data.info.get("categorical") or ())
        one_hot = sum(int(c["categories"]) for c in categorical)
        names = [f"{c['column']} ({c['categories']}{', declared' if c['column'] in declared else ''})" for c in categorical]
        out += _listed(f"categorical, one-hot ({one_hot} inputs; (n) = categories)", names, len(categorical))
    if flagged and len(flagged) == len(columns):
        out.append(f"  missing-value indicator (1 input each) on every column ({len(flagged)} inputs)")
    elif flagged:
        out += _listed("missing-value indicator (1 input each)", flagged, len(flagged))
    return out


def _listed(title: str, names: Sequence[Any], count: int) -> list[str]:
    """``  title, N columns: a, b, c``, wrapped between names at :data:`_WIDTH` characters."""
    lines = [f"  {title}, {count} column{'s' if count != 1 else ''}:"]
    for i, name in enumerate(names):
        item = f" {name}{',' if i < len(names) - 1 else ''}"
        if len(lines[-1]) + len(item) > _WIDTH:
            lines.append("     ")
        lines[-1] += item
    return lines
