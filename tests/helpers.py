"""Test-only plug-ins, reachable from YAML by ``module:function`` paths (``tests.helpers:...``).

* :func:`tiny_data`: a synthetic data set with one task of every type, masked labels, seconds
  to train on a CPU;
* :func:`nan_loss`: MSE that returns NaN for its first ``NAN_LOSS["calls_left"]`` calls;
* :func:`huge_loss`: a finite loss whose sum over two tasks overflows;
* :func:`sleepy_loss`: squared error after sleeping :data:`SLEEPY_SECONDS` (a training run that
  lasts, without using the CPU: for the workers' chaos tests);
* :func:`tiny_backbone` / :func:`not_a_backbone`: a user backbone, and a broken factory;
* functions whose signatures do not fit what YAML names them for: :func:`backbone_without_shape`,
  :func:`loss_of_one_argument`, :func:`plain_metric` (a function, not a ``Metric``),
  :data:`METRIC_OF_TWO_ARGUMENTS` (a ``Metric`` whose ``fn`` lacks ``task``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from automtl.backbones import Backbone
from automtl.data import MultiTaskData, Split
from automtl.metrics import Metric
from automtl.tasks import TaskSpec

__all__ = [
    "METRIC_OF_TWO_ARGUMENTS",
    "NAN_LOSS",
    "TINY_TASKS",
    "backbone_without_shape",
    "huge_loss",
    "loss_of_one_argument",
    "nan_loss",
    "not_a_backbone",
    "plain_metric",
    "sleepy_loss",
    "tiny_backbone",
    "tiny_data",
]

TINY_TASKS: tuple[str, ...] = ("a", "b", "c", "d")
TINY_FEATURES = 6
REG_MEAN, REG_SCALE = 100.0, 10.0


def _labels(x: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    noise = 0.3 * torch.randn(x.shape[0], generator=g)
    return {
        "a": ((x[:, 0] + x[:, 1] + noise) > 0).float(),
        "b": REG_MEAN + REG_SCALE * (x[:, 2] - x[:, 3] + noise),
        "c": torch.stack([x[:, 4], x[:, 5], -x[:, 4] - x[:, 5]], dim=1).argmax(dim=1),
        "d": torch.stack([x[:, 0] > 0, x[:, 5] + noise > 0], dim=1).float(),
    }


def tiny_data(
    *,
    n_train: int = 96,
    n_val: int = 48,
    n_test: int = 48,
    missing: float = 0.2,
    hide: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
) -> MultiTaskData:
    """Four tasks on six Gaussian features: ``a`` binary, ``b`` regression (mean ~100, in
    original units ~N(100, 14²)), ``c`` multiclass (3), ``d`` multilabel (2).

    Args:
        n_train, n_val, n_test: Split sizes.
        missing: Fraction of labels hidden in train and val (test is fully labelled).
        hide: Split name -> tasks with no label at all in that split.
        seed: Same seed, bitwise-identical tensors.
    """
    g = torch.Generator().manual_seed(seed)
    hide = {k: list(v) for k, v in (hide or {}).items()}
    raw: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}
    for name, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        x = torch.randn(n, TINY_FEATURES, generator=g)
        y = _labels(x, g)
        frac = 0.0 if name == "test" else missing
        mask = {t: torch.rand(n, generator=g) >= frac for t in TINY_TASKS}
        for t in hide.get(name, []):
            mask[t] = torch.zeros(n, dtype=torch.bool)
        raw[name] = (x, y, mask)
    b_train = raw["train"][1]["b"][raw["train"][2]["b"]]
    mean, std = float(b_train.mean()), float(b_train.std(unbiased=False))
    splits = {}
    for name, (x, y, mask) in raw.items():
        y = dict(y)
        y["b"] = (y["b"] - mean) / std
        for t in TINY_TASKS:  # unknown labels hold the placeholder 0
            m = mask[t] if y[t].dim() == 1 else mask[t][:, None]
            y[t] = torch.where(m, y[t], torch.zeros_like(y[t]))
        splits[name] = Split(x, y, mask)
    tasks = [
        TaskSpec("a", "binary"),
        TaskSpec("b", "regression", target_mean=mean, target_std=std),
        TaskSpec("c", "multiclass", num_classes=3),
        TaskSpec("d", "multilabel", num_classes=2),
    ]
    return MultiTaskData(
        "tiny", tasks, splits["train"], splits["val"], splits["test"], (TINY_FEATURES,), {"seed": seed, "synthetic": True}
    )


NAN_LOSS: dict[str, int] = {"calls_left": 0, "calls": 0}


def nan_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error, except NaN for the first ``NAN_LOSS["calls_left"]`` calls."""
    NAN_LOSS["calls"] += 1
    loss = (output - target) ** 2
    if NAN_LOSS["calls_left"] > 0:
        NAN_LOSS["calls_left"] -= 1
        return loss * float("nan")
    return loss


#: Seconds :func:`sleepy_loss` sleeps per call (environment: ``AUTOMTL_TEST_SLEEPY_SECONDS``).
SLEEPY_SECONDS = float(os.environ.get("AUTOMTL_TEST_SLEEPY_SECONDS", "0.1"))


def sleepy_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error, after sleeping :data:`SLEEPY_SECONDS`: a run that takes time but no CPU."""
    time.sleep(SLEEPY_SECONDS)
    return (output - target) ** 2


def huge_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A finite loss of 2e38 per sample (two of them overflow float32 when summed); zero gradient."""
    return (output - output.detach()).reshape(len(output), -1).sum(dim=1) + 2e38


class TinyBackbone(Backbone):
    """``n_blocks`` blocks ``Linear(width) -> Tanh`` on flattened inputs."""

    def __init__(self, input_shape: Sequence[int], width: int = 4, n_blocks: int = 2) -> None:
        self.input_shape = tuple(input_shape)
        self.width = width
        self.n_blocks = n_blocks
        self.out_features = width
        self.block_names = [f"tiny{b}" for b in range(n_blocks)]

    def make_block(self, index: int) -> nn.Module:
        self._check_index(index)
        n_in = int(torch.tensor(self.input_shape).prod()) if index == 0 else self.width
        return nn.Sequential(nn.Flatten(), nn.Linear(n_in, self.width), nn.Tanh())


def tiny_backbone(input_shape: Sequence[int], width: int = 4, n_blocks: int = 2) -> TinyBackbone:
    """A user backbone reachable as ``tests.helpers:tiny_backbone``."""
    return TinyBackbone(input_shape, width, n_blocks)


def not_a_backbone(input_shape: Sequence[int], **options: Any) -> object:
    """A broken factory: returns something that is not a Backbone."""
    return object()


def backbone_without_shape(*, width: int = 4) -> TinyBackbone:
    """A factory that takes options only, not the input shape."""
    return TinyBackbone((6,), width)


def loss_of_one_argument(output: torch.Tensor) -> torch.Tensor:
    """A loss that forgot the target."""
    return output**2


def plain_metric(output: torch.Tensor, target: torch.Tensor, task: TaskSpec) -> float:
    """A metric function not wrapped in a ``Metric`` (no direction, no unit)."""
    return 0.0


METRIC_OF_TWO_ARGUMENTS = Metric(lambda output, target: 0.0, "maximize", "none")  # type: ignore[arg-type,misc]
