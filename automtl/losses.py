"""Per-task losses with label masks.

Every loss is registered as ``fn(output, target) -> per-sample loss [n]`` over the labelled
samples only; :func:`masked_loss` selects those samples first, so a hidden label contributes
neither loss nor gradient, and returns their mean (for the built-in losses through PyTorch's fused
mean-reduced form, the same value in fewer kernels).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from automtl.registry import Registry
from automtl.tasks import TaskSpec

__all__ = ["LOSSES", "masked_loss"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: Registry[LossFn] = Registry("loss")


@LOSSES.register("bce")
def bce(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits; ``[n]`` or ``[n, L]`` -> ``[n]`` (mean over labels)."""
    loss = F.binary_cross_entropy_with_logits(output, target.to(output.dtype), reduction="none")
    return loss.mean(dim=1) if loss.dim() > 1 else loss


@LOSSES.register("ce")
def ce(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on logits ``[n, C]`` against class indices ``[n]``."""
    return F.cross_entropy(output, target.long(), reduction="none")


@LOSSES.register("mse")
def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error on standardized targets, ``[n]``."""
    return (output - target) ** 2


@LOSSES.register("l1")
def l1(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Absolute error on standardized targets, ``[n]``."""
    return (output - target).abs()


@LOSSES.register("huber")
def huber(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Huber loss (delta 1, in standard deviations), ``[n]``."""
    return F.huber_loss(output, target, reduction="none", delta=1.0)


# Fused mean forms of the built-in losses: the same value as ``per_sample(o, t).mean()`` in one
# kernel (and one backward node) instead of three or four, which matters on short CPU steps.
# Keyed by the registered function itself, so a user who registers their own ``mse`` gets theirs.
_FUSED_MEAN: dict[LossFn, LossFn] = {
    bce: lambda output, target: F.binary_cross_entropy_with_logits(output, target.to(output.dtype)),
    ce: lambda output, target: F.cross_entropy(output, target.long()),
    mse: F.mse_loss,
    l1: F.l1_loss,
    huber: lambda output, target: F.huber_loss(output, target, delta=1.0),
}


def masked_loss(task: TaskSpec, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """Mean loss of ``task`` over the samples whose label is known.

    Args:
        task: The task (its ``loss`` names the loss function).
        output: Head output, ``[N]`` or ``[N, C]``.
        target: Labels in the layout of :mod:`automtl.tasks`, ``[N]`` or ``[N, L]``.
        mask: Bool ``[N]``, True where the label is known.

    Returns:
        A scalar tensor, or ``None`` when no sample of the batch is labelled (the task then
        takes no part in this step).
    """
    index = mask.nonzero().squeeze(1)  # one host sync, shared by both selections
    if index.numel() == 0:
        return None
    per_sample = LOSSES.get(task.loss)
    output, target = output.index_select(0, index), target.index_select(0, index)
    fused = _FUSED_MEAN.get(per_sample)
    return fused(output, target) if fused is not None else per_sample(output, target).mean()
