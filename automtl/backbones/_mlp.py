"""A multilayer perceptron for tabular inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from automtl.backbones._base import Backbone, register_backbone

__all__ = ["MLPBackbone", "mlp"]


class MLPBackbone(Backbone):
    """Blocks ``Linear -> LayerNorm -> ReLU -> Dropout``, one per hidden width.

    Args:
        input_shape: Shape of one input; flattened, so ``(F,)`` for a table of ``F`` features.
        hidden: Width of each block; ``len(hidden)`` blocks, hence as many branching points.
        dropout: Dropout probability after each block.

    Raises:
        ValueError: If ``hidden`` is empty or a width is not positive.
    """

    def __init__(self, input_shape: Sequence[int], hidden: Sequence[int] = (256, 128, 64), dropout: float = 0.0) -> None:
        if not hidden or any(int(h) <= 0 for h in hidden):
            raise ValueError(f"mlp: hidden must be a non-empty list of positive widths, got {list(hidden)}")
        self.input_shape = tuple(input_shape)
        self.hidden = [int(h) for h in hidden]
        self.dropout = float(dropout)
        self.n_blocks = len(self.hidden)
        self.out_features = self.hidden[-1]
        self.block_names = [f"fc{b + 1} ({w})" for b, w in enumerate(self.hidden)]

    def make_block(self, index: int) -> nn.Module:
        self._check_index(index)
        in_features = math.prod(self.input_shape) if index == 0 else self.hidden[index - 1]
        layers: list[nn.Module] = [nn.Flatten()] if index == 0 else []
        layers += [nn.Linear(in_features, self.hidden[index]), nn.LayerNorm(self.hidden[index]), nn.ReLU()]
        if self.dropout > 0:
            layers.append(nn.Dropout(self.dropout))
        return nn.Sequential(*layers)


@register_backbone("mlp")
def mlp(input_shape: Sequence[int], hidden: Sequence[int] = (256, 128, 64), dropout: float = 0.0) -> MLPBackbone:
    """MLP backbone for tables (see :class:`MLPBackbone`)."""
    return MLPBackbone(input_shape, hidden, dropout)
