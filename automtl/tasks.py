"""Task descriptions: what each prediction target is, and how it is scored.

Label layout shared by every data set and the trainer (``N`` samples):

============  ===========================  ===============  ==================
task type     label tensor                 model output     default loss / metric
============  ===========================  ===============  ==================
binary        float ``[N]`` in {0, 1}      logits ``[N]``   ``bce`` / ``auroc``
multiclass    long ``[N]`` in [0, C)       logits ``[N, C]`` ``ce`` / ``accuracy``
multilabel    float ``[N, L]`` in {0, 1}   logits ``[N, L]`` ``bce`` / ``auroc``
regression    float ``[N]``, standardized  ``[N]``          ``mse`` / ``r2``
============  ===========================  ===============  ==================

Regression targets are standardized with the training split's mean and standard deviation
(kept in :attr:`TaskSpec.target_mean` / :attr:`TaskSpec.target_std`); metrics that have a unit
(``mae``, ``rmse``) are reported in the target's original unit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["DEFAULT_LOSS", "DEFAULT_METRIC", "TASK_TYPES", "TaskSpec", "TaskType"]

TaskType = Literal["binary", "multiclass", "multilabel", "regression"]
TASK_TYPES: tuple[str, ...] = ("binary", "multiclass", "multilabel", "regression")

DEFAULT_LOSS: dict[str, str] = {"binary": "bce", "multiclass": "ce", "multilabel": "bce", "regression": "mse"}
DEFAULT_METRIC: dict[str, str] = {
    "binary": "auroc",
    "multiclass": "accuracy",
    "multilabel": "auroc",
    "regression": "r2",
}


@dataclass(frozen=True)
class TaskSpec:
    """One prediction task.

    Args:
        name: Unique task name (used as the key of labels, masks, outputs and metrics).
        type: One of ``binary``, ``multiclass``, ``multilabel``, ``regression``.
        num_classes: Number of classes (multiclass) or labels (multilabel); ``None`` otherwise.
        loss: Name in :data:`automtl.losses.LOSSES`; defaults by type.
        metric: Name in :data:`automtl.metrics.METRICS`; defaults by type.
        target_mean: Training mean of a regression target (original unit).
        target_std: Training standard deviation of a regression target (original unit).
        classes: Optional class names of a multiclass task, index order.

    Raises:
        ValueError: If the type is unknown or ``num_classes`` does not fit the type.
    """

    name: str
    type: str
    num_classes: int | None = None
    loss: str = ""
    metric: str = ""
    target_mean: float = 0.0
    target_std: float = 1.0
    classes: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.type not in TASK_TYPES:
            raise ValueError(f"task '{self.name}': unknown type '{self.type}'; expected one of {TASK_TYPES}")
        if self.type in ("multiclass", "multilabel"):
            if self.num_classes is None or self.num_classes < 2:
                raise ValueError(f"task '{self.name}': a {self.type} task needs num_classes >= 2")
        elif self.num_classes is not None:
            raise ValueError(f"task '{self.name}': num_classes is only for multiclass or multilabel tasks")
        if not self.loss:
            object.__setattr__(self, "loss", DEFAULT_LOSS[self.type])
        if not self.metric:
            object.__setattr__(self, "metric", DEFAULT_METRIC[self.type])
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
        if not self.target_std > 0:
            raise ValueError(f"task '{self.name}': target_std must be > 0, got {self.target_std}")

    @property
    def output_dim(self) -> int:
        """Width of the task head's output: 1 for binary and regression, else ``num_classes``."""
        return 1 if self.type in ("binary", "regression") else int(self.num_classes or 0)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, for YAML/JSON."""
        d = asdict(self)
        if d["classes"] is not None:
            d["classes"] = list(d["classes"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)
