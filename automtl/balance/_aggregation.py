"""Gradient aggregation on branched networks: per-task gradients combined by a torchjd aggregator.

:class:`GradientAggregation` applies the tree rule of :mod:`automtl.balance._tree` in one of
two modes, chosen by its ``mode`` hyperparameter (the search may choose it too):

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
    combination of its tasks' gradients, with the weights chosen on ``z``. Cost: when every
    shared segment reaches the last block (hard parameter sharing, or trees that split only
    at the root), each task's gradient of ``z`` flows through its own head alone and all of
    them are captured in one backward pass (:mod:`automtl.balance._rows`); otherwise one
    backward pass per task from its loss down to the shallowest shared representation on its
    path (through the blocks of its group, but not the trunk's parameters). Then one backward
    pass per segment, from ``a`` into its parameters.

In both modes a head, and any block used by one active task, receives its task's plain
gradient; a group with no active task receives nothing.

Aggregators come from torchjd (``torchjd>=0.18,<0.19``), imported on first use. Some need
optional solvers (Nash-MTL and CAGrad: cvxpy); instantiating such a balancer without them
raises an :class:`ImportError` that names the extra to install.
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
from automtl.balance._rows import RowCapture
from automtl.balance._tree import Segment, block_of, features_by_key, segments

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator

__all__ = ["MODES", "GradientAggregation", "torchjd_aggregation"]

MODES: tuple[str, ...] = ("full", "representation")

_MODE_DOC = (
    "'full': aggregate the per-task gradients of all parameters of each shared segment (as "
    "published); 'representation': aggregate the per-task gradients of the segment's output "
    "(MGDA-UB, Sener & Koltun 2018), far cheaper"
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
    implement :meth:`make_aggregator`. See the module docstring for the two modes and the tree
    rule.

    One aggregator instance is kept per active task set, so a stateful aggregator (Nash-MTL,
    GradVac, ExcessMTL) keeps separate state for each segment; when a task goes unlabelled in a
    batch the remaining set is a different key, with its own state.

    Args:
        tasks: Every task name.
        mode: ``"full"`` or ``"representation"``.

    :meth:`backward` returns, for each task in ``losses``, its weight in the aggregation of the
    segment shared by the most tasks that contains it (for aggregators that weight rows,
    ``d = wᵀJ``); ``1.0`` for the other aggregators and for tasks that share no segment.

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

    # ------------------------------------------------------------------ aggregation
    def _aggregator(self, tasks: tuple[str, ...], n_cols: int) -> Aggregator:
        key: tuple[Any, ...] = (tasks, n_cols) if self.column_state else (tasks,)
        agg = self._aggregators.get(key)
        if agg is None:
            agg = self._aggregators[key] = self.make_aggregator(len(tasks))
        return agg

    def aggregate(self, tasks: tuple[str, ...], matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Aggregate the rows of ``matrix`` ``[m, n]`` (one per task of ``tasks``).

        Returns:
            The aggregate ``[n]`` and, for aggregators that weight rows, the weights ``[m]``.
        """
        weighted = torchjd_aggregation().WeightedAggregator
        agg = self._aggregator(tasks, matrix.shape[1])
        weights: torch.Tensor | None = None
        if isinstance(agg, weighted):
            weights = agg.weighting(matrix)
            vector = weights.to(matrix.dtype) @ matrix
        else:
            vector = agg(matrix)
        if not bool(torch.isfinite(vector).all()):
            warnings.warn(
                f"{type(self).__name__} gave a non-finite aggregate for tasks {list(tasks)}; "
                "using the mean gradient for this step",
                RuntimeWarning,
                stacklevel=3,
            )
            vector, weights = matrix.mean(dim=0), torch.full((len(tasks),), 1.0 / len(tasks))
        return vector, weights

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
        shared = [s for s in segs if len(s.tasks) > 1]
        outputs: dict[int, torch.Tensor] = {}
        for i, seg in enumerate(shared):
            if seg.out_key is None or seg.out_key not in features:
                raise ValueError(
                    f"{type(self).__name__}(mode='representation') needs the output of node "
                    f"'{seg.out_key}' in ctx.extra['features'] ({{Node: tensor}}, as automtl.train.fit "
                    "passes it); use mode='full' otherwise"
                )
            outputs[i] = features[seg.out_key]
        rows: dict[int, dict[str, torch.Tensor]] = {i: {} for i in outputs}
        if not self._rows_in_one_pass(losses, segs, shared, outputs, ctx, rows):
            self._rows_per_task(losses, segs, shared, outputs, rows)
        reported = []
        for i, seg in enumerate(shared):
            z = outputs[i]
            matrix = torch.stack([rows[i][t].reshape(-1) for t in seg.tasks])
            vector, w = self.aggregate(seg.tasks, matrix)
            got = torch.autograd.grad(
                z, seg.params, grad_outputs=vector.view_as(z), retain_graph=i < len(shared) - 1, allow_unused=True
            )
            for p, g in zip(seg.params, got):
                _accumulate(p, g)
            reported.append((seg.tasks, w))
        return reported

    @staticmethod
    def _rows_in_one_pass(
        losses: Mapping[str, torch.Tensor],
        segs: list[Segment],
        shared: list[Segment],
        outputs: dict[int, torch.Tensor],
        ctx: StepContext,
        rows: dict[int, dict[str, torch.Tensor]],
    ) -> bool:
        """When every shared segment ends at the last block (hard sharing, or trees whose
        shared parts all reach the heads), each task's gradient of its segment's output flows
        through its own head only: capture them all in one backward pass (see
        :mod:`automtl.balance._rows`), with the plain gradients of the single-task parameters."""
        blocks = [b for b in (block_of(g.key) for g in ctx.param_groups) if b is not None]
        last = max(blocks, default=-1)
        if not shared or any(block_of(seg.out_key or "") != last for seg in shared):
            return False
        z_of_task = {t: outputs[i] for i, seg in enumerate(shared) for t in seg.tasks}
        capture = RowCapture.create(losses, z_of_task)
        if capture is None:
            return False
        own = [p for seg in segs if len(seg.tasks) == 1 for p in seg.params]
        total = torch.stack(list(losses.values())).sum()
        with capture:
            got = torch.autograd.grad(total, own + list(outputs.values()), retain_graph=True, allow_unused=True)
        for p, g in zip(own, got[: len(own)]):
            _accumulate(p, g)
        for i, seg in enumerate(shared):
            for t in seg.tasks:
                row = capture.rows.get(t)
                rows[i][t] = torch.zeros_like(outputs[i]) if row is None else row
        return True

    @staticmethod
    def _rows_per_task(
        losses: Mapping[str, torch.Tensor],
        segs: list[Segment],
        shared: list[Segment],
        outputs: dict[int, torch.Tensor],
        rows: dict[int, dict[str, torch.Tensor]],
    ) -> None:
        """One backward pass per task: down to the shallowest shared representation on its
        path, capturing its gradient of every shared representation on the way, plus the plain
        gradient of the parameters only it uses."""
        for t, loss in losses.items():
            reps = [i for i, seg in enumerate(shared) if t in seg.tasks]
            own = [p for seg in segs if seg.tasks == (t,) for p in seg.params]
            inputs = [outputs[i] for i in reps] + own
            if not inputs:
                continue
            got = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
            for i, g in zip(reps, got[: len(reps)]):
                rows[i][t] = torch.zeros_like(outputs[i]) if g is None else g
            for p, g in zip(own, got[len(reps) :]):
                _accumulate(p, g)


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
