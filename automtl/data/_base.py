"""The in-memory multi-task data set every loader returns, and the data-set registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from automtl.registry import Registry
from automtl.tasks import TaskSpec

if TYPE_CHECKING:
    from automtl.data._preprocess import Preprocess

__all__ = ["DATASETS", "SPLITS", "MultiTaskData", "Split", "load_dataset", "register_dataset"]

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class Split:
    """One split of a multi-task data set, held as tensors.

    Attributes:
        x: Inputs, ``[N, ...]`` float32 (``[N, F]`` for tables, ``[N, 1, 28, 28]`` for images).
        y: Per task, its labels in the layout of :mod:`automtl.tasks`; entries under a false
            mask hold a valid placeholder (0) and must never be read.
        mask: Per task, bool ``[N]``: True where the label is known.
    """

    x: torch.Tensor
    y: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str) -> Split:
        """A copy on ``device``."""
        return Split(
            self.x.to(device),
            {t: v.to(device) for t, v in self.y.items()},
            {t: m.to(device) for t, m in self.mask.items()},
        )

    def subset(self, index: torch.Tensor) -> Split:
        """Rows ``index`` (a 1-D long tensor of positions) of every tensor.

        ``index_select`` rather than ``tensor[index]``: the same rows without advanced indexing's
        dispatch, which is most of the cost of a small batch on a CPU.
        """
        return Split(
            self.x.index_select(0, index),
            {t: v.index_select(0, index) for t, v in self.y.items()},
            {t: m.index_select(0, index) for t, m in self.mask.items()},
        )

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None) -> Iterator[Split]:
        """Mini-batches as :class:`Split` views; the last one may be smaller."""
        n = len(self)
        order = torch.randperm(n, generator=generator, device="cpu") if shuffle else torch.arange(n)
        order = order.to(self.x.device)
        for start in range(0, n, batch_size):
            yield self.subset(order[start : start + batch_size])


@dataclass
class MultiTaskData:
    """A multi-task data set: task descriptions and its three splits.

    Train and validation are the only splits a search reads; test is for reporting.

    Attributes:
        name: Registered data-set name.
        tasks: Task descriptions, in a fixed order.
        train: Training split.
        val: Validation split (model selection).
        test: Test split (final reporting only).
        input_shape: Shape of one input, without the batch dimension.
        info: Free-form facts about how it was built (sizes, seed, sources).
        preprocess: How a raw input becomes ``x`` and how labels read, as fitted on the
            training split (:class:`~automtl.data.Preprocess`: the table's columns, scaling,
            category vocabularies and missing-value flags, or the array an image model takes;
            each task's class names). An exported bundle keeps it so that ``automtl predict``
            takes raw rows; ``None`` means ``x`` is the raw input (an array of ``input_shape``).
    """

    name: str
    tasks: list[TaskSpec]
    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, ...]
    info: dict[str, Any]
    preprocess: Preprocess | None = None

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"no task '{name}' in data set '{self.name}'")

    def split(self, name: str) -> Split:
        """The split named ``train``, ``val`` or ``test``.

        Raises:
            ValueError: For any other name.
        """
        if name not in SPLITS:
            raise ValueError(f"unknown split '{name}'; expected one of {SPLITS}")
        return getattr(self, name)  # type: ignore[no-any-return]


DataFactory = Callable[..., MultiTaskData]
DATASETS: Registry[DataFactory] = Registry("data set")


def register_dataset(name: str) -> Callable[[DataFactory], DataFactory]:
    """Register a data-set factory ``fn(**options) -> MultiTaskData`` under ``name``."""
    return DATASETS.register(name)


def load_dataset(name: str, options: Mapping[str, Any] | None = None, *, trust_code: bool = False) -> MultiTaskData:
    """Build the data set registered as ``name`` (or a ``module:function`` path) with ``options``.

    Args:
        name: A registered data-set name, or an import path.
        options: Keyword options of its factory.
        trust_code: Allow an import path (importing runs its code; see :mod:`automtl.registry`).

    Raises:
        UntrustedCodeError: An import path without ``trust_code``.
        RegistryError: Unknown name.
        DataError: The data are absent or malformed.
    """
    return DATASETS.get(name, trust_code=trust_code)(**dict(options or {}))
