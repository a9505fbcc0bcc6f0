"""Predictions on raw data: ``automtl predict`` and :func:`automtl.predict` reproduce ``evaluate`` exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import automtl
from automtl.bundle import read_config
from automtl.data._tabular import random_split
from automtl.errors import DataError
from automtl.experiment import prepare
from automtl.inference import predict_file
from automtl.metrics import compute_metric
from tests import bundles
from tests.test_cli import run

pytestmark = pytest.mark.slow  # every test here reads a bundle from a real (one-trial) search


def _test_split(bundle: Path) -> automtl.data.Split:
    return prepare(read_config(bundle)).data.test


def _metrics_of(predictions: automtl.Predictions, split: automtl.data.Split) -> dict[str, float]:
    """Each task's metric computed from the predictions' raw outputs, as ``evaluate`` computes it."""
    return {
        t.name: compute_metric(t, torch.from_numpy(predictions.raw[t.name]), split.y[t.name], split.mask[t.name])
        for t in predictions.tasks
    }


def _iris_test_rows(tmp_path: Path) -> Path:
    """The test split's rows of iris.csv, copied line by line from the file."""
    options = bundles.csv_example_raw()["data"]["options"]
    rows = random_split(150, val_fraction=options["val_fraction"], test_fraction=options["test_fraction"],
                        seed=options["seed"], source="iris")["test"]  # fmt: skip
    return bundles.raw_lines(bundles.IRIS, rows, tmp_path / "iris_test.csv")


def test_csv_example_predict_reproduces_evaluate_exactly(csv_bundle: Path, tmp_path: Path) -> None:
    rows = _iris_test_rows(tmp_path)
    expected = automtl.evaluate_bundle(csv_bundle, "test")
    predictions = automtl.predict(csv_bundle, rows)
    assert len(predictions) == len(_test_split(csv_bundle)) == 30
    assert _metrics_of(predictions, _test_split(csv_bundle)) == expected
    # the command line: class labels and centimetres, read back from its output file
    code, out, err = run("predict", str(csv_bundle), str(rows), "--out", str(tmp_path / "pred.csv"))
    assert code == 0, err
    assert "wrote 30 row(s) to" in out and "columns species, petal_width (class labels;" in out
    written, truth = pd.read_csv(tmp_path / "pred.csv"), pd.read_csv(rows)
    assert list(written.columns) == ["species", "petal_width"]
    assert set(written["species"]) <= {"setosa", "versicolor", "virginica"}
    assert (written["species"] == truth["species"]).mean() == expected["species"]  # accuracy, exactly
    known = truth["petal_width"].notna()
    mae = (written["petal_width"][known] - truth["petal_width"][known]).abs().mean()
    assert mae == pytest.approx(expected["petal_width"], rel=1e-5)  # in cm (float32 outputs)


def test_categorical_table_with_missing_labels_and_an_unseen_category(
    categorical_bundle: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    bundle, table, rows = categorical_bundle
    test_rows = bundles.raw_lines(table, rows["test"], tmp_path / "test.csv")
    split = _test_split(bundle)
    assert all(not bool(split.mask[t].all()) for t in ("kind", "level", "score"))  # some test labels are missing
    expected = automtl.evaluate_bundle(bundle, "test")
    predictions = automtl.predict(bundle, test_rows)
    assert _metrics_of(predictions, split) == expected
    purple = int((pd.read_csv(test_rows)["color"] == "purple").sum())
    assert purple > 0 and predictions.unseen == {"color": purple}
    table_frame = predictions.table()
    assert set(table_frame["kind"]) <= {"no", "yes"} and set(table_frame["level"]) <= {"low", "mid", "high"}
    proba = predictions.table(proba=True)
    assert list(proba.columns) == ["kind:yes", "level:low", "level:mid", "level:high", "score"]
    np.testing.assert_allclose(proba[["level:low", "level:mid", "level:high"]].sum(axis=1), 1.0, rtol=1e-6)
    with pytest.raises(DataError, match=r"column 'color', data row \d+ .*category 'purple' was not seen in training"):
        automtl.predict(bundle, test_rows, unseen="error")
    code, out, err = run("predict", str(bundle), str(test_rows), "--out", str(tmp_path / "p.parquet"), "--proba")
    assert code == 0, err
    assert f"rows per column: 'color' {purple}" in out
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "p.parquet"), proba)


def test_scenes_npy_predict_reproduces_evaluate_exactly(scenes_bundle: Path, tmp_path: Path) -> None:
    split = _test_split(scenes_bundle)
    np.save(tmp_path / "scenes.npy", split.x.numpy())
    expected = automtl.evaluate_bundle(scenes_bundle, "test")
    predictions = automtl.predict(scenes_bundle, tmp_path / "scenes.npy")
    assert _metrics_of(predictions, split) == expected
    np.savez(tmp_path / "scenes.npz", x=split.x.numpy())
    code, _, err = run("predict", str(scenes_bundle), str(tmp_path / "scenes.npz"), "--out", str(tmp_path / "p.csv"))
    assert code == 0, err
    written = pd.read_csv(tmp_path / "p.csv")
    assert len(written) == len(split) and len(written.columns) == 11
    assert set(written["has_bag"]) <= {0, 1}
    count = split.y["count"] * predictions.tasks[-1].target_std + predictions.tasks[-1].target_mean
    assert float((torch.tensor(written["count"].to_numpy()) - count.double()).abs().mean()) < 2.0  # items, original unit


def test_chunks_and_batches_do_not_change_predictions(categorical_bundle: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    bundle, table, _ = categorical_bundle
    whole = predict_file(bundle, table, tmp_path / "whole.csv", proba=True)
    chunked = predict_file(bundle, table, tmp_path / "chunked.csv", proba=True, chunk_rows=7, batch_size=3)
    assert whole.rows == chunked.rows == 240 and whole.unseen == chunked.unseen
    # other batch sizes may change float32 sums in their last bits, nothing more
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "whole.csv"), pd.read_csv(tmp_path / "chunked.csv"), rtol=1e-5)
    frame = pd.read_csv(table)
    assert automtl.predict(bundle, frame).table().equals(automtl.predict(bundle, table).table())


def test_task_subset(csv_bundle: Path, tmp_path: Path) -> None:
    rows = _iris_test_rows(tmp_path)
    full = automtl.predict(csv_bundle, rows)
    only = automtl.predict(csv_bundle, rows, tasks="petal_width")
    assert [t.name for t in only.tasks] == ["petal_width"]
    assert np.array_equal(only.raw["petal_width"], full.raw["petal_width"])
    code, _, err = run("predict", str(csv_bundle), str(rows), "--out", str(tmp_path / "p.csv"), "--tasks", "sepal")
    assert code == 2 and "task(s) ['sepal'] are not in bundle" in err and "['species', 'petal_width']" in err


def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2 and out == ""
    assert err.startswith("automtl predict: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_input_errors_name_the_culprit_and_leave_no_file(csv_bundle: Path, scenes_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    iris = pd.read_csv(bundles.IRIS)
    iris.drop(columns=["sepal_width", "petal_length"]).to_csv(tmp_path / "missing.csv", index=False)
    err = _one_line_error(*run("predict", str(csv_bundle), str(tmp_path / "missing.csv"), "--out", str(out)))
    assert "input column(s) ['sepal_width', 'petal_length'] absent" in err
    bad = iris.astype({"sepal_width": object})
    bad.loc[6, "sepal_width"] = "wide"
    bad.to_csv(tmp_path / "dtype.csv", index=False)
    err = _one_line_error(*run("predict", str(csv_bundle), str(tmp_path / "dtype.csv"), "--out", str(out)))
    assert "column 'sepal_width', data row 7 (1-based, header excluded): value 'wide' is not a number" in err
    np.save(tmp_path / "flat.npy", np.zeros((4, 784), np.float32))
    err = _one_line_error(*run("predict", str(scenes_bundle), str(tmp_path / "flat.npy"), "--out", str(out)))
    assert "expected an array of shape [N, 1, 28, 28], got [4, 784]" in err
    np.save(tmp_path / "bytes.npy", np.zeros((4, 1, 28, 28), np.uint8))
    err = _one_line_error(*run("predict", str(scenes_bundle), str(tmp_path / "bytes.npy"), "--out", str(out)))
    assert "expected floating-point values in [0, 1] (float32), got dtype uint8" in err
    np.save(tmp_path / "big.npy", np.full((4, 1, 28, 28), 255.0, np.float32))
    err = _one_line_error(*run("predict", str(scenes_bundle), str(tmp_path / "big.npy"), "--out", str(out)))
    assert "sample 0 (0-based) holds 255.0; expected finite values in [0, 1]" in err
    np.savez(tmp_path / "two.npz", a=np.zeros(1), b=np.zeros(1))
    err = _one_line_error(*run("predict", str(scenes_bundle), str(tmp_path / "two.npz"), "--out", str(out)))
    assert "holds arrays ['a', 'b']; give one array, or name it 'x'" in err
    err = _one_line_error(*run("predict", str(scenes_bundle), str(tmp_path / "missing.csv"), "--out", str(out)))
    assert "takes an array [N, 1, 28, 28] of float32 in [0, 1] (.npy, or .npz), not a '.csv' file" in err
    err = _one_line_error(*run("predict", str(csv_bundle), str(tmp_path / "flat.npy"), "--out", str(out)))
    assert "takes a table of raw rows (.csv or .parquet)" in err
    err = _one_line_error(*run("predict", str(csv_bundle), str(bundles.IRIS), "--out", str(tmp_path / "p.txt")))
    assert "give a .csv or .parquet file name" in err
    err = _one_line_error(*run("predict", str(csv_bundle), str(bundles.IRIS), "--out", str(tmp_path / "no" / "p.csv")))
    assert "does not exist" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "big.npy", "bytes.npy", "dtype.csv", "flat.npy", "missing.csv", "two.npz"
    ]  # fmt: skip  (no output, no partial file)


def test_an_error_in_a_later_chunk_leaves_no_output(csv_bundle: Path, tmp_path: Path) -> None:
    iris = pd.read_csv(bundles.IRIS).astype({"sepal_length": object})
    iris.loc[140, "sepal_length"] = "long"
    iris.to_csv(tmp_path / "late.csv", index=False)
    with pytest.raises(DataError, match=r"column 'sepal_length', data row 141 "):
        predict_file(csv_bundle, tmp_path / "late.csv", tmp_path / "p.csv", chunk_rows=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.csv"]
