"""The balancer contract: task losses in, gradients written.

A balancer decides how the task losses of one training step become gradients. Two families
share the one interface:

* **loss weighting** (``family = "loss_weighting"``; most subclass :class:`LossWeighting`): a
  weighted sum of the task losses (or another scalar of them), then one ``backward()``;
* **gradient aggregation** (``family = "gradient_aggregation"``,
  :class:`automtl.balance.GradientAggregation`): per-task gradients of each shared parameter
  group combined by an aggregator, under the tree rule of :mod:`automtl.balance._tree` (a
  block shared by some tasks aggregates exactly their gradients; a block or head used by one
  task gets its plain gradient). :class:`StepContext` hands such methods the network's
  parameter groups, each with the tasks that use it, and the outputs of the tree's nodes, so
  they never need to know the tree's shape.

The trainer calls, per step, :meth:`Balancer.backward` (after ``optimizer.zero_grad()``, before
``optimizer.step()``), and per epoch :meth:`Balancer.on_epoch_end`. Only the tasks labelled in
the batch are in ``losses``; the others take no part in the step. A balancer's own learnable
parameters (e.g. the log-variances of uncertainty weighting) are ``nn.Parameter`` s of the
balancer, which the trainer adds to the optimizer; state that a method updates by its own
rule (GradNorm's weights, FAMO's logits) lives in buffers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from automtl.build import ParamGroup
from automtl.registry import Registry

__all__ = ["BALANCERS", "Balancer", "HParam", "LossWeighting", "StepContext", "create_balancer", "register_balancer"]


@dataclass(frozen=True)
class HParam:
    """A balancer hyperparameter and its search range.

    Attributes:
        default: Value used outside a search.
        low, high: Inclusive range for a float or int hyperparameter.
        log: Sample on a log scale.
        choices: For a categorical hyperparameter (then ``low``/``high`` are unused).
        doc: What it is, and where the range comes from.
    """

    default: Any
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    doc: str = ""


@dataclass
class StepContext:
    """What a balancer may know of the current step.

    Attributes:
        param_groups: The network's parameter groups, each with the tasks that use it.
        epoch: Current epoch (0-based).
        step: Global optimizer step (0-based).
        extra: Strategy-specific inputs. The trainer puts ``"features"``: the output tensor of
            every tree node of this forward pass, ``{Node: [N, ...]}`` (still in the graph), for
            methods that aggregate gradients of shared representations (gradient aggregation
            in ``"representation"`` mode, GradNorm in ``"representation"`` mode); they raise a
            ``ValueError`` when it is missing. It also puts ``"outputs"``: every task's head
            output, ``{task: [N] or [N, o]}`` (still in the graph), where each head is the
            affine map ``y = z Wᵀ + b`` of its leaf node's output (an ``nn.Linear``, whose
            weight is its parameter group's first parameter); GradNorm's representation mode
            reads its gradient norms from them.
    """

    param_groups: Sequence[ParamGroup]
    epoch: int = 0
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Balancer(nn.Module, ABC):
    """Turns the task losses of a step into gradients.

    Subclasses set :attr:`paper` (the source), :attr:`family` and :attr:`hyperparameters`,
    take ``tasks`` plus their hyperparameters as keyword arguments in ``__init__``, and
    implement :meth:`backward`.

    Args:
        tasks: Every task name, in the data set's order.
    """

    paper: ClassVar[str] = ""
    family: ClassVar[str] = "loss_weighting"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {}

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a balancer needs at least one task")
        self.tasks = list(tasks)

    @abstractmethod
    def backward(self, losses: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        """Write the gradients of this step into ``.grad`` of the parameters.

        Args:
            losses: Scalar loss of every task labelled in this batch (tasks with no label in
                the batch are absent and must take no part).
            ctx: The step's context.

        Returns:
            The weight given to each task in ``losses`` (for logging); finite.
        """

    def on_epoch_end(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        """Called after each training epoch with each task's mean training loss. No-op by default."""

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k, None)!r}" for k in self.hyperparameters)


class LossWeighting(Balancer):
    """A balancer whose update is ``backward()`` of a combined loss (weighted sum and more)."""

    @abstractmethod
    def combine(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar to differentiate, and the weight of each task."""

    def backward(self, losses: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        total, weights = self.combine(losses)
        total.backward()
        return weights


BALANCERS: Registry[type[Balancer]] = Registry("balancer")


def register_balancer(name: str) -> Callable[[type[Balancer]], type[Balancer]]:
    """Register a :class:`Balancer` subclass under ``name``."""
    return BALANCERS.register(name)


def create_balancer(name: str, tasks: Sequence[str], **hparams: Any) -> Balancer:
    """Instantiate the balancer registered as ``name`` (or a ``module:Class`` path).

    Raises:
        RegistryError: Unknown name.
        TypeError: Unknown hyperparameter, or the entry is not a Balancer subclass.
    """
    cls = BALANCERS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Balancer)):
        raise TypeError(f"balancer '{name}' is not a Balancer subclass")
    return cls(tasks, **hparams)
