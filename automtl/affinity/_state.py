"""Snapshots that let a measurement run extra passes and optimizer steps and leave no trace.

A measurement hook (see :class:`automtl.train.BatchContext`) may run forward passes in
training mode (which update BatchNorm running statistics and consume the random stream of
dropout) and optimizer steps (which move parameters and optimizer moments). Everything it
touches is copied first and copied back afterwards, bitwise and in place, so the training
run that hosts the measurement continues exactly as it would have without it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["OptimizerSnapshot", "TrainingStateGuard", "dropout_off", "has_active_dropout"]


def _clone(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


class OptimizerSnapshot:
    """The optimizer state of some parameters (moments, step counts) and its hyperparameters.

    Args:
        optimizer: Any ``torch.optim.Optimizer``.
        params: The parameters whose state is copied (default: all of the optimizer's).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter] | None = None) -> None:
        self.optimizer = optimizer
        if params is None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
        self.params = list(params)
        self._state: dict[int, dict[str, Any] | None] = {}
        for i, p in enumerate(self.params):
            st = optimizer.state.get(p)
            self._state[i] = None if not st else {k: _clone(v) for k, v in st.items()}
        self._groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]

    def restore(self) -> None:
        """Copy the saved state back in place; state created since the snapshot is dropped."""
        state = self.optimizer.state
        for i, p in enumerate(self.params):
            saved = self._state[i]
            if saved is None:
                state.pop(p, None)
                continue
            current = state[p]
            for k in [k for k in current if k not in saved]:
                del current[k]
            for k, v in saved.items():
                old = current.get(k)
                if isinstance(v, torch.Tensor) and isinstance(old, torch.Tensor) and old.shape == v.shape and old.dtype == v.dtype:
                    old.copy_(v)
                else:
                    current[k] = _clone(v)
        for group, saved_group in zip(self.optimizer.param_groups, self._groups):
            group.update(saved_group)


class TrainingStateGuard:
    """Everything a measurement may disturb, saved on entry and restored bitwise on exit.

    Saves every parameter's value and ``.grad`` (the reference), every buffer (BatchNorm
    ``running_mean``, ``running_var``, ``num_batches_tracked``), the optimizer state of all its
    parameters, the train/eval mode of every module, and the CPU and CUDA random streams.

    Example:
        >>> with TrainingStateGuard(net, optimizer):   # doctest: +SKIP
        ...     optimizer.step()                        # anything at all
        ...                                            # net and optimizer as before, bitwise

    Args:
        net: The model.
        optimizer: Its optimizer (its parameters may include others, e.g. a balancer's).
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.net = net
        self.optimizer = optimizer
        self._rng: Any = None

    def __enter__(self) -> TrainingStateGuard:  # noqa: PYI034  (typing.Self needs Python 3.11; 3.10 is supported)
        net, opt = self.net, self.optimizer
        opt_params = [p for g in opt.param_groups for p in g["params"]]
        seen: set[int] = set()
        self._params: list[nn.Parameter] = []
        for p in [*net.parameters(), *opt_params]:
            if id(p) not in seen:
                seen.add(id(p))
                self._params.append(p)
        self._values = [p.detach().clone() for p in self._params]
        self._grads = [p.grad for p in self._params]
        self._buffers = [(b, b.detach().clone()) for b in net.buffers()]
        self._modes = [(m, m.training) for m in net.modules()]
        self._opt = OptimizerSnapshot(opt, opt_params)
        devices = sorted({p.device.index or 0 for p in self._params if p.device.type == "cuda"})
        self._rng = torch.random.fork_rng(devices=devices, enabled=True)
        self._rng.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            with torch.no_grad():
                for p, value, grad in zip(self._params, self._values, self._grads):
                    p.copy_(value)
                    p.grad = grad
                for b, value in self._buffers:
                    b.copy_(value)
            self._opt.restore()
            for m, mode in self._modes:
                m.training = mode
        finally:
            self._rng.__exit__(None, None, None)


_DROPOUT = (nn.modules.dropout._DropoutNd,)


def has_active_dropout(net: nn.Module) -> bool:
    """Whether ``net`` holds a dropout layer with ``p > 0`` in training mode."""
    return any(isinstance(m, _DROPOUT) and m.training and float(getattr(m, "p", 0.0)) > 0 for m in net.modules())


@contextmanager
def dropout_off(net: nn.Module) -> Iterator[None]:
    """Dropout layers in eval mode (identity); every other module keeps its mode.

    BatchNorm thus keeps normalising with batch statistics when ``net`` is in training mode.
    """
    switched = [m for m in net.modules() if isinstance(m, _DROPOUT) and m.training]
    for m in switched:
        m.training = False
    try:
        yield
    finally:
        for m in switched:
            m.training = True
