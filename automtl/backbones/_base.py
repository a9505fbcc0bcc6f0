"""The backbone contract: a sequence of blocks whose boundaries are the branching points."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from automtl.registry import Registry

__all__ = ["BACKBONES", "Backbone", "create_backbone", "register_backbone"]


class Backbone(ABC):
    """A factory of the blocks of one network, block ``0`` first.

    The builder calls :meth:`make_block` once for every copy of a block that a
    :class:`~automtl.tree.BranchTree` needs, so each call must return a freshly
    initialised module. Block ``b`` maps ``[N, *block_input_shape(b)]`` to
    ``[N, *block_input_shape(b + 1)]``; the last block's output is ``[N, out_features]``.

    Subclasses implement :meth:`make_block`, and set :attr:`input_shape`, :attr:`n_blocks`,
    :attr:`out_features` and :attr:`block_names`.
    """

    input_shape: tuple[int, ...]
    n_blocks: int
    out_features: int
    block_names: Sequence[str]

    @abstractmethod
    def make_block(self, index: int) -> nn.Module:
        """A new, freshly initialised copy of block ``index`` (``0 <= index < n_blocks``).

        Raises:
            IndexError: If ``index`` is out of range.
        """

    def block_parameter_counts(self) -> list[int]:
        """Parameters of one copy of each block."""
        return [sum(p.numel() for p in self.make_block(b).parameters()) for b in range(self.n_blocks)]

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.n_blocks:
            raise IndexError(f"block index {index} outside [0, {self.n_blocks})")


BackboneFactory = Callable[..., Backbone]
BACKBONES: Registry[BackboneFactory] = Registry("backbone")


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register ``fn(input_shape, **options) -> Backbone`` under ``name``."""
    return BACKBONES.register(name)


def create_backbone(name: str, input_shape: Sequence[int], *, trust_code: bool = False, **options: Any) -> Backbone:
    """Build the backbone registered as ``name`` (or a ``module:function`` path).

    Args:
        name: A registered backbone name, or an import path.
        input_shape: Shape of one input, without the batch dimension.
        trust_code: Allow an import path (importing runs its code; see :mod:`automtl.registry`).
        options: Keyword options of the factory.

    Raises:
        UntrustedCodeError: An import path without ``trust_code``.
        RegistryError: Unknown name.
        TypeError: The factory did not return a :class:`Backbone`.
    """
    backbone = BACKBONES.get(name, trust_code=trust_code)(tuple(input_shape), **options)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone factory '{name}' returned {type(backbone).__name__}, not a Backbone")
    return backbone


def infer_shape(block: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Output shape (without batch) of ``block`` on a zero input of ``input_shape``."""
    with torch.no_grad():
        was_training = block.training
        block.eval()
        out = block(torch.zeros(2, *input_shape))
        block.train(was_training)
    return tuple(out.shape[1:])
