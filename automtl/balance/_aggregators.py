"""The gradient-aggregation balancers, one per torchjd aggregator in use in multi-task learning.

Notation: ``J`` ``[m, n]`` holds one task gradient per row (``g_t = J[t]``), ``G = J Jᵀ`` its
Gramian ``[m, m]``; each method returns the update direction ``d`` ``[n]``. In ``"full"`` mode
``n`` is the number of parameters of a shared segment, in ``"representation"`` mode
``n = N·d``, the flattened shared representation (see :mod:`automtl.balance._aggregation`).

torchjd aggregators left out, and why: ``Mean``/``Sum``/``Constant``/``Random`` are the
loss weightings ``equal``, ``fixed`` and ``rlw``; ``Krum`` and ``TrimmedMean`` are
Byzantine-robust aggregators for federated learning; ``PCD`` needs a priority order of the
tasks; the ``MoDo`` and ``SDMGrad`` weightings need two or three independent mini-batches per
step, which a one-batch training step does not have; ``CRMOGMWeighting`` wraps another
weighting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from automtl.balance._aggregation import (
    GradientAggregation,
    _mode_hparam,
    torchjd_aggregation,
)
from automtl.balance._base import HParam, register_balancer
from automtl.balance._graddrop import graddrop_combine
from automtl.balance._gradvac import gradvac_weights
from automtl.balance._gram_solvers import (
    cagrad_weights,
    config_weights,
    fairgrad_weights,
    mgda_weights,
    nash_mtl_alpha,
    nash_mtl_weights,
)

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator

_QUADPROG_HINT = "pip install 'torchjd[quadprog-projector]>=0.18,<0.19' (a dependency of automtl)"

__all__ = [
    "IMTLG",
    "MGDA",
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "ExcessMTL",
    "FairGrad",
    "GradDrop",
    "GradVac",
    "NashMTL",
    "PCGrad",
    "UPGrad",
]


@register_balancer("upgrad")
class UPGrad(GradientAggregation):
    """UPGrad: project every task gradient onto the dual cone of all of them, then average.

    ``d = (1/m) Σ_i π_J(g_i)``, where ``π_J`` projects onto the dual cone
    ``{x : J x ≥ 0}``; each projection is a small quadratic program on ``G`` (Quinton and Rey,
    "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232, 2024, eq. 5). ``d``
    conflicts with no task (``J d ≥ 0``). Uses torchjd's ``UPGrad`` (quadprog solver, installed
    with automtl).

    Args:
        tasks: Every task name.
        mode: ``"full"``, ``"representation"`` or ``"grouped"`` (searched: all three).
    """

    paper = "Quinton, Rey. Jacobian descent for multi-objective optimization. arXiv:2406.16232, 2024, eq. 5"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {"mode": _mode_hparam()}
    requires = ("quadprog", "qpsolvers")
    install_hint = _QUADPROG_HINT

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return torchjd_aggregation().UPGrad()


@register_balancer("mgda")
class MGDA(GradientAggregation):
    """MGDA: the minimum-norm point of the convex hull of the task gradients.

    ``d = Σ_t α_t g_t`` with ``α = argmin_{α ∈ Δ_m} ‖αᵀ J‖²`` (Désidéri, C. R. Math. 2012;
    Sener and Koltun, NeurIPS 2018, eq. 3), solved exactly on the Gramian by Wolfe's
    active-set method (:func:`automtl.balance._gram_solvers.mgda_weights`: certified by the
    Frank-Wolfe gap, 10-180 µs a call for up to 11 tasks), where Sener and Koltun's Alg. 2
    and torchjd's ``MGDA`` run Frank-Wolfe steps until the step size falls below ``1e-3``,
    which leaves ``‖d‖`` up to a few percent above the minimum. With
    ``mode="representation"`` this is their MGDA-UB (§3.3, eq. 5): ``α`` is found on the
    gradients of the shared representation.

    Args:
        tasks: Every task name.
        mode: ``"full"`` (MGDA), ``"representation"`` (MGDA-UB) or ``"grouped"``; searched: all
            three.
    """

    paper = "Sener, Koltun. Multi-task learning as multi-objective optimization. NeurIPS 2018, eq. 3 (MGDA-UB: eq. 5)"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {"mode": _mode_hparam()}
    solves_on_gramian = True

    def make_aggregator(self, n_tasks: int) -> Aggregator:  # pragma: no cover - gramian_weights is used
        return torchjd_aggregation().MGDA()

    def gramian_weights(self, tasks: tuple[str, ...], gram: Any) -> Any:
        """The exact minimum-norm weights ``α`` ``[m]`` of Sener and Koltun's eq. 3, from
        ``G = J Jᵀ`` ``[m, m]`` (float64; :func:`automtl.balance._gram_solvers.mgda_weights`)."""
        return mgda_weights(gram)


@register_balancer("pcgrad")
class PCGrad(GradientAggregation):
    """PCGrad: gradient surgery.

    For each task ``i``, in a random order of the others: if ``g_iᴾᶜ · g_j < 0``,
    ``g_iᴾᶜ ← g_iᴾᶜ − (g_iᴾᶜ · g_j / ‖g_j‖²) g_j``; then ``d = Σ_i g_iᴾᶜ`` (Yu et al.,
    "Gradient surgery for multi-task learning", NeurIPS 2020, Alg. 1).

    Args:
        tasks: Every task name.
        mode: ``"full"``, ``"representation"`` or ``"grouped"`` (searched: all three).
    """

    paper = "Yu et al. Gradient surgery for multi-task learning. NeurIPS 2020, Alg. 1"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {"mode": _mode_hparam()}

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return torchjd_aggregation().PCGrad()


@register_balancer("cagrad")
class CAGrad(GradientAggregation):
    """CAGrad: conflict-averse gradient descent.

    ``d = g_0 + (√φ / ‖g_w‖) g_w`` with ``g_0`` the mean gradient, ``φ = c² ‖g_0‖²`` and
    ``w = argmin_{w ∈ Δ_m} g_wᵀ g_0 + √φ ‖g_w‖`` (Liu et al., "Conflict-averse gradient descent
    for multi-task learning", NeurIPS 2021, Alg. 1; the dual problem is their eq. 3). The
    problem depends on the gradients only through ``G``: it is solved on ``G`` exactly by an
    active-set method in NumPy, warm-started from the last solution of the same task set and
    certified by its Frank-Wolfe gap, with SciPy's SLSQP (the official code's solver) as the
    fallback where it cannot certify (:func:`automtl.balance._gram_solvers.cagrad_weights`,
    about 25-45 µs a call for up to 11 tasks; torchjd's ``CAGrad`` solves the same problem with
    cvxpy, rebuilt at every call, 5-10 ms).
    As in torchjd, ``d`` is not divided by ``1 + c²`` (the official code's ``rescale=1``):
    with an adaptive optimizer the scale of ``d`` matters little.

    Args:
        tasks: Every task name.
        mode: ``"full"``, ``"representation"`` or ``"grouped"`` (searched: all three).
        c: Radius of the ball around the mean gradient, ``c ≥ 0`` (``c = 0``: the mean
            gradient). Default 0.4, the official code's default (``--c``, nash-mtl and CAGrad
            repositories) and the paper's value for NYUv2/Cityscapes; searched in [0.1, 0.9],
            ``c < 1``, under which CAGrad converges to a stationary point of the mean loss
            (§3.2, Theorem 3.2).

    Raises:
        ValueError: ``c < 0`` or an unknown mode.
    """

    paper = "Liu, Liu, Jin, Stone, Liu. Conflict-averse gradient descent for multi-task learning. NeurIPS 2021, Alg. 1"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {
        "mode": _mode_hparam(),
        "c": HParam(default=0.4, low=0.1, high=0.9, doc="ball radius around the mean gradient; official default 0.4; c < 1"),
    }
    requires = ("scipy",)
    install_hint = "pip install scipy"
    solves_on_gramian = True

    def __init__(self, tasks: Sequence[str], mode: str = "full", c: float = 0.4) -> None:
        if not c >= 0:
            raise ValueError(f"CAGrad c must be >= 0, got {c}")
        super().__init__(tasks, mode)
        self.c = float(c)
        self._warm: dict[tuple[str, ...], Any] = {}

    def make_aggregator(self, n_tasks: int) -> Aggregator:  # pragma: no cover - gramian_weights is used
        return torchjd_aggregation().CAGrad(c=self.c)

    def gramian_weights(self, tasks: tuple[str, ...], gram: Any) -> Any:
        weights = cagrad_weights(gram, self.c, previous=self._warm.get(tasks))
        self._warm[tasks] = _simplex_part(weights, len(tasks))
        return weights


@register_balancer("nash_mtl")
class NashMTL(GradientAggregation):
    """Nash-MTL: the Nash bargaining solution among the task gradients.

    ``d = Σ_t α_t g_t`` with ``α > 0`` solving ``G α = 1/α`` element-wise, i.e.
    ``g_tᵀ d = 1/α_t`` for every task (Navon et al., "Multi-task learning as a bargaining
    game", ICML 2022, §3 and Alg. 1), then scaled so that ``‖d‖ <= 1`` (the official
    code clips the shared gradient's norm to ``max_norm = 1``, as torchjd's ``NashMTL`` does
    with the weights; at the solution ``‖d‖² = m``, so the weights are ``α/√m``).

    ``α`` is computed from the Gramian alone, in NumPy, as the minimiser of the strictly convex
    ``½ αᵀGα − Σ_t log α_t`` by damped Newton steps, warm-started from the last ``α`` of the
    same task set (:func:`automtl.balance._gram_solvers.nash_mtl_alpha`: about 60-75 µs for
    3-11 tasks). The official code and torchjd reach the same point by up to 20 concave-convex
    steps (the paper's Alg. 1), each a cvxpy/ECOS program rebuilt per call (60-150 ms); the
    tests check that both satisfy ``α ⊙ Gα = 1``, ours to ``1e-10`` and theirs only to their
    stopping tolerance (about ``1e-3``), and that the weights agree to that tolerance. Where no
    solution exists (a zero task gradient, or gradients with ``G v = 0`` for some ``v ≥ 0``:
    no direction improves every task), Newton's iterate is returned after 60 steps; the
    weights of tasks with a zero gradient then grow without bound, which leaves ``d`` as the
    bargaining direction of the others.

    Args:
        tasks: Every task name.
        mode: ``"full"``, ``"representation"`` or ``"grouped"`` (searched: all three).
        update_weights_every: Solve for ``α`` every this many steps (per task set) and reuse it
            in between, re-scaling the weights to ``‖d‖ <= 1`` on the current gradients.
            Default 1, the official code's (``--update-weights-every``, whose help reads
            "update task weights every x iterations"); larger values are an approximation
            (``α`` is stale for up to ``k − 1`` steps) that the official code offers for speed,
            not a setting the paper's experiments report. Searched in [1, 20].
        max_norm: The bound on ``‖d‖``; ``0`` disables the scaling. Default 1, the official
            code's and torchjd's. Not searched.

    Raises:
        ValueError: ``update_weights_every < 1``, ``max_norm < 0`` or an unknown mode.
    """

    paper = "Navon et al. Multi-task learning as a bargaining game. ICML 2022, §3 and Alg. 1"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {
        "mode": _mode_hparam(),
        "update_weights_every": HParam(default=1, low=1, high=20, doc="steps between solves (k > 1 approximates); official code: 1"),
        "max_norm": HParam(default=1.0, doc="bound on the aggregate's norm (official code: 1; 0 disables); not searched"),
    }
    solves_on_gramian = True

    def __init__(self, tasks: Sequence[str], mode: str = "full", update_weights_every: int = 1, max_norm: float = 1.0) -> None:
        if int(update_weights_every) < 1:
            raise ValueError(f"Nash-MTL update_weights_every must be >= 1, got {update_weights_every}")
        if not max_norm >= 0:
            raise ValueError(f"Nash-MTL max_norm must be >= 0, got {max_norm}")
        super().__init__(tasks, mode)
        self.update_weights_every = int(update_weights_every)
        self.max_norm = float(max_norm)
        # Per task set: the number of calls so far, the last solved α (original scale), and
        # whether it converged (only then is it a warm start: a diverged α is far off).
        self._state: dict[tuple[str, ...], tuple[int, Any, bool]] = {}

    def make_aggregator(self, n_tasks: int) -> Aggregator:  # pragma: no cover - gramian_weights is used
        return torchjd_aggregation().NashMTL(n_tasks=n_tasks, update_weights_every=self.update_weights_every)

    def gramian_weights(self, tasks: tuple[str, ...], gram: Any) -> Any:
        calls, alpha, converged = self._state.get(tasks, (0, None, False))
        if alpha is None or calls % self.update_weights_every == 0:
            alpha, converged = nash_mtl_alpha(gram, previous=alpha if converged else None)
        self._state[tasks] = (calls + 1, alpha, converged)
        return nash_mtl_weights(gram, alpha, self.max_norm)


@register_balancer("imtl_g")
class IMTLG(GradientAggregation):
    """IMTL-G: the direction with equal projections onto every task's unit gradient.

    ``d = Σ_t α_t g_t`` such that ``d · u_t`` is the same for every ``t`` (``u_t = g_t/‖g_t‖``),
    ``Σ α_t = 1`` (Liu et al., "Towards impartial multi-task learning", ICLR 2021, §3.2, eq. 8);
    torchjd's generalisation also handles linearly dependent gradients.

    Args:
        tasks: Every task name.
        mode: ``"full"``, ``"representation"`` or ``"grouped"`` (searched: all three; the paper
            itself applies IMTL-G to the shared representation).
    """

    paper = "Liu et al. Towards impartial multi-task learning. ICLR 2021, §3.2 (IMTL-G)"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {"mode": _mode_hparam()}

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return torchjd_aggregation().IMTLG()


@register_balancer("aligned_mtl")
class AlignedMTL(GradientAggregation):
    """Aligned-MTL: align the principal components of the task gradients.

    With ``G = V Λ Vᵀ`` (rank ``r``), ``B = √σ V Λ^{-1/2} Vᵀ`` makes the transformed gradients
    orthogonal with equal norms ``√σ``; ``d = (B w)ᵀ J`` with uniform ``w`` (Senushkin et al.,
    "Independent component alignment for multi-task learning", CVPR 2023, Alg. 1).

    Args:
        tasks: Every task name.
        mode: ``"full"``, ``"representation"`` or ``"grouped"`` (searched: all three).
        scale_mode: ``σ``: the smallest eigenvalue (``"min"``, the paper's), the median, or the
            mean (``"rmse"``), as in the official code. Searched: all three.
    """

    paper = "Senushkin et al. Independent component alignment for multi-task learning. CVPR 2023, Alg. 1"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {
        "mode": _mode_hparam(),
        "scale_mode": HParam(default="min", choices=("min", "median", "rmse"), doc="σ of the aligned gradients"),
    }

    def __init__(self, tasks: Sequence[str], mode: str = "full", scale_mode: str = "min") -> None:
        if scale_mode not in ("min", "median", "rmse"):
            raise ValueError(f"Aligned-MTL scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}")
        super().__init__(tasks, mode)
        self.scale_mode = scale_mode

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return torchjd_aggregation().AlignedMTL(scale_mode=self.scale_mode)


@register_balancer("gradvac")
class GradVac(GradientAggregation):
    """Gradient Vaccine: raise each pair's gradient similarity towards its running average.

    Like PCGrad, but with a target cosine ``φ̂_ij`` (an exponential moving average of the
    observed ``φ_ij = cos(g_i, g_j)``, ``φ̂ ← (1−β) φ̂ + β φ``): when ``φ_ij < φ̂_ij``,
    ``g_i ← g_i + w g_j`` with ``w`` chosen so that the cosine becomes ``φ̂_ij``; ``d = Σ g_i``
    (Wang et al., "Gradient vaccine", ICLR 2021, Alg. 1, eq. 4). The weights ``d = (1ᵀC) J`` come
    from the Gramian by the loop of torchjd's ``GradVacWeighting``, on Python floats
    (:func:`automtl.balance._gradvac.gradvac_weights`; the same visiting order from torch's
    global generator); the targets ``φ̂`` are kept per set of tasks (per shared segment).

    Args:
        tasks: Every task name.
        mode: ``"full"``, ``"representation"`` or ``"grouped"`` (searched: all three).
        beta: EMA rate ``β`` in ``(0, 1]``. Default 0.5 (torchjd, LibMTL); searched in
            [0.01, 1] (log), from slow averaging to none.
    """

    paper = "Wang, Tsvetkov, Firat, Cao. Gradient vaccine. ICLR 2021, Alg. 1"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {
        "mode": _mode_hparam(),
        "beta": HParam(default=0.5, low=0.01, high=1.0, log=True, doc="EMA rate of the target similarity"),
    }

    solves_on_gramian = True

    def __init__(self, tasks: Sequence[str], mode: str = "full", beta: float = 0.5) -> None:
        if not 0 < beta <= 1:
            raise ValueError(f"GradVac beta must be in (0, 1], got {beta}")
        super().__init__(tasks, mode)
        self.beta = float(beta)
        self._targets: dict[tuple[str, ...], Any] = {}

    def make_aggregator(self, n_tasks: int) -> Aggregator:  # pragma: no cover - gramian_weights is used
        return torchjd_aggregation().GradVac(beta=self.beta)

    def gramian_weights(self, tasks: tuple[str, ...], gram: Any) -> Any:
        # one φ̂ per set of tasks (per shared segment), as one torchjd GradVac per segment kept it
        targets = self._targets.get(tasks)
        if targets is None:
            targets = self._targets[tasks] = np.zeros((len(tasks), len(tasks)))
        return gradvac_weights(gram, targets, self.beta)


@register_balancer("dualproj")
class DualProj(GradientAggregation):
    """DualProj: the mean gradient projected onto the dual cone of the task gradients.

    ``d = argmin_{x : J x ≥ 0} ‖x − ḡ‖²`` with ``ḡ`` the mean gradient (the projection of
    Lopez-Paz and Ranzato, "Gradient episodic memory", NeurIPS 2017, eq. 11, applied to the
    tasks' gradients; as in torchjd).

    Args:
        tasks: Every task name.
        mode: ``"full"``, ``"representation"`` or ``"grouped"`` (searched: all three).
    """

    paper = "Lopez-Paz, Ranzato. Gradient episodic memory for continual learning. NeurIPS 2017, eq. 11"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {"mode": _mode_hparam()}
    requires = ("quadprog", "qpsolvers")
    install_hint = _QUADPROG_HINT

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return torchjd_aggregation().DualProj()


@register_balancer("graddrop")
class GradDrop(GradientAggregation):
    """GradDrop: per feature of a shared representation, keep only the gradients of one sign.

    For the activations ``A`` ``[N, ...]`` of a shared segment's output and each row's
    gradient ``∇_A L_i``: ``G_i = Σ_batch sign(A) ∘ ∇_A L_i``, the positive sign purity
    ``P = ½ (1 + Σ_i G_i / Σ_i |G_i|)`` per feature, ``U ~ U(0, 1)`` per feature, the masks
    ``M_i = I[P > U] I[G_i > 0] + I[P < U] I[G_i < 0]``, and the gradient passed into ``A``
    ``Σ_i (ℓ + (1−ℓ) M_i) ∘ ∇_A L_i`` (Chen et al., "Just pick a sign", NeurIPS 2020, eq. 1-3
    and Alg. 1; :mod:`automtl.balance._graddrop`). ``U`` is drawn from torch's generator of
    the representation's device, so runs are seeded by :func:`automtl.train.seed_everything`.

    Only in the ``"representation"`` and ``"grouped"`` modes, where the activations exist: the
    paper defines the mask on a layer's activations, with ``sign(A)`` and a sum over the
    batch. The gradients of parameters (``"full"`` mode) have neither, and a mask drawn per
    parameter coordinate from the raw gradients (torchjd's ``GradDrop`` aggregator applied to
    a parameter Jacobian) is a different method, so it is not offered under this name.

    Args:
        tasks: Every task name.
        mode: ``"representation"`` (the paper's: the segment's output is the layer ``A``) or
            ``"grouped"`` (as the paper's, with a nested sub-group's aggregate as one row);
            searched: both.
        leak: ``ℓ`` in [0, 1], the share of each gradient that always passes (paper: 0 for
            plain multi-task learning). Searched in [0, 1].

    Raises:
        ValueError: ``leak`` outside [0, 1], or a mode other than the two above.
    """

    paper = (
        "Chen et al. Just pick a sign: optimizing deep multitask models with gradient sign dropout. "
        "NeurIPS 2020, eq. 1-3 and Alg. 1 (on activations: representation/grouped modes only)"
    )
    hyperparameters: ClassVar[Mapping[str, HParam]] = {
        "mode": _mode_hparam(("representation", "grouped")),
        "leak": HParam(default=0.0, low=0.0, high=1.0, doc="share of each gradient that always passes; paper: 0"),
    }

    def __init__(self, tasks: Sequence[str], mode: str = "representation", leak: float = 0.0) -> None:
        if not 0 <= leak <= 1:
            raise ValueError(f"GradDrop leak must be in [0, 1], got {leak}")
        super().__init__(tasks, mode)
        self.leak = float(leak)

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        """Not used: :meth:`aggregate` needs the activations, which a torchjd aggregator does not see.

        Raises:
            TypeError: Always.
        """
        raise TypeError("GradDrop aggregates in aggregate(), from the shared activations")

    def aggregate(
        self, tasks: tuple[str, ...], matrix: torch.Tensor, activations: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """GradDrop's gradient into the shared activations (Chen et al., NeurIPS 2020, Alg. 1).

        Args:
            tasks: The rows' names.
            matrix: ``∇_A L_i`` flattened, ``[m, N·d]``.
            activations: ``A`` ``[N, ...]`` with ``N·d`` elements.

        Returns:
            The gradient ``[N·d]`` (``matrix``'s dtype) and ``None`` (GradDrop weights no rows).

        Raises:
            ValueError: ``activations`` is missing or does not match ``matrix``.
        """
        if activations is None:
            raise ValueError("GradDrop needs the shared activations (mode 'representation' or 'grouped')")
        if activations.numel() != matrix.shape[1] or activations.dim() < 1:
            raise ValueError(f"GradDrop: activations {tuple(activations.shape)} do not match rows {tuple(matrix.shape)}")
        rows = matrix.detach().view(len(tasks), *activations.shape)
        uniform = torch.rand(activations.shape[1:], dtype=matrix.dtype, device=matrix.device)
        return graddrop_combine(rows, activations.detach(), uniform, self.leak).reshape(-1), None


@register_balancer("config")
class ConFIG(GradientAggregation):
    """ConFIG: the conflict-free direction with equal cosine to every task gradient.

    ``d = (Σ_i g_i · u) u`` with ``u = ũ/‖ũ‖``, ``ũ = U⁺ 1`` the pseudo-inverse of the unit
    gradients' matrix ``U`` applied to ones (Liu et al., "ConFIG: towards conflict-free training
    of physics informed neural networks", ICLR 2025, eq. 2). ``d`` lies in the span of the
    rows, so it is computed as ``βᵀ J`` with ``β`` from the Gramian (see
    :func:`automtl.balance._gram_solvers.config_weights`), which avoids an SVD of ``J``.

    Args:
        tasks: Every task name.
        mode: ``"full"``, ``"representation"`` or ``"grouped"`` (searched: all three).
    """

    paper = "Liu, Chu, Thuerey. ConFIG: towards conflict-free training of physics informed neural networks. ICLR 2025, eq. 2"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {"mode": _mode_hparam()}
    solves_on_gramian = True

    def make_aggregator(self, n_tasks: int) -> Aggregator:  # pragma: no cover - gramian_weights is used
        return torchjd_aggregation().ConFIG()

    def gramian_weights(self, tasks: tuple[str, ...], gram: Any) -> Any:
        """torchjd's ``ConFIG`` direction, written as row weights computed from ``G`` alone
        (:func:`automtl.balance._gram_solvers.config_weights`)."""
        return config_weights(gram)


@register_balancer("fairgrad")
class FairGrad(GradientAggregation):
    """FairGrad: α-fair allocation of the loss decrease among tasks.

    ``d = Σ_t w_t g_t`` with ``w`` solving ``G w = w^{−1/α}`` (element-wise; Ban and Ji, "Fair
    resource allocation in multi-task learning", ICML 2024, eq. 4). The official code and
    torchjd solve it by SciPy's bounded least squares on the residual ``G w − w^{−1/α}``; here
    it is the minimiser of a strictly convex function whose gradient is that residual, found by
    Newton's method in NumPy and warm-started from the last solution of the same task set
    (:func:`automtl.balance._gram_solvers.fairgrad_weights`, about 50-80 µs a call; the tests
    hold it to the least-squares answer). ``α → 0`` approaches the mean
    gradient, ``α = 1`` proportional fairness (Nash-MTL's), ``α → ∞`` max-min fairness.

    Args:
        tasks: Every task name.
        mode: ``"full"``, ``"representation"`` or ``"grouped"`` (searched: all three).
        alpha: ``α > 0``. Default 1; searched in [0.1, 10] (log), around the paper's values.
    """

    paper = "Ban, Ji. Fair resource allocation in multi-task learning. ICML 2024, eq. 4"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {
        "mode": _mode_hparam(),
        "alpha": HParam(default=1.0, low=0.1, high=10.0, log=True, doc="fairness degree α"),
    }
    solves_on_gramian = True

    def __init__(self, tasks: Sequence[str], mode: str = "full", alpha: float = 1.0) -> None:
        if not alpha > 0:
            raise ValueError(f"FairGrad alpha must be > 0, got {alpha}")
        super().__init__(tasks, mode)
        self.alpha = float(alpha)
        self._warm: dict[tuple[str, ...], Any] = {}

    def make_aggregator(self, n_tasks: int) -> Aggregator:  # pragma: no cover - gramian_weights is used
        return torchjd_aggregation().FairGrad(alpha=self.alpha)

    def gramian_weights(self, tasks: tuple[str, ...], gram: Any) -> Any:
        weights = fairgrad_weights(gram, self.alpha, previous=self._warm.get(tasks))
        self._warm[tasks] = weights
        return weights


def _simplex_part(cagrad: Any, m: int) -> Any:
    """CAGrad's ``w*`` (on the simplex) back from its row weights ``1/m + s w*``, for a warm start."""
    w = cagrad - 1.0 / m
    total = w.sum()
    return None if not total > 0 else w / total


@register_balancer("excess_mtl")
class ExcessMTL(GradientAggregation):
    """ExcessMTL: weight tasks by their estimated excess risk.

    Per task, ``E_t ≈ g_tᵀ H_t^{-1} g_t`` with an AdaGrad-style diagonal ``H_t`` (eqs. 6-7),
    normalised by its first value; ``w ← softmax(log w + η E)`` (exponentiated gradient, eq. 9);
    ``d = wᵀ J`` (He et al., "Robust multi-task learning with excess risks", ICML 2024).
    Full mode only: its state is per parameter coordinate, which a representation (per
    sample) does not keep from batch to batch.

    Args:
        tasks: Every task name.
        mode: ``"full"`` only.
        robust_step_size: ``η > 0``. Default 1 (official code); searched in [0.01, 10] (log).
    """

    paper = "He, Zhang, Zhao, Kolar. Robust multi-task learning with excess risks. ICML 2024, eq. 9"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {
        "mode": _mode_hparam(("full",)),
        "robust_step_size": HParam(default=1.0, low=0.01, high=10.0, log=True, doc="η of the weight update"),
    }
    column_state = True

    def __init__(self, tasks: Sequence[str], mode: str = "full", robust_step_size: float = 1.0) -> None:
        if not robust_step_size > 0:
            raise ValueError(f"ExcessMTL robust_step_size must be > 0, got {robust_step_size}")
        super().__init__(tasks, mode)
        self.robust_step_size = float(robust_step_size)

    def make_aggregator(self, n_tasks: int) -> Aggregator:
        return torchjd_aggregation().ExcessMTL(robust_step_size=self.robust_step_size)
