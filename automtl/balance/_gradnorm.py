"""GradNorm (Chen et al., ICML 2018): learn task weights that equalise training rates."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from automtl.balance._base import Balancer, HParam, StepContext, register_balancer
from automtl.balance._optim import ScalarAdam
from automtl.balance._rows import RowCapture
from automtl.balance._tree import features_by_key, leaf_groups
from automtl.build import ParamGroup

__all__ = ["GradNorm"]


def _row_norms(rows: Sequence[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor:
    """``‖row‖`` of each row (0 for ``None``), ``[k]``, detached: one stack and one norm when the
    rows have one shape (hard parameter sharing), else one norm per row."""
    present = [r.detach() for r in rows if r is not None]
    if len(present) == len(rows) and all(r.shape == present[0].shape for r in present):
        return torch.linalg.vector_norm(torch.stack(present).flatten(1), dim=1)
    zero = like.new_zeros(())
    return torch.stack([torch.linalg.vector_norm(r.detach()) if r is not None else zero for r in rows])


def _linear_head_norms(grads: Sequence[torch.Tensor | None], weights: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """``‖g_t W_t‖_F`` for each task, ``[k]``, detached: the norm of the gradient that an affine
    head ``y = z Wᵀ + b`` sends into its input ``z``, from the gradient ``g_t`` of its output
    (``[N]`` for one output, else ``[N, o]``) and its weight ``W_t`` ``[o, d]``:
    ``‖g W‖_F² = Σ (gᵀg) ⊙ (W Wᵀ)``, which for ``o = 1`` is ``‖g‖² ‖W‖²``. ``None``: 0."""
    present = [g for g in grads if g is not None]
    one_output = len(present) == len(grads) and all(g.dim() == 1 for g in present)
    if one_output and len({g.shape for g in present}) == 1 and len({w.shape for w in weights}) == 1 and weights[0].shape[0] == 1:
        # every head has one output and the same width: two stacked norms
        g_norms = torch.linalg.vector_norm(torch.stack([g.detach() for g in present]), dim=1)
        w_norms = torch.linalg.vector_norm(torch.stack([w.detach().reshape(-1) for w in weights]), dim=1)
        return g_norms * w_norms
    out = []
    for g, w in zip(grads, weights):
        if g is None:
            out.append(like.new_zeros(()))
            continue
        g2 = g.detach().reshape(g.shape[0], -1)
        w2 = w.detach()
        out.append(torch.sqrt(((g2.T @ g2) * (w2 @ w2.T)).sum().clamp_min(0)))
    return torch.stack(out)


@register_balancer("gradnorm")
class GradNorm(Balancer):
    """GradNorm: task weights that pull every task's gradient norm towards a common target.

    Per step, with learned weights ``w_t`` (``Σ_t w_t = T``, the number of tasks) and the
    network loss ``L = Σ_t w_t L_t`` (Chen et al., ICML 2018, §3):

    * ``G_t = ‖∇_W w_t L_t‖ = w_t ‖∇_W L_t‖`` — the weighted gradient norm on a chosen set of
      weights ``W``; ``Ḡ`` is its mean over tasks;
    * ``L̃_t = L_t / L_t(0)`` (loss ratio to the task's first recorded loss) and the relative
      inverse training rate ``r_t = L̃_t / mean_i L̃_i``;
    * ``L_grad = Σ_t |G_t − Ḡ · r_t^α|`` (eq. 2), the target ``Ḡ · r_t^α`` held constant, so
      ``∂L_grad/∂w_t = sign(G_t − Ḡ r_t^α) · ‖∇_W L_t‖``;
    * ``w`` takes one step of its own Adam on ``∂L_grad/∂w`` (Alg. 1), then is renormalised to
      ``Σ_t w_t = T`` (kept ``> 0``).

    ``W`` (the ``mode`` hyperparameter): ``"full"`` — the parameters of each task's last
    backbone block (the block feeding its head): under hard parameter sharing this is the
    paper's choice, "the last shared layer"; in a branched tree every task's ``W`` is a copy
    of the same block, so the norms stay comparable. ``"representation"`` — the output of that
    block (the heads' input, ``[N, d]``), the cheaper choice of LibMTL's ``rep_grad``. Cost:
    where the trainer passes the heads' outputs (``ctx.extra["outputs"]``, automtl's affine
    heads ``y_t = z W_tᵀ + b_t``), ``"representation"`` takes ``‖∂(w_t L_t)/∂z‖ = ‖g_t W_t‖``
    from the gradient ``g_t`` of each head's output, kept during the network's own backward
    pass by ``retain_grad`` (``[N, o]``, not ``[N, d]``), so it needs nothing more. Where
    each head reads its block's output ``z`` alone (automtl's networks), the
    per-task gradients ``w_t ∂L_t/∂z`` are captured during the network's own backward pass;
    ``"full"`` then needs one batched vector-Jacobian
    product per leaf block, ``(∂z/∂W)ᵀ`` applied to the tasks' rows at once
    (``torch.autograd.grad(..., is_grads_batched=True)``), since ``W`` reaches a task's loss only
    through ``z``. Otherwise (no ``ctx.extra["features"]``, or a head that shares operations
    with another) each task takes one extra backward pass through its head (and, in ``"full"``,
    its block).

    Only tasks labelled in the batch take part in a step (their ``Ḡ``, ``r`` and update); with
    a single labelled task the weights do not move.

    Args:
        tasks: Every task name.
        alpha: ``α ≥ 0``, the strength of the restoring force towards equal training rates
            (``α = 0``: equal gradient norms). The paper's experiments use 0.12 to 1.5 and its
            sweep covers [0, 3]; default 1.5 (its NYUv2 value), searched in [0, 3].
        lr: Step size of the weights' own Adam, so that their speed does not depend on the
            network's learning rate. Default 0.025, searched in [0.001, 0.1] (log).
        mode: ``"full"`` or ``"representation"`` (see above; searched: both). The default
            stays ``"full"``: the paper defines ``G_t`` on the weights of the last shared
            layer (§3.2) and never on activations; ``"representation"`` (LibMTL's
            ``rep_grad``) is the cheaper variant, offered but not the default.

    Raises:
        ValueError: ``alpha < 0``, ``lr <= 0`` or an unknown mode.
    """

    paper = "Chen, Badrinarayanan, Lee, Rabinovich. GradNorm. ICML 2018, eq. 2 and Alg. 1"
    hyperparameters: ClassVar[Mapping[str, HParam]] = {
        "alpha": HParam(default=1.5, low=0.0, high=3.0, doc="restoring force α; paper: 0.12-1.5, swept over [0, 3]"),
        "lr": HParam(default=0.025, low=1e-3, high=0.1, log=True, doc="step size of the weights' Adam"),
        "mode": HParam(
            default="full",
            choices=("full", "representation"),
            doc="'full': W = last block's parameters (paper); 'representation': its output (cheaper)",
        ),
    }

    def __init__(self, tasks: Sequence[str], alpha: float = 1.5, lr: float = 0.025, mode: str = "full") -> None:
        super().__init__(tasks)
        if not (alpha >= 0 and math.isfinite(alpha)):
            raise ValueError(f"GradNorm alpha must be finite and >= 0, got {alpha}")
        if not lr > 0:
            raise ValueError(f"GradNorm lr must be > 0, got {lr}")
        if mode not in ("full", "representation"):
            raise ValueError(f"GradNorm mode must be 'full' or 'representation', got {mode!r}")
        self.alpha, self.lr, self.mode = float(alpha), float(lr), mode
        n = len(self.tasks)
        self._index = {t: i for i, t in enumerate(self.tasks)}
        self._weights = [1.0] * n
        self._initial: list[float | None] = [None] * n
        self._adam = ScalarAdam(n, lr=self.lr)
        self._leaf_cache: tuple[int, dict[str, ParamGroup]] | None = None
        self._head_cache: tuple[int, dict[str, torch.Tensor]] | None = None

    @property
    def task_weights(self) -> torch.Tensor:
        """The current weight of every task, ``[T]`` (sums to ``T``)."""
        return torch.tensor(self._weights)

    def get_extra_state(self) -> dict[str, Any]:
        return {"weights": list(self._weights), "initial": list(self._initial), "adam": self._adam.state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._weights, self._initial = list(state["weights"]), list(state["initial"])
        self._adam.load(state["adam"])

    def _leaves(self, ctx: StepContext) -> dict[str, ParamGroup]:
        key = id(ctx.param_groups)
        if self._leaf_cache is None or self._leaf_cache[0] != key:
            self._leaf_cache = (key, leaf_groups(ctx.param_groups, self.tasks))
        return self._leaf_cache[1]

    def _leaf_outputs(self, losses: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor] | None:
        """Each task's leaf-block output (its head's input) from ``ctx.extra["features"]``, or
        ``None`` if one of them is not there."""
        leaves = self._leaves(ctx)
        features = features_by_key(ctx.extra.get("features"))
        if any(leaves[t].key not in features for t in losses):
            return None
        return {t: features[leaves[t].key] for t in losses}

    def _linear_heads(
        self, losses: Mapping[str, torch.Tensor], ctx: StepContext
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """Each task's head output and head weight ``[o, d]`` when ``ctx.extra["outputs"]`` holds
        every task of ``losses`` and every head group is one affine map (a weight ``[o, d]``,
        perhaps a bias ``[o]``, and an output of ``o`` columns); else ``None``."""
        outputs = ctx.extra.get("outputs")
        if not outputs:
            return None
        key = id(ctx.param_groups)
        if self._head_cache is None or self._head_cache[0] != key:
            heads: dict[str, torch.Tensor] = {}
            for group in ctx.param_groups:
                params = group.params
                if (
                    group.key.startswith("head:")
                    and len(group.tasks) == 1
                    and len(params) in (1, 2)
                    and params[0].dim() == 2
                    and (len(params) == 1 or params[1].shape == params[0].shape[:1])
                ):
                    heads[group.tasks[0]] = params[0]
            self._head_cache = (key, heads)
        heads = self._head_cache[1]
        ys, ws = [], []
        for t in losses:
            y, w = outputs.get(t), heads.get(t)
            if y is None or w is None or not y.requires_grad:
                return None
            if (y.shape[-1] if y.dim() > 1 else 1) != w.shape[0]:
                return None
            ys.append(y)
            ws.append(w)
        return ys, ws

    def _representations(self, losses: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        reps = self._leaf_outputs(losses, ctx)
        if reps is None:
            features = features_by_key(ctx.extra.get("features"))
            leaves = self._leaves(ctx)
            missing = [leaves[t].key for t in losses if leaves[t].key not in features]
            raise ValueError(
                f"GradNorm(mode='representation') needs the outputs of nodes {missing} in "
                "ctx.extra['features'], as automtl.train.fit passes them; use mode='full' otherwise"
            )
        return reps

    def gradient_norms(self, losses: Mapping[str, torch.Tensor], ctx: StepContext) -> torch.Tensor:
        """``‖∇_W L_t‖`` for each task of ``losses`` (in order), ``[k]``, detached; one backward
        pass per task (its graph is retained)."""
        if self.mode == "representation":
            reps = self._representations(losses, ctx)
            inputs_of = {t: [reps[t]] for t in losses}
        else:
            leaves = self._leaves(ctx)
            inputs_of = {t: list(leaves[t].params) for t in losses}
            empty = [leaves[t].key for t in losses if not inputs_of[t]]
            if empty:
                raise ValueError(f"GradNorm(mode='full'): blocks {empty} have no parameters")
        norms = []
        for t, loss in losses.items():
            grads = torch.autograd.grad(loss, inputs_of[t], retain_graph=True, allow_unused=True)
            present = [g.detach().float() for g in grads if g is not None]
            # One fused norm over the block's tensors instead of a square and a sum per tensor.
            norms.append(torch.nn.utils.get_total_norm(present) if present else loss.new_zeros((), dtype=torch.float32))
        return torch.stack(norms)

    def _block_norms(
        self,
        losses: Mapping[str, torch.Tensor],
        reps: Mapping[str, torch.Tensor],
        rows: Sequence[torch.Tensor | None],
        ctx: StepContext,
    ) -> torch.Tensor:
        """``‖∇_W (w_t L_t)‖`` for each task of ``losses``, ``[k]``, from its captured row
        ``w_t ∂L_t/∂z`` at its leaf block's output ``z``: ``∇_W (w_t L_t) = (∂z/∂W)ᵀ row_t``,
        since ``W`` reaches the task's loss only through ``z``. The tasks that share a leaf
        block take one batched vector-Jacobian product (``is_grads_batched``) through it, in
        place of one backward pass per task through its head and block."""
        leaves = self._leaves(ctx)
        names = list(losses)
        norm_of: dict[int, torch.Tensor] = {}
        by_leaf: dict[int, list[int]] = {}
        for i, t in enumerate(names):
            by_leaf.setdefault(id(reps[t]), []).append(i)
        for members in by_leaf.values():
            z = reps[names[members[0]]]
            params = list(leaves[names[members[0]]].params)
            if not params:
                raise ValueError(f"GradNorm(mode='full'): block {leaves[names[members[0]]].key} has no parameters")
            cotangents = torch.stack([_row_or_zeros(rows[i], z) for i in members])
            grads = torch.autograd.grad(z, params, cotangents, is_grads_batched=True, allow_unused=True)
            flat = torch.cat([g.flatten(1) for g in grads if g is not None], dim=1)
            norm_of.update(zip(members, torch.linalg.vector_norm(flat.float(), dim=1)))
        return torch.stack([norm_of[i] for i in range(len(names))])

    def backward(self, losses: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        if not losses:
            return {}
        idx = [self._index[t] for t in losses]
        w = [self._weights[i] for i in idx]
        stacked = torch.stack(list(losses.values()))
        total = torch.tensor(w, dtype=stacked.dtype, device=stacked.device) @ stacked
        capture, reps = None, None
        heads = self._linear_heads(losses, ctx) if self.mode == "representation" and len(losses) > 1 else None
        if heads is not None:
            # ‖w_t ∂L_t/∂z‖ from each head's output gradient (kept by retain_grad, autograd's
            # own C++ hook: it leaves .grad set on the trainer's output tensors) and weight
            outs, head_weights = heads
            for y in outs:
                y.retain_grad()
            total.backward()
            norm_tensor: torch.Tensor | None = _linear_head_norms([y.grad for y in outs], head_weights, stacked)
            rows_weighted = True
        elif len(losses) > 1:
            # The heads' gradients of their inputs are captured during the network's own
            # backward pass when each head reads its input alone.
            reps = self._representations(losses, ctx) if self.mode == "representation" else self._leaf_outputs(losses, ctx)
            capture = None if reps is None else RowCapture.create(losses, reps)
        if capture is not None and reps is not None:
            # "full" keeps the graph for one batched vector-Jacobian product per leaf block after the pass
            with capture:
                total.backward(retain_graph=self.mode == "full")
            rows = [capture.rows.get(t) for t in losses]
            if self.mode == "representation":
                # the captured rows are of w_t L_t: their norms are divided by w_t below
                norm_tensor = _row_norms(rows, stacked)
            else:
                norm_tensor = self._block_norms(losses, reps, rows, ctx)
            rows_weighted = True
        if heads is None and capture is None:
            norm_tensor = self.gradient_norms(losses, ctx) if len(losses) > 1 else None
            rows_weighted = False
            total.backward()
        # One device-to-host copy per step for the losses and the norms together.
        k = len(losses)
        if norm_tensor is None:
            loss_values, norms = stacked.detach().tolist(), None
        else:
            dtype = torch.promote_types(stacked.dtype, norm_tensor.dtype)
            both = torch.cat([stacked.detach().to(dtype), norm_tensor.to(dtype)]).tolist()
            loss_values, norms = both[:k], both[k:]
            if rows_weighted:  # captured gradients are of w_t L_t
                norms = [n / a for n, a in zip(norms, w)]
        self._update(idx, w, loss_values, norms)
        return dict(zip(losses, w))

    def _update(self, idx: list[int], w: list[float], loss: list[float], norms: list[float] | None) -> None:
        init: list[float] = []
        for i, value in zip(idx, loss):
            first = self._initial[i]
            if first is None:
                first = self._initial[i] = value
            init.append(first)
        if norms is None:
            return
        ratios = [value / max(first, 1e-12) for value, first in zip(loss, init)]
        _, grad = self.weight_gradient(w, norms, ratios)
        self._adam.step(self._weights, dict(zip(idx, grad)))
        self._weights = [max(v, 1e-3) for v in self._weights]
        scale = len(self._weights) / sum(self._weights)
        self._weights = [v * scale for v in self._weights]

    def weight_gradient(
        self, w: Sequence[float], norms: Sequence[float], loss_ratios: Sequence[float]
    ) -> tuple[list[float], list[float]]:
        """The targets ``Ḡ r_t^α`` and ``∂L_grad/∂w_t``, for weights ``w``, norms ``‖∇_W L_t‖``
        and loss ratios ``L̃_t`` (one entry per task)."""
        weighted = [float(a) * float(g) for a, g in zip(w, norms)]
        mean_ratio = max(sum(float(r) for r in loss_ratios) / len(loss_ratios), 1e-12)
        mean_g = sum(weighted) / len(weighted)
        target = [mean_g * (float(r) / mean_ratio) ** self.alpha for r in loss_ratios]
        grad = [math.copysign(1.0, gw - tg) * float(g) if gw != tg else 0.0 for gw, tg, g in zip(weighted, target, norms)]
        return target, grad


def _row_or_zeros(row: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A captured row, or zeros shaped like ``like`` where the task's loss did not reach it."""
    return torch.zeros_like(like) if row is None else row
