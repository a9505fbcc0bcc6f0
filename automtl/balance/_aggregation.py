"""Gradient aggregation on branched networks: per-task gradients combined by a torchjd aggregator.

:class:`GradientAggregation` applies the tree rule of :mod:`automtl.balance._tree` in one of
three modes, chosen by its ``mode`` hyperparameter (the search may choose it too):

``"full"``
    For each segment shared by ``m >= 2`` active tasks, the Jacobian ``J`` ``[m, n]`` of those
    tasks' losses with respect to all ``n`` parameters of the segment is aggregated into one
    vector ``[n]``, written into the parameters' ``.grad``. This is the method as published
    for a shared encoder (e.g. ``torchjd.autojac.mtl_backward``), applied per segment.
    Cost: one backward pass per task (each along its own path).

``"representation"``
    The MGDA-UB idea (Sener and Koltun, NeurIPS 2018, §3.3): aggregate instead the per-task
    gradients with respect to the segment's shared representation ``z`` (the output of its
    deepest block, ``[N, ...]``), flattened to ``J_z`` ``[m, N·d]``; then back-propagate the
    aggregate ``a = A(J_z)`` through the segment, ``∇θ = (∂z/∂θ)ᵀ a``. For an aggregator that
    weights rows (``A(J) = wᵀJ``), the segment receives ``Σ_t w_t ∇θ L_t``: exactly a weighted
    combination of its tasks' gradients, with the weights chosen on ``z``. Cost
    (:mod:`automtl.balance._representation`): one backward pass of ``Σ_t L_t`` in which a hook
    on each ``z`` swaps the incoming gradient for ``a``; each task's gradient of the deepest
    shared ``z`` on its path is captured from its head during that pass, and its gradient of a
    shallower ``z`` costs one input-only vector-Jacobian product through the shared blocks in
    between. The per-task gradients are exact, not approximated.

``"grouped"``
    As ``"representation"``, except where a shared segment ``S'`` sits below another shared
    segment ``S`` (nested task groups): ``S`` then aggregates one row per sub-group, the
    gradient that ``S'``'s own aggregate sends into ``z_S``, plus one row per task that
    reaches ``z_S`` without meeting another shared segment. It is captured during the same
    backward pass, so it costs no vector-Jacobian product per task: a nested tree costs
    about what hard parameter sharing does. It is an approximation of the exact mode (the
    aggregation is hierarchical, and a sub-group counts as one objective at its parent, as
    in a two-level MGDA-UB), still under the tree rule: ``S`` is updated from exactly the
    tasks below it. Without nested shared segments (hard parameter sharing, or one level of
    task groups) it is the same as ``"representation"``.

In every mode a head, and any block used by one active task, receives its task's plain
gradient; a group with no active task receives nothing.

Aggregators come from torchjd (``torchjd>=0.18,<0.19``), imported on first use. Some need
optional solvers (UPGrad and DualProj: quadprog; CAGrad and FairGrad: SciPy); instantiating
such a balancer without them raises an :class:`ImportError` that names what to install.
MGDA, CAGrad, FairGrad, ConFIG and Nash-MTL compute their row weights from the tasks' Gramian
in NumPy/SciPy instead (:mod:`automtl.balance._gram_solvers`), none of them with cvxpy. Every
method that weights rows by a function of the Gramian (those, GradVac, and torchjd's UPGrad,
DualProj, IMTL-G, Aligned-MTL and PCGrad) receives ``G`` formed in float64 (:func:`gramian64`)
whatever the gradients' dtype, and the aggregate is summed in float64 (:func:`combine64`).
GradDrop, defined on activations, also receives the shared representation itself (so it has
no ``"full"`` mode).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import warnings
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from automtl.balance._base import Balancer, HParam, StepContext
from automtl.balance._representation import representation_backward
from automtl.balance._tree import Segment, features_by_key, segments

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator

__all__ = ["MODES", "GradientAggregation", "combine64", "gramian64", "torchjd_aggregation"]

MODES: tuple[str, ...] = ("full", "representation", "grouped")

_MODE_DOC = (
    "'full': aggregate the per-task gradients of all parameters of each shared segment (as "
    "published); 'representation': aggregate the per-task gradients of the segment's output "
    "(MGDA-UB, Sener & Koltun 2018), far cheaper; 'grouped': as 'representation', but a "
    "shared sub-group below a branching point enters it as one row, its own aggregate "
    "(hierarchical, approximate; cheapest on nested trees, equal to 'representation' under "
    "hard parameter sharing)"
)


def torchjd_aggregation() -> Any:
    """The ``torchjd.aggregation`` module, imported on first use.

    Raises:
        ImportError: torchjd is not installed (it is a dependency of automtl).
    """
    try:
        return importlib.import_module("torchjd.aggregation")
    except ImportError as exc:  # pragma: no cover - torchjd is a hard dependency
        raise ImportError(
            "automtl's gradient-aggregation balancers need torchjd: pip install 'torchjd>=0.18,<0.19'"
        ) from exc


def _mode_hparam(modes: Sequence[str] = MODES) -> HParam:
    return HParam(default=modes[0], choices=tuple(modes), doc=_MODE_DOC)


class GradientAggregation(Balancer):
    """Base class of the gradient-aggregation balancers (per-task gradients, then an aggregator).

    Subclasses set :attr:`paper` and :attr:`hyperparameters` (always including ``mode``) and
    implement :meth:`make_aggregator`. See the module docstring for the three modes and the tree
    rule.

    One aggregator instance is kept per active task set, so a stateful aggregator (Nash-MTL,
    GradVac, ExcessMTL) keeps separate state for each segment; when a task goes unlabelled in a
    batch the remaining set is a different key, with its own state.

    Args:
        tasks: Every task name.
        mode: ``"full"``, ``"representation"`` or ``"grouped"``.

    :meth:`backward` returns, for each task in ``losses``, its weight in the aggregation of the
    segment shared by the most tasks that contains it (for aggregators that weight rows,
    ``d = wᵀJ``; in ``"grouped"`` mode, through its sub-groups' weights); ``1.0`` for the
    other aggregators and for tasks that share no segment.

    Raises:
        ValueError: Unknown mode.
        ImportError: An optional solver that the aggregator needs is missing.
    """

    family: ClassVar[str] = "gradient_aggregation"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {"mode": _mode_hparam()}
    #: Modules the aggregator needs beyond torchjd, and the command that installs them.
    requires: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str] = "pip install 'automtl[solvers]'"
    #: The aggregator's state depends on the number of columns (then one instance per width).
    column_state: ClassVar[bool] = False

    def __init__(self, tasks: Sequence[str], mode: str = "full") -> None:
        super().__init__(tasks)
        modes = self.hyperparameters["mode"].choices or MODES
        if mode not in modes:
            raise ValueError(f"{type(self).__name__}: mode must be one of {list(modes)}, got {mode!r}")
        self.check_requirements()
        self.mode = mode
        self._aggregators: dict[tuple[Any, ...], Aggregator] = {}

    @classmethod
    def missing_requirements(cls) -> list[str]:
        """The optional modules this balancer needs that are not installed."""
        return [name for name in cls.requires if importlib.util.find_spec(name) is None]

    @classmethod
    def check_requirements(cls) -> None:
        """Raise a clear :class:`ImportError` if an optional solver is missing."""
        missing = cls.missing_requirements()
        if missing:
            raise ImportError(
                f"balancer {cls.__name__} needs {missing}, which are not installed: {cls.install_hint}"
            )

    @abstractmethod
    def make_aggregator(self, n_tasks: int) -> Aggregator:
        """A new torchjd aggregator for ``n_tasks`` rows."""

    #: The subclass computes its row weights from the Gramian alone, in :meth:`gramian_weights`.
    solves_on_gramian: ClassVar[bool] = False

    def gramian_weights(self, tasks: tuple[str, ...], gram: Any) -> Any:
        """Row weights ``[m]`` (a float64 NumPy array) from the Gramian ``G = J Jᵀ`` ``[m, m]``
        (float64 NumPy), for subclasses that set :attr:`solves_on_gramian`; ``None`` to fall
        back on the torchjd aggregator. Such a subclass solves the same problem as its torchjd
        aggregator, in a few NumPy operations (see :mod:`automtl.balance._gram_solvers`)."""
        return None

    # ------------------------------------------------------------------ aggregation
    def _aggregator(self, tasks: tuple[str, ...], n_cols: int) -> Aggregator:
        key: tuple[Any, ...] = (tasks, n_cols) if self.column_state else (tasks,)
        agg = self._aggregators.get(key)
        if agg is None:
            agg = self._aggregators[key] = self.make_aggregator(len(tasks))
        return agg

    def aggregate(
        self, tasks: tuple[str, ...], matrix: torch.Tensor, activations: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Aggregate the rows of ``matrix`` ``[m, n]`` (one per name of ``tasks``: a task, or
        in ``"grouped"`` mode a sub-group's row).

        Every method that weights rows from the Gramian (ours in
        :mod:`automtl.balance._gram_solvers`, and torchjd's ``GramianWeightedAggregator`` s:
        UPGrad, DualProj, IMTL-G, Aligned-MTL, PCGrad) receives ``G = J Jᵀ`` formed in float64
        whatever the dtype of ``J`` (:func:`gramian64`), and the aggregate ``d = wᵀJ`` is
        accumulated in float64 before it is rounded to ``J``'s dtype (:func:`combine64`): a
        float32 Gramian carries a relative error of about ``1e-7`` of ``‖g_i‖ ‖g_j‖``, which
        the solvers that invert it (ConFIG, IMTL-G, MGDA on nearly dependent gradients)
        amplify into errors of order 1.

        Args:
            tasks: The rows' names.
            matrix: ``J`` ``[m, n]``, one gradient per row (any floating dtype).
            activations: The shared representation ``z`` ``[N, ...]`` (``N·d = n``) whose
                gradients the rows are, in ``"representation"`` and ``"grouped"`` modes;
                ``None`` in ``"full"`` mode. Only methods defined on activations (GradDrop)
                read it.

        Returns:
            The aggregate ``[n]`` (``J``'s dtype) and, for aggregators that weight rows, the
            weights ``[m]`` (float64).
        """
        weights = self._row_weights(tasks, matrix)
        if weights is not None:
            vector = combine64(weights, matrix)
        else:
            vector = self._aggregator(tasks, matrix.shape[1])(matrix)
        if not bool(torch.isfinite(vector).all()):
            warnings.warn(
                f"{type(self).__name__} gave a non-finite aggregate for tasks {list(tasks)}; "
                "using the mean gradient for this step",
                RuntimeWarning,
                stacklevel=3,
            )
            vector = matrix.mean(dim=0)
            weights = torch.full((len(tasks),), 1.0 / len(tasks), dtype=torch.float64)
        return vector, weights

    def _row_weights(self, tasks: tuple[str, ...], matrix: torch.Tensor) -> torch.Tensor | None:
        """The row weights ``[m]`` (float64, on ``matrix``'s device) of a method that weights
        rows, from the float64 Gramian where the method needs only that; ``None`` for the
        other aggregators."""
        gram: torch.Tensor | None = None
        if self.solves_on_gramian:
            gram = gramian64(matrix)
            solved = self.gramian_weights(tasks, gram.cpu().numpy())
            if solved is not None:
                return torch.from_numpy(solved).to(matrix.device, torch.float64)
        agg = self._aggregator(tasks, matrix.shape[1])
        jd = torchjd_aggregation()
        if isinstance(agg, jd.GramianWeightedAggregator):
            gram = gramian64(matrix) if gram is None else gram
            return agg.gramian_weighting(gram).to(torch.float64)
        if isinstance(agg, jd.WeightedAggregator):
            return agg.weighting(matrix).to(torch.float64)
        return None

    # ------------------------------------------------------------------ backward
    def backward(self, losses: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        if not losses:
            return {}
        segs = segments(ctx.param_groups, list(losses))
        if self.mode == "full":
            weights = self._backward_full(losses, segs)
        else:
            weights = self._backward_representation(losses, segs, ctx)
        return _report(losses, weights)

    def _backward_full(
        self, losses: Mapping[str, torch.Tensor], segs: list[Segment]
    ) -> list[tuple[tuple[str, ...], torch.Tensor | None]]:
        params_of: dict[str, list[torch.Tensor]] = {t: [] for t in losses}
        for seg in segs:
            for t in seg.tasks:
                params_of[t].extend(seg.params)
        grads: dict[str, dict[int, torch.Tensor | None]] = {}
        names = list(losses)
        for i, t in enumerate(names):
            params = params_of[t]
            if not params:
                grads[t] = {}
                continue
            got = torch.autograd.grad(losses[t], params, retain_graph=i < len(names) - 1, allow_unused=True)
            grads[t] = {id(p): g for p, g in zip(params, got)}
        reported = []
        for seg in segs:
            if len(seg.tasks) == 1:
                (t,) = seg.tasks
                for p in seg.params:
                    _accumulate(p, grads[t].get(id(p)))
                continue
            matrix = torch.stack(
                [torch.cat([_flat(grads[t].get(id(p)), p) for p in seg.params]) for t in seg.tasks]
            )
            vector, w = self.aggregate(seg.tasks, matrix)
            offset = 0
            for p in seg.params:
                _accumulate(p, vector[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
            reported.append((seg.tasks, w))
        return reported

    def _backward_representation(
        self, losses: Mapping[str, torch.Tensor], segs: list[Segment], ctx: StepContext
    ) -> list[tuple[tuple[str, ...], torch.Tensor | None]]:
        features = features_by_key(ctx.extra.get("features"))
        outputs = []
        for seg in segs:
            if len(seg.tasks) < 2:
                continue
            if seg.out_key is None or seg.out_key not in features:
                raise ValueError(
                    f"{type(self).__name__}(mode='representation') needs the output of node "
                    f"'{seg.out_key}' in ctx.extra['features'] ({{Node: tensor}}, as automtl.train.fit "
                    "passes it); use mode='full' otherwise"
                )
            outputs.append(features[seg.out_key])
        return representation_backward(losses, segs, outputs, self.aggregate, grouped=self.mode == "grouped")


#: Elements of one float64 column block in :func:`gramian64` and :func:`combine64` (32 MiB),
#: so that a float32 Jacobian of a large segment is never copied whole into float64.
_BLOCK = 1 << 22


def _column_blocks(matrix: torch.Tensor) -> range:
    return range(0, matrix.shape[1], max(1, _BLOCK // max(matrix.shape[0], 1)))


def gramian64(matrix: torch.Tensor) -> torch.Tensor:
    """The Gramian ``G = J Jᵀ`` ``[m, m]`` of ``J`` ``[m, n]``, formed in float64.

    A float32 ``J`` is converted one column block at a time, so each product of two float32
    entries is exact and only the float64 sums round: each entry of ``G`` is then accurate to
    ``n·1.1e-16`` of ``‖g_i‖ ‖g_j‖`` at worst (typically ``√n`` times that) instead of about
    ``1e-7``. (Solvers that invert ``G`` on nearly
    dependent gradients need it: ConFIG, Liu et al., ICLR 2025, eq. 2, applies a
    pseudo-inverse; MGDA's minimum-norm point, Sener and Koltun, NeurIPS 2018, solves a system
    in ``G``.)

    Args:
        matrix: ``J`` ``[m, n]``, any floating dtype (detached here).

    Returns:
        ``G`` ``[m, m]``, float64, on ``J``'s device.
    """
    matrix = matrix.detach()
    if matrix.dtype == torch.float64:
        return matrix @ matrix.T
    m = matrix.shape[0]
    gram = torch.zeros(m, m, dtype=torch.float64, device=matrix.device)
    blocks = _column_blocks(matrix)
    for start in blocks:
        block = matrix[:, start : start + blocks.step].to(torch.float64)
        gram.addmm_(block, block.T)
    return gram


def combine64(weights: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """The aggregate ``d = wᵀJ`` ``[n]``, accumulated in float64 and returned in ``J``'s dtype.

    Row weights from an ill-conditioned Gramian can be large and of both signs while ``d`` is
    small; summing such products in float32 would lose the digits that the float64 Gramian
    kept.

    Args:
        weights: ``w`` ``[m]`` (any floating dtype; converted to float64).
        matrix: ``J`` ``[m, n]``.

    Returns:
        ``d`` ``[n]``, ``J``'s dtype and device.
    """
    matrix = matrix.detach()
    weights = weights.to(matrix.device, torch.float64)
    if matrix.dtype == torch.float64:
        return weights @ matrix
    out = torch.empty(matrix.shape[1], dtype=matrix.dtype, device=matrix.device)
    blocks = _column_blocks(matrix)
    for start in blocks:
        stop = start + blocks.step
        out[start:stop] = weights @ matrix[:, start:stop].to(torch.float64)
    return out


def _flat(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(like.numel(), dtype=like.dtype, device=like.device) if grad is None else grad.reshape(-1)


def _accumulate(param: torch.Tensor, grad: torch.Tensor | None) -> None:
    if grad is None:
        return
    grad = grad.detach()
    param.grad = grad if param.grad is None else param.grad + grad


def _report(
    losses: Mapping[str, torch.Tensor], aggregated: list[tuple[tuple[str, ...], torch.Tensor | None]]
) -> dict[str, float]:
    out: dict[str, float] = {}
    size: dict[str, int] = {}
    for tasks, w in aggregated:
        values = [1.0] * len(tasks) if w is None else [float(v) for v in w.detach().cpu()]
        for t, v in zip(tasks, values):
            if len(tasks) > size.get(t, 0):
                out[t], size[t] = (v if math.isfinite(v) else 1.0), len(tasks)
    return {t: out.get(t, 1.0) for t in losses}
