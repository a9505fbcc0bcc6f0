"""One learnable scalar per task, each its own parameter (uncertainty weighting, IMTL-L).

A balancer that learns a scalar per task (Kendall et al.'s log-variance ``s_t``, IMTL-L's log
scale ``s_t``) keeps them as separate parameters, not as one ``[k]`` tensor: in a step where a
task is unlabelled, its scalar takes no part in the loss, so its ``.grad`` stays ``None`` and
the optimizer skips it. With one tensor, its entry would get a zero gradient instead, and
Adam's (or AdamW's) running moments would still move it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["TaskScalars"]


class TaskScalars(nn.ParameterList):
    """One scalar parameter ``[]`` per task, initialised to 0, in the order of ``tasks``.

    Its state-dict entries are ``<name>.0``, ``<name>.1``, ... (one per task, ``<name>`` the
    attribute that holds it). The owner calls :meth:`accept_stacked` so that a state dict
    saved when the scalars were one ``[k]`` tensor under ``<name>`` still loads.

    Args:
        tasks: Every task name.
    """

    def __init__(self, tasks: Iterable[str]) -> None:
        names = list(tasks)
        super().__init__(nn.Parameter(torch.zeros(())) for _ in names)
        self.index = {t: i for i, t in enumerate(names)}

    def select(self, tasks: Iterable[str]) -> torch.Tensor:
        """The scalars of ``tasks``, stacked ``[len(tasks)]`` (in the graph of only those parameters).

        Raises:
            KeyError: An unknown task.
        """
        return torch.stack([self[self.index[t]] for t in tasks])

    def detached(self) -> torch.Tensor:
        """Every task's scalar, detached, ``[k]`` in task order."""
        return torch.stack([p.detach() for p in self])

    def accept_stacked(self, owner: nn.Module, name: str) -> None:
        """Let ``owner.load_state_dict`` read a ``[k]`` tensor under ``<name>`` (the layout before
        the scalars were split), by a load pre-hook on ``owner`` that splits it into
        ``<name>.0`` ... ``<name>.{k-1}``."""
        count = len(self)

        def split(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
            stacked = state_dict.get(prefix + name)
            if isinstance(stacked, torch.Tensor) and stacked.shape == (count,):
                del state_dict[prefix + name]
                state_dict.update({f"{prefix}{name}.{i}": stacked[i] for i in range(count)})

        owner.register_load_state_dict_pre_hook(split)
