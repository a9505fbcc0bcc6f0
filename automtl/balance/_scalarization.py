"""More loss weightings in current use: random (RLW), geometric mean (GLS), scale-invariant
(log) losses, and IMTL-L."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch

from automtl.balance._base import HParam, LossWeighting, register_balancer
from automtl.balance._task_scalars import TaskScalars

__all__ = ["GLS", "IMTLL", "RLW", "ScaleInvariant"]

_TINY = 1e-12


@register_balancer("rlw")
class RLW(LossWeighting):
    """Random loss weighting: fresh random weights at every step.

    ``L = Σ_t w_t L_t`` with ``w = softmax(λ)``, ``λ ~ p(λ)`` drawn anew at each step over the
    tasks labelled in the batch, so the weights sum to 1 (Lin et al., "Reasonable
    effectiveness of random weighting: a litmus test for multi-task learning", TMLR 2022,
    Alg. 1). ``p``: standard normal (the paper's default), uniform on [0, 1], or a flat
    Dirichlet (then ``w = λ`` directly). Uses torch's global generator, so runs are seeded by
    :func:`automtl.train.seed_everything`.

    Args:
        tasks: Every task name.
        distribution: ``"normal"``, ``"uniform"`` or ``"dirichlet"``; searched: all three,
            the paper's variants that need no extra parameter.
    """

    paper = "Lin, Ye, Xu, Shi, Zhang. Reasonable effectiveness of random weighting. TMLR 2022, Alg. 1"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {
        "distribution": HParam(
            default="normal", choices=("normal", "uniform", "dirichlet"), doc="p(λ); paper's default: normal"
        )
    }

    def __init__(self, tasks: Sequence[str], distribution: str = "normal") -> None:
        super().__init__(tasks)
        if distribution not in ("normal", "uniform", "dirichlet"):
            raise ValueError(f"RLW distribution must be normal, uniform or dirichlet, got {distribution!r}")
        self.distribution = distribution

    def sample(self, k: int, device: torch.device) -> torch.Tensor:
        """Weights ``[k]`` on the simplex."""
        if self.distribution == "dirichlet":
            return torch.distributions.Dirichlet(torch.ones(k)).sample().to(device)
        lam = torch.randn(k) if self.distribution == "normal" else torch.rand(k)
        return torch.softmax(lam, dim=0).to(device)

    def combine(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        stacked = torch.stack(list(losses.values()))
        w = self.sample(len(losses), stacked.device).to(stacked.dtype)
        return w @ stacked, dict(zip(losses, w.tolist()))


@register_balancer("gls")
class GLS(LossWeighting):
    """Geometric loss strategy: the geometric mean of the task losses.

    ``L = (Π_t L_t)^{1/k}`` over the ``k`` tasks labelled in the batch (Chennupati et al.,
    "MultiNet++: multi-stream feature aggregation and geometric loss strategy for multi-task
    learning", CVPR Workshops 2019, eq. 4). Its gradient is ``Σ_t (L / (k L_t)) ∇L_t``: each
    task is weighted inversely to its own loss, which makes the method invariant to the scale
    of each loss; the reported weights are ``L / (k L_t)``. Computed as ``exp(mean_t log L_t)``.
    """

    paper = "Chennupati et al. MultiNet++: geometric loss strategy for multi-task learning. CVPR Workshops 2019, eq. 4"

    def combine(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        stacked = torch.stack(list(losses.values())).clamp(min=_TINY)
        total = torch.exp(torch.log(stacked).mean())
        w = total.detach() / (len(losses) * stacked.detach())
        return total, dict(zip(losses, w.tolist()))


@register_balancer("scale_invariant")
class ScaleInvariant(LossWeighting):
    """Scale-invariant loss: the sum of the log-losses.

    ``L = Σ_t log L_t``, whose gradient ``Σ_t ∇L_t / L_t`` does not change when a task's loss
    is multiplied by a constant; the reported weights are ``1 / L_t``. The "SI" baseline of
    Navon et al., "Multi-task learning as a bargaining game", ICML 2022, §6 (and of FAMO, 2023);
    the same direction as GLS, up to the positive factor ``L / k``.
    """

    paper = "Navon et al. Multi-task learning as a bargaining game. ICML 2022, §6 (SI baseline)"

    def combine(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        stacked = torch.stack(list(losses.values())).clamp(min=_TINY)
        w = 1.0 / stacked.detach()
        return torch.log(stacked).sum(), dict(zip(losses, w.tolist()))


@register_balancer("imtl_l")
class IMTLL(LossWeighting):
    """IMTL-L: learned loss scales that make every scaled loss equal to 1.

    With a learned ``s_t`` per task (initialised to 0, trained by the network's optimizer),
    ``L = Σ_t (e^{s_t} L_t − s_t)`` (Liu et al., "Towards impartial multi-task learning",
    ICLR 2021, §3.1, IMTL-L). For fixed ``L_t`` the minimum is at ``e^{s_t} = 1 / L_t``, where
    every scaled loss ``e^{s_t} L_t`` equals 1. The reported weights are ``e^{s_t}``. Each
    ``s_t`` is its own parameter (:class:`automtl.balance._task_scalars.TaskScalars`,
    state-dict keys ``log_scales.<i>``): a task unlabelled in a step gets no gradient
    (``None``), so the optimizer leaves its ``s_t`` alone.
    """

    paper = "Liu et al. Towards impartial multi-task learning. ICLR 2021, §3.1 (IMTL-L)"

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        self.log_scales = TaskScalars(self.tasks)
        self.log_scales.accept_stacked(self, "log_scales")

    def combine(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """IMTL-L's loss (Liu et al., ICLR 2021, §3.1) over the tasks of ``losses``.

        Args:
            losses: Scalar loss of every labelled task.

        Returns:
            ``Σ_t (e^{s_t} L_t − s_t)`` and each task's weight ``e^{s_t}``.
        """
        s = self.log_scales.select(losses)
        stacked = torch.stack(list(losses.values()))
        scales = torch.exp(s)
        total = (scales.to(stacked.dtype) * stacked).sum() - s.sum()
        return total, dict(zip(losses, scales.detach().tolist()))
