"""Fashion-MNIST scenes: 2×2 mosaics of clothing items, one presence task per class and a count.

The IDX files are read from disk, never downloaded; see :func:`find_fashion_mnist` for where.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automtl.data._base import SPLITS, MultiTaskData, Split, register_dataset
from automtl.data._preprocess import Preprocess, TargetLabels
from automtl.errors import DataError
from automtl.tasks import TaskSpec

__all__ = [
    "CLASS_TASKS",
    "DEFAULT_DIRS",
    "ENV_VAR",
    "IDX_FILES",
    "fashion_scenes",
    "find_fashion_mnist",
    "read_idx",
    "scene_plan",
]

#: Presence tasks, in Fashion-MNIST class-index order.
CLASS_TASKS: tuple[str, ...] = (
    "has_tshirt", "has_trouser", "has_pullover", "has_dress", "has_coat",
    "has_sandal", "has_shirt", "has_sneaker", "has_bag", "has_boot",
)  # fmt: skip
#: Environment variable naming a data directory (the IDX files, or a ``fashion-mnist/`` folder).
ENV_VAR = "AUTOMTL_DATA"
#: Directories searched last (Debian's ``dataset-fashion-mnist`` installs here).
DEFAULT_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)
#: Role to file name, without the optional ``.gz``.
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_SIDE = 14  # a quadrant is 14×14 pixels: an item average-pooled 2×2 from 28×28
_IDX_UBYTE = 0x08


def _candidate_dirs(path: str | None) -> list[tuple[Path, str]]:
    """Directories to search, in order, each with how it was chosen."""
    out: list[tuple[Path, str]] = []
    for root, origin in ((path, "option path"), (os.environ.get(ENV_VAR), f"${ENV_VAR}")):
        if root:
            out += [(Path(root), origin), (Path(root) / "fashion-mnist", origin)]
    out += [(Path(d), "default") for d in DEFAULT_DIRS]
    return out


def find_fashion_mnist(path: str | None = None) -> dict[str, Path]:
    """The four Fashion-MNIST IDX files (``.gz`` or uncompressed).

    Looks in ``path`` (or its ``fashion-mnist/`` subfolder), then ``$AUTOMTL_DATA`` (same),
    then :data:`DEFAULT_DIRS`; the first directory holding all four files wins.

    Returns:
        Per role in :data:`IDX_FILES`, the file's path.

    Raises:
        DataError: Not found; the message lists every place looked in and how to get the data.
    """
    looked = []
    for directory, origin in _candidate_dirs(path):
        if not directory.is_dir():
            looked.append(f"  - {directory} ({origin}): no such directory")
            continue
        found: dict[str, Path] = {}
        for role, name in IDX_FILES.items():
            for candidate in (directory / f"{name}.gz", directory / name):
                if candidate.is_file():
                    found[role] = candidate
                    break
        if len(found) == len(IDX_FILES):
            return found
        absent = ", ".join(f"{IDX_FILES[r]}[.gz]" for r in IDX_FILES if r not in found)
        looked.append(f"  - {directory} ({origin}): missing {absent}")
    raise DataError(
        "fashion_scenes: Fashion-MNIST not found. Looked in:\n"
        + "\n".join(looked)
        + "\nTo get it: `apt-get install dataset-fashion-mnist` (Debian), or put the four IDX files ("
        + ", ".join(IDX_FILES.values())
        + f"; gzipped or not) in a directory and pass `path:` in the data options or set {ENV_VAR} to it."
        " automtl never downloads data."
    )


def read_idx(file: Path, *, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (``.gz`` or not) with ``ndim`` dimensions.

    Raises:
        DataError: Unreadable, bad magic number, or a size that does not match its header;
            the message names the file.
    """
    try:
        if file.suffix == ".gz":
            with gzip.open(file) as handle:
                raw = handle.read()
        else:
            raw = file.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"fashion_scenes: cannot read IDX file {file}: {exc}") from exc
    header = 4 + 4 * ndim
    magic = raw[:4]
    if len(raw) < header or magic[:2] != b"\0\0" or magic[2] != _IDX_UBYTE or magic[3] != ndim:
        raise DataError(
            f"fashion_scenes: {file} is not an IDX file of unsigned bytes with {ndim} dimension(s) "
            f"(magic number {magic.hex() or 'absent'}, expected 000008{ndim:02x}); the file is corrupt"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(
            f"fashion_scenes: {file} holds {len(raw) - header} data bytes but its header says {shape}; "
            "the file is corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


@functools.lru_cache(maxsize=4)
def _pooled_items(images_file: Path, labels_file: Path, stamp: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Items 2×2 average-pooled to float32 ``[M, 14, 14]`` in [0, 1], and int64 labels ``[M]``.

    ``stamp`` (sizes and mtimes) is part of the cache key, so a replaced file is re-read.
    """
    images, labels = read_idx(images_file, ndim=3), read_idx(labels_file, ndim=1)
    if images.shape[1:] != (2 * _SIDE, 2 * _SIDE):
        raise DataError(f"fashion_scenes: {images_file} holds images of {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
        raise DataError(
            f"fashion_scenes: {images_file} has {len(images)} images but {labels_file} {len(labels)} labels"
        )
    if labels.size and labels.max() >= len(CLASS_TASKS):
        raise DataError(f"fashion_scenes: {labels_file} holds label {int(labels.max())}, expected 0..9")
    sums = images.reshape(len(images), _SIDE, 2, _SIDE, 2).sum(axis=(2, 4), dtype=np.uint16)
    pooled = (sums.astype(np.float32) / np.float32(4 * 255)).astype(np.float32)
    pooled.setflags(write=False)
    return pooled, labels.astype(np.int64)


def _load(images_file: Path, labels_file: Path) -> tuple[np.ndarray, np.ndarray]:
    stamp = tuple(v for f in (images_file, labels_file) for v in (f.stat().st_size, f.stat().st_mtime_ns))
    return _pooled_items(images_file, labels_file, stamp)


def _stream(seed: int, purpose: int) -> np.random.Generator:
    """An independent random stream per purpose, so that e.g. ``n_test`` leaves train scenes alone."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(purpose,)))


def _pool_cut(n_train: int, n_val: int, official_train: int) -> int:
    """Size of the train pool; the rest of the official training images is the val pool."""
    return min(max(round(official_train * n_train / (n_train + n_val)), 1), official_train - 1)


def scene_plan(
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    empty_prob: float,
    seed: int,
    official_train: int = 60000,
    official_test: int = 10000,
) -> dict[str, np.ndarray]:
    """Which item fills each quadrant of each scene.

    The official training images are shuffled and cut into a train pool and a val pool,
    sized in proportion to ``n_train : n_val``, so train and val scenes never share an item;
    test scenes draw from the official test set. Items are drawn uniformly with replacement;
    each quadrant is independently empty with probability ``empty_prob``.

    Returns:
        Per split, int64 ``[n, 4]``: index into the official train (train, val) or test
        (test) images, -1 for an empty quadrant. Quadrants in order top-left, top-right,
        bottom-left, bottom-right.
    """
    order = _stream(seed, 0).permutation(official_train)
    cut = _pool_cut(n_train, n_val, official_train)
    pools = {"train": order[:cut], "val": order[cut:], "test": np.arange(official_test)}
    plan = {}
    for stream, (split, n) in enumerate(zip(SPLITS, (n_train, n_val, n_test)), start=1):
        rng, pool = _stream(seed, stream), pools[split]
        items = pool[rng.integers(0, len(pool), size=(n, 4))].astype(np.int64)
        items[rng.random((n, 4)) < empty_prob] = -1
        plan[split] = items
    return plan


def _mosaic(items: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """float32 ``[n, 1, 28, 28]`` scenes from an item plan ``[n, 4]``."""
    quadrants = pooled[np.maximum(items, 0)] * (items >= 0)[:, :, None, None]
    n = len(items)
    return quadrants.reshape(n, 2, 2, _SIDE, _SIDE).transpose(0, 1, 3, 2, 4).reshape(n, 1, 2 * _SIDE, 2 * _SIDE)


def _check_options(n_train: int, n_val: int, n_test: int, empty_prob: float, missing_label_fraction: float) -> None:
    for option, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if int(value) != value or value < 1:
            raise DataError(f"fashion_scenes: option {option} must be an integer >= 1, got {value!r}")
    if not 0.0 <= empty_prob < 1.0:
        raise DataError(f"fashion_scenes: option empty_prob must be in [0, 1), got {empty_prob!r}")
    if not 0.0 <= missing_label_fraction < 1.0 or round(missing_label_fraction * n_train) >= n_train:
        raise DataError(
            f"fashion_scenes: option missing_label_fraction must be in [0, 1) and leave a training label, "
            f"got {missing_label_fraction!r} for n_train={n_train}"
        )


@register_dataset("fashion_scenes")
def fashion_scenes(
    *,
    path: str | None = None,
    n_train: int = 20000,
    n_val: int = 5000,
    n_test: int = 5000,
    empty_prob: float = 0.25,
    missing_label_fraction: float = 0.0,
    seed: int = 0,
    tasks: Sequence[str] | None = None,
) -> MultiTaskData:
    """Multi-label scenes built from Fashion-MNIST.

    Each 28×28 scene is a 2×2 mosaic of 14×14 quadrants; a quadrant is empty (zeros) with
    probability ``empty_prob``, else a random Fashion-MNIST item average-pooled 2×2 from
    28×28 (see :func:`scene_plan`: train and val items come from disjoint parts of the
    official training set, sized in proportion to ``n_train : n_val``; test items from the
    official test set).

    Tasks, in order: ten binary tasks ``has_tshirt, has_trouser, has_pullover, has_dress,
    has_coat, has_sandal, has_shirt, has_sneaker, has_bag, has_boot`` (some quadrant holds an
    item of that class), then ``count``, a regression on the number of items (0–4),
    standardized with its observed training mean and standard deviation (``ddof=0``).

    Args:
        path: Directory of the four IDX files (``.gz`` or not), or one with a
            ``fashion-mnist/`` subfolder; searched before ``$AUTOMTL_DATA`` and
            ``/usr/share/datasets/fashion-mnist`` (see :func:`find_fashion_mnist`).
        n_train: Number of training scenes.
        n_val: Number of validation scenes.
        n_test: Number of test scenes.
        empty_prob: Probability that a quadrant is empty, in [0, 1).
        missing_label_fraction: Share of labels hidden (masked) per task in train and val,
            exactly ``round(f * n)`` each, chosen uniformly and independently per task; test
            keeps every label.
        seed: Seed of everything random; same options give bitwise-identical tensors.
        tasks: Keep only these tasks, in this order (default: all eleven). The scenes and the
            hidden labels are the same as with all tasks.

    Returns:
        :class:`MultiTaskData` named ``"fashion_scenes"``: ``x`` float32 ``[N, 1, 28, 28]``
        with pixel values in [0, 1]; ``has_*`` labels float32 ``[N]`` in {0, 1}; ``count``
        float32 ``[N]`` standardized; masks bool ``[N]``. ``info`` records the source files,
        sizes, seed, pool sizes and hidden-label counts.

    Raises:
        DataError: The files are absent or corrupt (the message names the file), or an
            option is out of range.
    """
    _check_options(n_train, n_val, n_test, empty_prob, missing_label_fraction)
    kept = _kept_tasks(tasks)
    files = find_fashion_mnist(path)
    official = {
        "train": _load(files["train_images"], files["train_labels"]),
        "test": _load(files["test_images"], files["test_labels"]),
    }
    plan = scene_plan(
        n_train=n_train, n_val=n_val, n_test=n_test, empty_prob=empty_prob, seed=seed,
        official_train=len(official["train"][1]), official_test=len(official["test"][1]),
    )  # fmt: skip
    cut = _pool_cut(n_train, n_val, len(official["train"][1]))
    mask_rng = _stream(seed, 4)
    task_names = [*CLASS_TASKS, "count"]

    xs, labels, masks = {}, {}, {}
    for split in SPLITS:
        pooled, item_labels = official["test" if split == "test" else "train"]
        items = plan[split]
        present = items >= 0
        xs[split] = _mosaic(items, pooled)
        classes = np.where(present, item_labels[np.maximum(items, 0)], -1)
        values = [(classes == c).any(axis=1).astype(np.float32) for c in range(len(CLASS_TASKS))]
        labels[split] = dict(zip(task_names, [*values, present.sum(axis=1).astype(np.float32)]))
        masks[split] = {t: np.ones(len(items), dtype=bool) for t in task_names}
        if split != "test":
            hide = round(missing_label_fraction * len(items))
            for t in task_names:
                masks[split][t][mask_rng.permutation(len(items))[:hide]] = False

    counts = labels["train"]["count"][masks["train"]["count"]]
    mean, std = float(counts.mean()), float(counts.std())
    std = std if std > 0 else 1.0
    specs = {t: TaskSpec(t, "binary") for t in CLASS_TASKS}
    specs["count"] = TaskSpec("count", "regression", target_mean=mean, target_std=std)

    def split_tensors(split: str) -> Split:
        y = dict(labels[split])
        y["count"] = (y["count"] - np.float32(mean)) / np.float32(std)
        return Split(
            torch.from_numpy(xs[split]),
            {t: torch.from_numpy(np.where(masks[split][t], y[t], 0).astype(np.float32)) for t in kept},
            {t: torch.from_numpy(masks[split][t]) for t in kept},
        )

    info: dict[str, Any] = {
        "source_files": {role: str(p) for role, p in files.items()},
        "source_dir": str(files["train_images"].parent),
        "sizes": {"train": n_train, "val": n_val, "test": n_test},
        "seed": seed,
        "empty_prob": empty_prob,
        "missing_label_fraction": missing_label_fraction,
        "hidden_labels_per_task": {
            "train": round(missing_label_fraction * n_train),
            "val": round(missing_label_fraction * n_val),
            "test": 0,
        },
        "pool_sizes": {"train": cut, "val": len(official["train"][1]) - cut, "test": len(official["test"][1])},
        "layout": "2x2 mosaic of 14x14 quadrants (TL, TR, BL, BR); items 2x2 average-pooled; pixels in [0, 1]",
        "count_unit": "items per scene (0-4)",
        "item_plan": "scene_plan(n_train, n_val, n_test, empty_prob, seed) in automtl.data._fashion_scenes",
    }
    info["tasks_kept"] = list(kept)
    kept_specs = [specs[t] for t in kept]
    scene_input = Preprocess.for_arrays(
        kept_specs, (1, 2 * _SIDE, 2 * _SIDE), low=0.0, high=1.0,
        description="a 28x28 scene (one channel): a 2x2 mosaic of Fashion-MNIST items, each average-pooled 2x2 to "
        "14x14; pixel values in [0, 1] (byte / 255)",
    )  # fmt: skip
    targets = dict(scene_input.targets)
    if "count" in targets:
        targets["count"] = TargetLabels("regression", unit="items per scene (0-4)")
    preprocess = dataclasses.replace(scene_input, targets=targets)
    train, val, test = (split_tensors(s) for s in SPLITS)
    return MultiTaskData("fashion_scenes", kept_specs, train, val, test, (1, 28, 28), info, preprocess)


def _kept_tasks(tasks: Sequence[str] | None) -> tuple[str, ...]:
    names = (*CLASS_TASKS, "count")
    if tasks is None:
        return names
    if isinstance(tasks, str) or not tasks:
        raise DataError(f"fashion_scenes: option tasks must be a non-empty list of {list(names)}, got {tasks!r}")
    unknown = [t for t in tasks if t not in names]
    if unknown:
        raise DataError(f"fashion_scenes: option tasks names {unknown}, which are not tasks; choose from {list(names)}")
    if len(set(tasks)) != len(tasks):
        raise DataError(f"fashion_scenes: option tasks {list(tasks)} names a task twice")
    return tuple(tasks)

