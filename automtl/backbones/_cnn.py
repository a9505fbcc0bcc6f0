"""A small convolutional network for images."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from automtl.backbones._base import Backbone, infer_shape, register_backbone

__all__ = ["SmallCNN", "small_cnn"]


class SmallCNN(Backbone):
    """Convolutional blocks ``Conv3x3 -> BatchNorm -> ReLU -> MaxPool2``, then one dense block.

    Args:
        input_shape: ``(C, H, W)`` of one image.
        channels: Output channels of each convolutional block.
        hidden: Width of the final dense block (``Flatten -> Linear -> ReLU``).

    Raises:
        ValueError: If ``input_shape`` is not ``(C, H, W)`` or the image is too small to be
            halved once per convolutional block.
    """

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int] = (16, 32, 64), hidden: int = 64) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"small_cnn: input_shape must be (C, H, W), got {tuple(input_shape)}")
        c, h, w = (int(v) for v in input_shape)
        if min(h, w) < 2 ** len(channels):
            raise ValueError(f"small_cnn: a {h}x{w} image cannot be halved {len(channels)} times")
        self.input_shape = (c, h, w)
        self.channels = [int(ch) for ch in channels]
        self.hidden = int(hidden)
        self.n_blocks = len(self.channels) + 1
        self.out_features = self.hidden
        self.block_names = [f"conv{b + 1} ({ch}ch)" for b, ch in enumerate(self.channels)] + [f"fc ({self.hidden})"]
        self._flat = 1
        for d in infer_shape(nn.Sequential(*(self.make_block(b) for b in range(len(self.channels)))), self.input_shape):
            self._flat *= d

    def make_block(self, index: int) -> nn.Module:
        self._check_index(index)
        if index < len(self.channels):
            c_in = self.input_shape[0] if index == 0 else self.channels[index - 1]
            c_out = self.channels[index]
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )
        return nn.Sequential(nn.Flatten(), nn.Linear(self._flat, self.hidden), nn.ReLU())


@register_backbone("small_cnn")
def small_cnn(input_shape: Sequence[int], channels: Sequence[int] = (16, 32, 64), hidden: int = 64) -> SmallCNN:
    """Small CNN backbone for images (see :class:`SmallCNN`)."""
    return SmallCNN(input_shape, channels, hidden)
