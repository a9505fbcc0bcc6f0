"""Backbones: sequences of blocks whose boundaries are the branching points."""

from __future__ import annotations

from automtl.backbones._base import (
    BACKBONES,
    Backbone,
    create_backbone,
    register_backbone,
)
from automtl.backbones._cnn import SmallCNN, small_cnn
from automtl.backbones._mlp import MLPBackbone, mlp

__all__ = ["BACKBONES", "Backbone", "MLPBackbone", "SmallCNN", "create_backbone", "mlp", "register_backbone", "small_cnn"]
