from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from automtl.data import _fashion_scenes as fs
from automtl.data._fashion_scenes import (
    CLASS_TASKS,
    IDX_FILES,
    fashion_scenes,
    find_fashion_mnist,
    scene_plan,
)
from automtl.errors import DataError

SMALL = {"n_train": 200, "n_val": 50, "n_test": 50}


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, written independently of the reader under test."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def synthetic_set(
    directory: Path, *, gz: bool, n_train: int = 120, n_test: int = 40, seed: int = 0
) -> dict[str, np.ndarray]:
    """A tiny stand-in for Fashion-MNIST; every image has some non-zero pixel."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(1, 256, size=(n_train, 28, 28)),
        "train_labels": np.arange(n_train) % 10,
        "test_images": rng.integers(1, 256, size=(n_test, 28, 28)),
        "test_labels": (np.arange(n_test) * 7) % 10,
    }
    for role, array in arrays.items():
        write_idx(directory / (IDX_FILES[role] + (".gz" if gz else "")), array)
    return arrays


@pytest.fixture(scope="module")
def real_dir() -> Path:
    try:
        return find_fashion_mnist()["train_images"].parent
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): {str(exc)[:80]}")


@pytest.fixture(scope="module")
def small(real_dir: Path) -> fs.MultiTaskData:
    return fashion_scenes(path=str(real_dir), **SMALL)


@pytest.fixture()
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No default directory and an AUTOMTL_DATA that points nowhere."""
    monkeypatch.setattr(fs, "DEFAULT_DIRS", (str(tmp_path / "no-default"),))
    monkeypatch.setenv("AUTOMTL_DATA", str(tmp_path / "no-env"))
    return tmp_path


def test_shapes_dtypes_and_tasks(small: fs.MultiTaskData) -> None:
    assert small.task_names == [*CLASS_TASKS, "count"]
    assert [t.type for t in small.tasks] == ["binary"] * 10 + ["regression"]
    assert small.input_shape == (1, 28, 28)
    for split, n in zip(("train", "val", "test"), SMALL.values()):
        part = small.split(split)
        assert part.x.shape == (n, 1, 28, 28) and part.x.dtype == torch.float32
        assert 0.0 <= float(part.x.min()) and float(part.x.max()) <= 1.0
        for t in small.task_names:
            assert part.y[t].shape == (n,) and part.y[t].dtype == torch.float32
            assert part.mask[t].shape == (n,) and part.mask[t].dtype == torch.bool and bool(part.mask[t].all())
    assert small.info["sizes"] == {"train": 200, "val": 50, "test": 50}
    assert small.info["seed"] == 0


def test_labels_agree_with_pixels(small: fs.MultiTaskData) -> None:
    count_task = small.task("count")
    for split in ("train", "val", "test"):
        part = small.split(split)
        quadrants = part.x[:, 0].reshape(-1, 2, 14, 2, 14).permute(0, 1, 3, 2, 4).reshape(-1, 4, 196)
        occupied = (quadrants > 0).any(dim=2).sum(dim=1).float()
        count = part.y["count"] * count_task.target_std + count_task.target_mean
        assert torch.allclose(count, count.round(), atol=1e-4)
        assert torch.equal(count.round(), occupied)
        assert bool(((count.round() >= 0) & (count.round() <= 4)).all())
        kinds = torch.stack([part.y[t] for t in CLASS_TASKS], dim=1)
        assert bool((kinds.sum(dim=1) <= count.round()).all())
        assert bool(((kinds.sum(dim=1) == 0) == (occupied == 0)).all())


def test_count_is_standardized_on_train(small: fs.MultiTaskData) -> None:
    y = small.train.y["count"].double()
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std(unbiased=False)) - 1.0) < 1e-5


def test_pixels_and_labels_follow_the_plan(tmp_path: Path) -> None:
    arrays = synthetic_set(tmp_path / "idx", gz=False)
    sizes = {"n_train": 30, "n_val": 10, "n_test": 12}
    data = fashion_scenes(path=str(tmp_path / "idx"), seed=3, **sizes)
    plan = scene_plan(**sizes, empty_prob=0.25, seed=3, official_train=120, official_test=40)
    for split, source in (("train", "train"), ("val", "train"), ("test", "test")):
        images, labels = arrays[f"{source}_images"], arrays[f"{source}_labels"]
        pooled = images.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)) / 255.0
        x = data.split(split).x.numpy()[:, 0]
        for scene, items in enumerate(plan[split]):
            for q, item in enumerate(items):
                r, c = divmod(q, 2)
                patch = x[scene, 14 * r : 14 * r + 14, 14 * c : 14 * c + 14]
                expected = np.zeros((14, 14)) if item < 0 else pooled[item]
                np.testing.assert_allclose(patch, expected, atol=1e-6)
            present = {int(labels[i]) for i in items if i >= 0}
            got = {k for k, t in enumerate(CLASS_TASKS) if data.split(split).y[t][scene] == 1}
            assert got == present


def test_same_seed_same_tensors_other_seed_different(real_dir: Path, small: fs.MultiTaskData) -> None:
    again = fashion_scenes(path=str(real_dir), **SMALL)
    other = fashion_scenes(path=str(real_dir), seed=1, **SMALL)
    for split in ("train", "val", "test"):
        a, b, c = small.split(split), again.split(split), other.split(split)
        assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
        assert all(torch.equal(a.y[t], b.y[t]) and torch.equal(a.mask[t], b.mask[t]) for t in small.task_names)


def test_missing_label_fraction_hides_exactly_per_task(real_dir: Path) -> None:
    data = fashion_scenes(path=str(real_dir), missing_label_fraction=0.1, **SMALL)
    for split, hidden in (("train", 20), ("val", 5)):
        part = data.split(split)
        for t in data.task_names:
            assert int((~part.mask[t]).sum()) == hidden
            assert bool((part.y[t][~part.mask[t]] == 0).all())
        patterns = {tuple(part.mask[t].tolist()) for t in data.task_names}
        assert len(patterns) > 1, "each task hides its own labels"
    assert all(bool(data.test.mask[t].all()) for t in data.task_names)
    assert data.info["hidden_labels_per_task"] == {"train": 20, "val": 5, "test": 0}


def test_train_and_val_items_come_from_disjoint_pools() -> None:
    for sizes in (SMALL, {"n_train": 20000, "n_val": 5000, "n_test": 5000}):
        plan = scene_plan(**sizes, empty_prob=0.25, seed=0)
        train, val, test = (set(plan[s][plan[s] >= 0].tolist()) for s in ("train", "val", "test"))
        assert train and val and test
        assert not train & val
        assert max(train | val) < 60000 and max(test) < 10000
        assert [len(plan[s]) for s in ("train", "val", "test")] == list(sizes.values())
    plan = scene_plan(**SMALL, empty_prob=0.25, seed=0)
    assert 0.1 < float((plan["train"] < 0).mean()) < 0.4  # about empty_prob of the quadrants are empty


def test_absent_data_says_how_to_get_it(nowhere: Path) -> None:
    empty = nowhere / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as info:
        fashion_scenes(path=str(empty), **SMALL)
    message = str(info.value)
    for place in (empty, nowhere / "no-env", nowhere / "no-default"):
        assert str(place) in message
    assert "AUTOMTL_DATA" in message and "path" in message


def test_lookup_order_path_then_env_subfolder(nowhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synthetic_set(nowhere / "given", gz=True, seed=1)
    synthetic_set(nowhere / "env" / "fashion-mnist", gz=False, seed=2)
    monkeypatch.setenv("AUTOMTL_DATA", str(nowhere / "env"))
    sizes = {"n_train": 10, "n_val": 5, "n_test": 5}
    from_path = fashion_scenes(path=str(nowhere / "given"), **sizes)
    from_env = fashion_scenes(**sizes)
    assert from_path.info["source_dir"] == str(nowhere / "given")
    assert from_env.info["source_dir"] == str(nowhere / "env" / "fashion-mnist")
    assert not torch.equal(from_path.train.x, from_env.train.x)


@pytest.mark.parametrize(
    ("role", "content"),
    [
        ("train_labels", b"not an idx file at all"),
        ("train_images", bytes([0, 0, 8, 3]) + (120).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x01" * 100),
        ("test_images", "gzip"),
    ],
    ids=["bad-magic", "truncated", "bad-gzip"],
)
def test_corrupt_idx_file_is_named(tmp_path: Path, role: str, content: bytes | str) -> None:
    synthetic_set(tmp_path, gz=False)
    bad = tmp_path / IDX_FILES[role]
    if content == "gzip":
        bad.unlink()
        bad = bad.with_name(bad.name + ".gz")
        bad.write_bytes(b"\x1f\x8b\x08 definitely not deflate")
    else:
        assert isinstance(content, bytes)
        bad.write_bytes(content)
    with pytest.raises(DataError, match=str(bad)):
        fashion_scenes(path=str(tmp_path), n_train=10, n_val=5, n_test=5)


@pytest.mark.parametrize(
    "options",
    [{"n_train": 0}, {"n_val": -1}, {"empty_prob": 1.0}, {"empty_prob": -0.1}, {"missing_label_fraction": 1.0}],
)
def test_bad_options_are_refused(options: dict[str, float]) -> None:
    name = next(iter(options))
    with pytest.raises(DataError, match=name):
        fashion_scenes(**{**SMALL, **options})
