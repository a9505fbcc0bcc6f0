"""Small solvers on the task Gramian ``G = J Jᵀ`` ``[m, m]``, in float64 NumPy.

The weights of MGDA, CAGrad, FairGrad, ConFIG and Nash-MTL depend on the gradients only through
``G``. torchjd computes them with loops of tiny torch operations (MGDA) or by building a new
cvxpy problem at every call (CAGrad, Nash-MTL); for ``m <= 20`` tasks a few NumPy operations on
an ``m x m`` matrix cost microseconds instead. Each function solves the same problem as the
paper, and the tests hold it to an independent reference: MGDA to an exhaustive enumeration of
the faces of the simplex on ``J``, ConFIG to the paper's pseudo-inverse of ``J``'s unit rows,
the others to torchjd's answer and, for CAGrad and FairGrad, to their previous SciPy solvers
(SLSQP and least squares, which they replace: 0.1-1 ms a call against tens of microseconds).
``benchmarks/solver_accuracy.py`` measures every Gramian solver against such references. Warm
starts (``previous``) change where an iterative solver starts, never the problem it solves.

``G`` must be formed in float64 (:func:`automtl.balance._aggregation.gramian64` does, whatever
the gradients' dtype): the solvers that invert it lose about ``κ(G)`` times its relative error.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cagrad_weights", "config_weights", "fairgrad_weights", "mgda_weights", "nash_mtl_alpha", "nash_mtl_weights"]


#: MGDA stops when its Frank-Wolfe gap ``wᵀGw − min_j (Gw)_j`` is at most this, relative to
#: ``max_i ‖g_i‖²``: about a hundred times the round-off in computing ``Gw``.
_MGDA_GAP = 1e-13


def mgda_weights(gram: np.ndarray, tol: float = _MGDA_GAP) -> np.ndarray:
    """MGDA's ``α = argmin_{α ∈ Δ_m} αᵀ G α``: the minimum-norm point ``d = αᵀJ`` of the convex
    hull of the task gradients (Désidéri, C. R. Math. 2012; Sener and Koltun, NeurIPS 2018,
    eq. 3 and §3.1), solved exactly by Wolfe's active-set method ("Finding the nearest point in
    a polytope", Math. Programming 1976) on ``G`` ``[m, m]``.

    The support ``S`` (tasks with ``α_t > 0``) starts at the gradient of smallest norm. On ``S``
    the closest point of the affine hull of ``{g_t : t ∈ S}`` to the origin solves the bordered
    system ``[[G_SS, 1], [1ᵀ, 0]] [p; μ] = [0; 1]`` (``‖d‖² = −μ``). If ``p > 0`` the iterate
    moves there, and the task ``j`` with the smallest ``(Gα)_j`` enters ``S`` when
    ``(Gα)_j < αᵀGα``; otherwise the iterate moves towards ``p`` until a weight reaches zero,
    and that task leaves. ``‖d‖`` decreases strictly at every entry, so no support repeats,
    and the support stays affinely independent (an entering ``g_j`` lies off the affine hull
    of ``S``), which keeps the bordered system non-singular with duplicated tasks and
    rank-deficient ``J``. It stops when the Frank-Wolfe gap ``αᵀGα − min_j (Gα)_j`` is at most
    ``tol · max_i G_ii``; since ``‖d − d*‖² ≤ ‖d‖² − ‖d*‖² ≤ 2 · gap`` (``d*`` the exact
    minimum-norm point), this certifies the answer, and at a face optimum the gap is at
    round-off. Sener and Koltun's Frank-Wolfe iteration (their Alg. 2, torchjd's
    ``MGDAWeighting``) converges only sublinearly and stops on a step-size threshold, leaving
    ``‖d‖`` up to a few percent above ``‖d*‖`` (more where ``G`` is singular).

    A zero gradient makes ``d* = 0`` (the start, ``α = e_t``). ``α`` is unique when the
    gradients are affinely independent; otherwise ``d*`` still is, and one ``α`` is returned.
    Cost: one ``(|S|+1)``-square solve per step, about ``|S|`` to ``2|S|`` steps.

    Args:
        gram: ``G = J Jᵀ`` ``[m, m]``, symmetric positive semi-definite (float64).
        tol: The gap at which to stop, relative to ``max_i ‖g_i‖²``.

    Returns:
        ``α`` ``[m]`` on the simplex (``1/m`` each for an all-zero or non-finite ``G``).
    """
    m = gram.shape[0]
    scale = float(np.max(np.diag(gram))) if m else 0.0
    if not (scale > 0 and np.isfinite(scale)):
        return np.full(m, 1.0 / m)
    g = gram / scale
    support = np.array([int(np.argmin(np.diag(g)))])
    alpha = np.ones(1)
    for _ in range(4 * m + 10):
        g_alpha = g[:, support] @ alpha
        outside = g_alpha.copy()
        outside[support] = np.inf
        j = int(np.argmin(outside))
        if not outside[j] < float(alpha @ g_alpha[support]) - tol:
            break
        support, alpha = _mgda_face(g, np.append(support, j), np.append(alpha, 0.0))
    return _scatter(m, support, alpha)


def _mgda_face(g: np.ndarray, support: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wolfe's minor cycle for :func:`mgda_weights`: from ``alpha`` ``[k]`` (``≥ 0``, summing to
    1) on ``support``, the minimum-norm point of the affine hull of a sub-support, reached
    by dropping the tasks whose weight reaches zero on the way. Returns the new support and
    its (positive) weights."""
    while True:
        target = _affine_min_norm(g, support)
        if target is None:  # a singular bordered system: keep the last point of the hull
            return _positive(support, alpha)
        if float(target.min()) > 0:
            return support, target
        falling = target <= 0
        ratios = np.full(support.size, np.inf)
        drop = alpha[falling] - target[falling]  # > 0, or 0 for an entering task with p_j = 0
        ratios[falling] = np.divide(alpha[falling], drop, out=np.zeros_like(drop), where=drop > 0)
        i = int(np.argmin(ratios))
        alpha = np.maximum(alpha + ratios[i] * (target - alpha), 0.0)
        alpha[i] = 0.0
        support, alpha = _positive(support, alpha)


def _affine_min_norm(g: np.ndarray, support: np.ndarray) -> np.ndarray | None:
    """The weights ``p`` (``Σ p = 1``) of the point of the affine hull of the ``support``'s
    gradients closest to the origin, from ``[[G_SS, 1], [1ᵀ, 0]] [p; μ] = [0; 1]``; ``None``
    if that system is singular."""
    k = support.size
    if k == 1:
        return np.ones(1)
    bordered = np.ones((k + 1, k + 1))
    bordered[:k, :k] = g[support[:, None], support]
    bordered[k, k] = 0.0
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    try:
        solved = np.linalg.solve(bordered, rhs)
    except np.linalg.LinAlgError:
        return None
    return solved[:k] if bool(np.isfinite(solved).all()) else None


def _positive(support: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The entries of ``support`` with a positive weight, and the weights renormalised to sum to 1."""
    kept = alpha > 0
    alpha = alpha[kept]
    return support[kept], alpha / float(alpha.sum())


#: A task whose squared gradient norm is at most this, relative to the scaled ``G`` (unit
#: trace for CAGrad, unit Frobenius norm for FairGrad), is treated as having a zero gradient.
_ZERO_ROW = 1e-14
#: CAGrad: a face optimum with ``‖g_w‖`` below this (unit-trace scale) is at ``g_w = 0``; the
#: norm is computed as ``√(wᵀGw)``, whose round-off is about ``1e-8``.
_ZERO_NORM = 1e-7


def cagrad_weights(gram: np.ndarray, c: float, previous: np.ndarray | None = None, norm_eps: float = 1e-4) -> np.ndarray:
    """CAGrad's row weights (Liu et al., NeurIPS 2021, Alg. 1 and its dual, eq. 3), from ``G``.

    Solves ``w* = argmin_{w ∈ Δ_m} wᵀ G 1/m + √φ √(wᵀ G w)`` with ``√φ = c ‖g_0‖``,
    ``‖g_0‖² = 1ᵀ G 1 / m²``, then returns ``1/m + (√φ / ‖g_{w*}‖) w*`` so that
    ``d = weightsᵀ J`` is ``g_0 + (√φ / ‖g_w‖) g_w`` (no final ``1/(1+c²)`` rescaling, as in
    torchjd). ``G`` is first scaled to unit trace, which leaves ``w*`` unchanged (both terms
    scale alike).

    The problem ``min_{w ∈ Δ_m} f(w)`` is convex, and solved exactly by a primal active-set
    method in NumPy (the official code and the previous version of this function use SciPy's
    SLSQP, 0.1-1 ms a call; torchjd uses cvxpy). With ``b = G 1/m``, ``s = √φ``, ``n = ‖g_w‖``,
    on the face of the simplex with support ``S`` the stationarity conditions
    ``b_S + (s/n) G_SS w_S = λ 1``, ``1ᵀ w_S = 1`` have a closed form: with the bordered
    solves ``[[G_SS, 1], [1ᵀ, 0]] [p, q; μ, ν] = [0, −b_S; 1, 0]`` (``p`` the point of the
    face's affine hull with the smallest ``‖g_p‖``, ``P = pᵀGp = −μ``; ``q`` a direction within
    it, ``Q = qᵀGq = −b_Sᵀq``, ``pᵀGq = 0``), the face optimum is ``w_S = p + (n/s) q`` with
    ``n² = s² P / (s² − Q)`` if ``s² > Q``, and otherwise ``f`` decreases without bound along
    ``q``. Each step either moves to a feasible face optimum and adds the task with the most
    negative multiplier ``∂f/∂w_j − λ``, or moves towards it (or along ``q``) until a weight
    reaches zero and drops that task; ``f`` never increases and strictly decreases at each
    face optimum, so no face is visited twice (as in Wolfe's min-norm-point method, which
    this becomes as ``s → ∞``). It starts from ``previous`` (the last ``w*`` for the same
    tasks) when given, else from the best vertex, typically takes 1-3 steps of one
    ``(|S|+1)``-square solve each (20-50 µs a call for ``m <= 12``), and stops when the
    Frank-Wolfe gap ``wᵀ∇f − min_j ∂f/∂w_j`` (an upper bound on ``f(w) − f(w*)``) is at most
    ``1e-11`` of the problem's scale ``max_j |b_j| + s max_j ‖g_j‖``. ``c = 0`` is a linear
    program, solved by its best vertex.

    Tasks with a zero gradient (squared norm at most ``1e-14`` of the trace) are left out and
    put back at the end: with one, ``w = e_i`` reaches ``f = 0`` with ``g_w = 0``, so the
    weights are zero unless the other tasks reach ``f < 0``. Duplicated tasks make ``w*``
    non-unique but not ``g_{w*}`` (nor ``d``); the method keeps the support affinely
    independent, so only one of them enters. When a face optimum has ``g_w = 0`` (``‖g_w‖``
    below ``1e-7``) and ``c ≥ 1`` (then ``f ≥ 0`` everywhere), it is optimal and the weights
    are zero. Where the method cannot certify its answer (``g_w = 0`` on a face with
    ``c < 1``, i.e. ``0`` in the convex hull of some gradients, or a singular bordered
    system), the SLSQP solve of the previous version is run, and the active-set method again
    from its answer (a point with ``f < 0`` keeps it away from ``g_w = 0``); its answer if
    certified, else the better of SLSQP's and the ``g_w = 0`` point, so the result is never
    worse than SLSQP's. If ``g_0 ≈ 0`` (``‖g_0‖² ≤ 1e-14`` of the trace), ``d ≈ 0`` whatever
    ``w*`` and the weights are zero.

    Args:
        gram: ``G`` ``[m, m]``.
        c: Ball radius ``c >= 0``.
        previous: The last solution ``w*`` for the same tasks (on the simplex), a warm start;
            ignored if its shape differs or it is not finite and non-negative.
        norm_eps: Below this ``‖g_w‖`` (relative to the scaled ``G``), the tasks are treated
            as already Pareto-stationary and the weights are zero, as in torchjd.

    Returns:
        Weights ``[m]``.
    """
    m = gram.shape[0]
    trace = float(np.trace(gram))
    if not (trace > 0 and np.isfinite(trace)):
        return np.full(m, 1.0 / m)
    g = gram / trace
    mean_row = g.sum(axis=1) * (1.0 / m)  # G 1/m
    norm_g0 = float(np.sqrt(max(float(mean_row.sum()) / m, 0.0)))
    if not norm_g0**2 > _ZERO_ROW:
        # g_0 ≈ 0 (e.g. two opposite gradients): √φ ≈ 0 and d ≈ g_0 ≈ 0 whatever w*; zero
        # weights, as SLSQP gave by staying at its start 1/m, where g_w = g_0.
        return np.zeros(m)
    sqrt_phi = c * norm_g0
    if previous is not None and previous.shape != (m,):
        previous = None
    if previous is not None and not 0 <= float(previous.min()) <= float(previous.max()) < 1e300:
        previous = None  # negative, infinite or NaN
    w = _cagrad_simplex(g, mean_row, sqrt_phi, previous, can_be_negative=c < 1)
    gw_norm = float(np.sqrt(max(w @ g @ w, 0.0)))
    if gw_norm < norm_eps:
        return np.zeros(m)
    # √φ and ‖g_w‖ both scale with √trace, so these weights also hold for the unscaled rows.
    return np.full(m, 1.0 / m) + (sqrt_phi / gw_norm) * w


def _cagrad_simplex(
    g: np.ndarray, b: np.ndarray, s: float, previous: np.ndarray | None, can_be_negative: bool
) -> np.ndarray:
    """``argmin_{w ∈ Δ_m} bᵀw + s √(wᵀ g w)`` for :func:`cagrad_weights` (``g`` of unit trace).

    ``can_be_negative`` is ``c < 1``: otherwise ``f(w) = g_0ᵀg_w + c‖g_0‖‖g_w‖ ≥ 0``, so a
    point with ``g_w = 0`` is optimal."""
    m = b.shape[0]
    if s == 0.0:  # a linear program: the best vertex.
        w = np.zeros(m)
        w[int(np.argmin(b))] = 1.0
        return w
    live = g.diagonal() > _ZERO_ROW
    all_live = bool(live.all())
    start = None if previous is None else _cagrad_start(previous, live, all_live)
    status, w = _cagrad_active_set(g, b, s, live, all_live, start)
    if status not in ("optimal", "zero") and start is not None:
        status, w = _cagrad_active_set(g, b, s, live, all_live, None)
    if status == "optimal" and not all_live and _cagrad_objective(g, b, s, w) >= 0:
        # A zero gradient reaches f = 0, and no other point does better.
        w = np.zeros(m)
        w[int(np.argmin(live))] = 1.0
        return w
    if status == "optimal" or (status == "zero" and not can_be_negative):
        return w
    # Not certified: SLSQP, then the active-set method again from its answer (when that has
    # f < 0, the method no longer meets g_w = 0), which certifies it in most cases.
    fallback = _cagrad_slsqp(g, b, s, previous)
    polished = _cagrad_start(fallback, live, all_live)
    if polished is not None:
        polished_status, polished = _cagrad_active_set(g, b, s, live, all_live, polished)
        if polished_status == "optimal":
            return polished
    if status == "zero" and _cagrad_objective(g, b, s, w) <= _cagrad_objective(g, b, s, fallback):
        return w
    return fallback


def _cagrad_objective(g: np.ndarray, b: np.ndarray, s: float, w: np.ndarray) -> float:
    return float(b @ w + s * np.sqrt(max(float(w @ g @ w), 0.0)))


def _cagrad_start(w: np.ndarray, live: np.ndarray, all_live: bool) -> np.ndarray | None:
    """A start for :func:`_cagrad_active_set` from a point of the simplex: its weights below
    ``1e-10`` of the largest, and those of zero gradients, set to zero."""
    start = w.copy()
    start[start <= 1e-10 * float(start.max())] = 0.0
    if not all_live:
        start[~live] = 0.0
    total = float(start.sum())
    return start / total if total > 0 else None


def _cagrad_active_set(
    g: np.ndarray, b: np.ndarray, s: float, live: np.ndarray, all_live: bool, start: np.ndarray | None
) -> tuple[str, np.ndarray]:
    """The active-set method of :func:`cagrad_weights` over the tasks where ``live`` (``s > 0``).

    Returns a status and ``w`` ``[m]``: ``"optimal"`` (certified by the Frank-Wolfe gap),
    ``"zero"`` (a face optimum with ``g_w = 0``: ``f(w) = 0``), or ``"singular"``,
    ``"uncertified"``, ``"max_iters"`` (no answer)."""
    m = b.shape[0]
    diag = g.diagonal()
    tol = 1e-11 * (float(np.abs(b).max()) + s * float(np.sqrt(diag.max())))
    if start is None:
        vertex = b + s * np.sqrt(np.maximum(diag, 0.0))
        if not all_live:
            vertex[~live] = np.inf
        support = np.array([int(vertex.argmin())])
        w_s = np.ones(1)
    else:
        support = np.flatnonzero(start)
        w_s = start[support]
    for _ in range(4 * m + 10):
        k = support.size
        if k == 1:  # a vertex: p = 1, q = 0
            target = np.ones(1)
            norm = float(np.sqrt(max(float(diag[support[0]]), 0.0)))
        else:
            bordered = np.empty((k + 1, k + 1))
            bordered[:k, :k] = g[support[:, None], support]
            bordered[k, :k] = 1.0
            bordered[:k, k] = 1.0
            bordered[k, k] = 0.0
            rhs = np.zeros((k + 1, 2))
            rhs[k, 0] = 1.0
            rhs[:k, 1] = -b[support]
            try:
                solved = np.linalg.solve(bordered, rhs)
            except np.linalg.LinAlgError:
                return "singular", _scatter(m, support, w_s)
            p, q = solved[:k, 0], solved[:k, 1]
            gap_q = s * s + float(b[support] @ q)  # s² − Q
            if not (np.isfinite(gap_q) and np.isfinite(solved[k, 0])):
                return "singular", _scatter(m, support, w_s)
            if gap_q > 0:
                norm = s * float(np.sqrt(max(-float(solved[k, 0]), 0.0) / gap_q))  # ‖g_w‖ at the face optimum
                target = p + (norm / s) * q
                step: np.ndarray | None = None if float(target.min()) >= 0 else target - w_s
            else:
                step = q  # f → −∞ along q within the face's affine hull
            if step is not None:
                shrinking = step < 0
                if not shrinking.any():
                    return "singular", _scatter(m, support, w_s)
                ratios = np.full(k, np.inf)
                ratios[shrinking] = w_s[shrinking] / -step[shrinking]
                i = int(ratios.argmin())
                w_s = np.maximum(w_s + ratios[i] * step, 0.0)
                w_s[i] = 0.0
                kept = w_s > 0
                support, w_s = support[kept], w_s[kept]
                continue
        # The face optimum is feasible: move there, then price the other tasks.
        w_s = target
        if norm <= _ZERO_NORM:
            return "zero", _scatter(m, support, w_s)
        g_w = g[:, support] @ w_s
        norm = float(np.sqrt(max(float(w_s @ g_w[support]), 0.0)))
        if norm <= _ZERO_NORM:
            return "zero", _scatter(m, support, w_s)
        grad = b + (s / norm) * g_w  # ∂f/∂w
        lam = float(grad[support] @ w_s)
        outside = grad.copy()
        outside[support] = np.inf
        if not all_live:
            outside[~live] = np.inf
        j = int(outside.argmin())
        if outside[j] < lam - tol:
            support = np.append(support, j)
            w_s = np.append(w_s, 0.0)
            continue
        # Every multiplier is (nearly) non-negative; certify by the Frank-Wolfe gap.
        gap = lam - min(float(outside[j]), float(grad[support].min()))
        return ("optimal" if gap <= tol else "uncertified"), _scatter(m, support, w_s)
    return "max_iters", _scatter(m, support, w_s)


def _scatter(m: int, support: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(m)
    out[support] = values
    return out


def _cagrad_slsqp(g: np.ndarray, b: np.ndarray, s: float, previous: np.ndarray | None) -> np.ndarray:
    """The original solve of :func:`cagrad_weights` by SciPy's SLSQP with the exact gradient
    (the official code also uses SLSQP), for the cases the active-set method cannot certify."""
    from scipy.optimize import minimize

    m = b.shape[0]

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        gw = g @ w
        norm = float(np.sqrt(max(w @ gw, 1e-16)))
        return float(w @ b + s * norm), b + s * gw / norm

    start = np.full(m, 1.0 / m) if previous is None else previous
    result = minimize(
        objective,
        start,
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * m,
        constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)},),
        options={"ftol": 1e-10, "maxiter": 200},
    )
    w = np.clip(result.x, 0.0, None)
    return w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)


def fairgrad_weights(gram: np.ndarray, alpha: float, previous: np.ndarray | None = None) -> np.ndarray:
    """FairGrad's ``w`` with ``G w = w^{-1/α}`` (Ban and Ji, ICML 2024, eq. 4), ``w > 0``.

    torchjd, the official code and the previous version of this function solve it by SciPy's
    bounded nonlinear least squares on the residual ``G w − w^{-1/α}`` (0.1-1 ms a call). Here,
    with ``p = 1/α``, the residual is the gradient of ``F(w) = ½ wᵀGw − Σ_i h(w_i)`` with
    ``h(w) = log w`` (``α = 1``: Nash-MTL's equation, see :func:`nash_mtl_alpha`) or
    ``h(w) = (w^{1−p} − 1)/(1 − p)``; ``h`` is strictly concave and ``h'(w) = w^{-p} → ∞`` as
    ``w → 0+``, so ``F`` is strictly convex on ``w > 0`` and the solution, when it exists, is
    its unique minimiser, which is interior. It is found by Newton's method. Each step takes
    the full Newton step on ``F`` (Hessian ``G + p diag(w^{-p-1})``, positive definite) if it
    keeps ``w > 0`` and at least halves the backward error
    ``max_i |(Gw)_i − w_i^{-p}| / ((|G| w)_i + w_i^{-p})`` (the residual relative to the
    round-off in computing it), else, where ``Gw > 0``, the Newton step on the same equation
    written ``log (Gw)_i + p log w_i = 0`` in ``log w`` (``(G W + p diag(Gw)) Δlog w = −Gw ⊙
    log(w^p ⊙ Gw)``; a far better model when the weights span many orders of magnitude, as
    they do for large ``α``) on the same condition, else a backtracking line search for
    sufficient decrease of ``F`` (Armijo) along the path that moves the growing weights by
    ``t Δw_i`` and the shrinking ones to ``w_i exp(t Δw_i / w_i)`` (tangent ``Δw``, always
    ``> 0``). Both full steps converge quadratically near the solution; the line search makes
    every step progress. (Where ``G`` is singular and ``p w^{-p-1}`` negligible beside it, e.g.
    duplicated tasks with a small ``α``, the Hessian is singular to working precision and the
    least-norm Newton step is used.) It stops when the backward error is below ``1e-15``, or below
    ``1e-12`` and no longer halving (round-off): 3-8 Newton steps from a cold start and 2-4
    from the last solution, about 40-80 µs a call for ``m <= 12`` and ``α <= 2``, up to
    150 µs cold for ``α = 10``.

    As in :func:`nash_mtl_alpha`, ``G`` is first divided by ``c = ‖G‖_F``: if ``ŵ`` solves the
    equation for ``G/c``, ``w = c^{-1/(1+p)} ŵ`` solves it for ``G``.

    The cold start is ``ŵ_i ∝ (G/c)_ii^{-1/(1+p)}`` (the solution when the gradients are
    orthogonal), scaled to minimise ``F`` along that ray; ``previous`` (the last solution for
    the same tasks) is used instead when it has the right shape and is positive and finite,
    and the solve is retried cold if Newton does not converge from it.

    No solution exists when some ``v ≥ 0, v ≠ 0`` has ``G v = 0`` (a zero gradient, or
    gradients that cancel): ``F`` then has no minimiser and the weights along ``v`` grow
    without bound (as they do in SciPy's solve, until its tolerances stop it). A task whose
    gradient is zero (``G_ii ≤ 1e-14 ‖G‖_F``) does not enter the other tasks' equations and
    does not change ``d = wᵀJ``: the others are solved without it, exactly, and it gets their
    largest weight (a finite stand-in for ``+∞``). Otherwise Newton stops when the backward
    error reaches round-off (which happens as the weights grow), after 50 steps, or once a
    weight exceeds ``1e8`` (in the scaled problem), and returns that iterate, finite and
    positive; such weights can be much larger than SciPy's. An all-zero ``G`` gives ones.

    Args:
        gram: ``G`` ``[m, m]``.
        alpha: ``α > 0``.
        previous: A warm start.

    Returns:
        ``w`` ``[m]``.
    """
    return _fairgrad_solve(gram, alpha, previous)[0]


def _fairgrad_solve(
    gram: np.ndarray, alpha: float, previous: np.ndarray | None = None, max_iters: int = 50
) -> tuple[np.ndarray, bool]:
    """:func:`fairgrad_weights` and whether it converged (backward error below ``1e-10``; never
    with a zero gradient). Where no solution exists the backward error can still get there as
    the weights grow, so this does not tell solvable problems apart."""
    m = gram.shape[0]
    scale = float(np.sqrt(np.vdot(gram, gram)))  # ‖G‖_F
    if not (scale > 0 and scale < np.inf):
        return np.ones(m), False
    p = 1.0 / alpha
    g = gram / scale
    root = scale ** (-1.0 / (1.0 + p))  # w = root * ŵ
    live = g.diagonal() > _ZERO_ROW
    all_live = bool(live.all())
    if not all_live:
        if not live.any():
            return np.ones(m), False
        g = g[np.ix_(live, live)]
    x, converged, diverged = None, False, False
    if previous is not None and previous.shape == (m,) and 0 < float(previous.min()) <= float(previous.max()) < 1e300:
        x, converged, diverged = _fairgrad_newton(g, p, (previous if all_live else previous[live]) / root, max_iters)
    if x is None or not (converged or diverged):
        x, converged, diverged = _fairgrad_newton(g, p, None, max_iters)
    if all_live:
        return x * root, converged
    w = np.full(m, float(x.max()) * root)
    w[live] = x * root
    return w, False


def _fairgrad_newton(g: np.ndarray, p: float, x: np.ndarray | None, max_iters: int) -> tuple[np.ndarray, bool, bool]:
    """Newton's method of :func:`fairgrad_weights` on ``g = G/‖G‖_F`` from ``x`` (``None``:
    the cold start). Returns the iterate with the smallest backward error, whether that is
    below ``1e-10``, and whether it stopped because a weight exceeded ``1e8``."""
    m = g.shape[0]
    q = 1.0 - p
    if x is None:
        x = g.diagonal() ** (-1.0 / (1.0 + p))
        quad = float(x @ g @ x)
        if quad > 0:
            x = x * (float(np.sum(x**q)) / quad) ** (1.0 / (1.0 + p))
    abs_g = np.abs(g)

    def objective(x: np.ndarray, g_x: np.ndarray) -> tuple[float, float]:
        """``F(x)`` and the size of its terms (for the round-off slack)."""
        log_x = np.log(x)
        h = float(log_x.sum()) if q == 0.0 else float(np.expm1(q * log_x).sum()) / q
        quad = 0.5 * float(x @ g_x)
        return quad - h, abs(quad) + abs(h)

    def evaluate(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """``Gx``, ``x^{-p}`` and the backward error
        ``max_i |(Gx)_i − x_i^{-p}| / ((|G| x)_i + x_i^{-p})`` (the residual relative to the
        round-off in computing it: about ``1e-16`` at the solution)."""
        g_x = g @ x
        x_p = 1.0 / x if p == 1.0 else x**-p
        return g_x, x_p, float((np.abs(g_x - x_p) / (abs_g @ x + x_p)).max())

    g_x, x_p, residual = evaluate(x)
    best, best_residual, previous_residual = x, residual, np.inf
    f: float | None = None
    size = 0.0
    for _ in range(max_iters):
        if residual <= 1e-15 or (residual <= 1e-12 and residual > 0.5 * previous_residual) or not residual < np.inf:
            break  # converged to round-off (about 1e-16), or no longer decreasing there
        # Newton on F in x: its full step if that keeps x > 0 and at least halves the backward
        # error (near the solution, where convergence is quadratic).
        grad = g_x - x_p
        hessian = g.copy()
        hessian.flat[:: m + 1] += p * x_p / x
        try:
            step = np.linalg.solve(hessian, -grad)
        except np.linalg.LinAlgError:
            # Singular to working precision (duplicated tasks, with p w^{-p-1} negligible
            # beside G): the least-norm step, which leaves the undetermined directions alone.
            try:
                step = np.linalg.lstsq(hessian, -grad, rcond=None)[0]
            except np.linalg.LinAlgError:
                break
        x_new = x + step
        accepted = False
        if float(x_new.min()) > 0:
            g_x_new, x_p_new, residual_new = evaluate(x_new)
            accepted = residual_new <= 0.5 * residual or residual_new <= 1e-10
        if not accepted and float(g_x.min()) > 0:
            # Newton on log(Gx) + p log x = 0 in y = log x, (G X + p diag(Gx)) Δy = −Gx ⊙ r: a
            # better model far from the solution, where the weights span many orders of
            # magnitude (large α), taken on the same condition.
            jacobian = g * x
            jacobian.flat[:: m + 1] += p * g_x
            try:
                step_y = np.linalg.solve(jacobian, np.log(x_p / g_x) * g_x)
            except np.linalg.LinAlgError:
                step_y = None
            if step_y is not None and float(step_y @ step_y) < np.inf:
                x_log = x * np.exp(np.maximum(np.minimum(step_y, 40.0), -40.0))
                g_x_log, x_p_log, residual_log = evaluate(x_log)
                if residual_log <= 0.5 * residual or residual_log <= 1e-10:
                    accepted = True
                    x_new, g_x_new, x_p_new, residual_new = x_log, g_x_log, x_p_log, residual_log
        if accepted:
            f = None
        else:
            slope = float(grad @ step)
            if not slope < 0:
                break
            if f is None:
                f, size = objective(x, g_x)
            relative = np.minimum(step / x, 0.0)
            growing = step > 0
            t = 1.0
            while True:
                x_new = x * np.exp(np.maximum(t * relative, -40.0))
                x_new[growing] = x[growing] + t * step[growing]
                g_x_new = g @ x_new
                f_new, size_new = objective(x_new, g_x_new)
                if f_new <= f + 1e-4 * t * slope + 1e-13 * max(size, size_new):
                    break
                t *= 0.5
                if t < 1e-10:
                    return best, best_residual <= 1e-10, False
            f, size = f_new, size_new
            g_x_new, x_p_new, residual_new = evaluate(x_new)
        previous_residual = residual
        x, g_x, x_p, residual = x_new, g_x_new, x_p_new, residual_new
        if residual < best_residual:
            best, best_residual = x, residual
        if float(x.max()) > 1e8:
            return x, False, True
    return best, best_residual <= 1e-10, False


#: ConFIG: eigenvalues of the unit-diagonal Gramian ``G_U`` at most this fraction of the largest
#: count as zero. With duplicated tasks the zero eigenvalues come out of ``eigh`` at up to about
#: ``35 ε λ_max`` (measured for ``m <= 11``; ``ε = 2.2e-16``), above NumPy's default ``1e-15``.
_CONFIG_RTOL = 1e-13
#: ConFIG: below this ``‖P 1‖ / √m`` (``P`` the projection onto the range of ``G_U``), ``U⁺ 1`` is
#: zero up to round-off and the paper's direction ``ũ / ‖ũ‖`` is undefined.
_CONFIG_NO_DIRECTION = 1e-12


def config_weights(gram: np.ndarray) -> np.ndarray:
    """ConFIG's direction as row weights: ``d = βᵀ J`` (Liu, Chu and Thuerey, ICLR 2025, eq. 2).

    With unit rows ``U = D⁻¹ J`` (``D = diag ‖g_i‖``, zero rows left at zero),
    ``ũ = U⁺ 1 = Uᵀ (U Uᵀ)⁺ 1 = Jᵀ D⁻¹ v`` with ``v = G_U⁺ 1`` and ``G_U = D⁻¹ G D⁻¹``; then
    ``d = (1ᵀ J ũ / ‖ũ‖²) ũ``, so ``β = D⁻¹ v · (1ᵀ J ũ) / ‖ũ‖²``. From the eigenpairs
    ``(λ_k, e_k)`` of ``G_U`` kept (``λ_k > 1e-13 λ_max``) and ``c_k = e_kᵀ 1``:
    ``v = Σ_k (c_k / λ_k) e_k``, ``‖ũ‖² = 1ᵀ G_U⁺ 1 = Σ_k c_k² / λ_k`` and
    ``1ᵀ J ũ = Σ_i ‖g_i‖ (G_U v)_i = Σ_i ‖g_i‖ (Σ_k c_k e_k)_i``, each a sum of terms of one
    sign or a projection, without the cancellation of ``βᵀ G β``. torchjd computes the
    pseudo-inverse of the ``[m, n]`` matrix ``U`` itself (an SVD of the whole representation);
    this needs only ``G``. ``G`` must be accurate: the relative error of ``v`` is about
    ``κ(G_U) ε_G`` with ``ε_G`` the relative error of ``G``'s entries, so
    :class:`automtl.balance.ConFIG` forms ``G`` in float64 (``ε_G ≈ 1e-16``), which holds the
    update to ``1e-6`` for ``κ(J) = √κ(G_U)`` up to about ``1e4``.

    Args:
        gram: ``G`` ``[m, m]`` (float64).

    Returns:
        ``β`` ``[m]``; zeros if every gradient is zero, or if ``U⁺ 1 = 0`` (e.g. two opposite
        gradients: no direction has equal positive cosines with both, and the paper's
        ``ũ / ‖ũ‖`` is undefined; torchjd's normalisation returns zero there too).
    """
    m = gram.shape[0]
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    lam, vecs = np.linalg.eigh(gram * inv[:, None] * inv[None, :])
    top = float(lam[-1]) if m else 0.0
    if not (top > 0 and np.isfinite(top)):
        return np.zeros(m)
    keep = lam > _CONFIG_RTOL * top
    basis, lam = vecs[:, keep], lam[keep]
    coeff = basis.sum(axis=0)  # c_k = e_kᵀ 1
    if not float(np.linalg.norm(coeff)) > _CONFIG_NO_DIRECTION * np.sqrt(m):
        return np.zeros(m)
    scaled = coeff / lam
    norm_sq = float(coeff @ scaled)  # ‖ũ‖²
    length = float(norms @ (basis @ coeff))  # 1ᵀ J ũ
    return inv * (basis @ scaled) * (length / norm_sq)


def nash_mtl_alpha(
    gram: np.ndarray, previous: np.ndarray | None = None, tol: float = 1e-10, max_iters: int = 60
) -> tuple[np.ndarray, bool]:
    """Nash-MTL's bargaining weights: the ``α > 0`` with ``α ⊙ (G α) = 1``, i.e. ``G α = 1/α``
    element-wise (Navon et al., "Multi-task learning as a bargaining game", ICML 2022, §3: the
    bargaining solution ``d = Σ_j α_j g_j`` has ``g_iᵀ d = 1/α_i`` for every task).

    ``G α − 1/α`` is the gradient of ``f(α) = ½ αᵀ G α − Σ_i log α_i``, which is strictly convex
    and self-concordant on ``α > 0`` (a convex quadratic plus a log barrier), so the solution,
    when it exists, is the unique minimiser of ``f``. It is found by Newton's method on ``f``
    (Hessian ``G + diag(1/α²)``, positive definite), damped by ``1/(1 + λ)`` (``λ`` the
    Newton decrement) while ``λ ≥ 1/4``, which keeps ``α > 0`` and converges from any start
    (Nesterov's damped Newton method; Boyd and Vandenberghe, Convex Optimization, §9.6), then
    quadratically. ``G`` is first divided by ``c = ‖G‖_F`` (as the official code does) and the
    solution rescaled by ``1/√c``: if ``α̂ ⊙ (G/c) α̂ = 1`` then ``α = α̂/√c`` solves the
    original equation.

    The official code and torchjd's ``NashMTL`` reach the same point by up to 20 concave-convex
    steps (Alg. 1), each a cvxpy/ECOS program ``min 1ᵀ(G/c)α + φ̃(α)/c`` s.t.
    ``α_i (Gα)_i ≥ 1``, with ``φ̃`` the linearisation of ``Σ log α_i + Σ log (Gα)_i`` at the
    last iterate; their result satisfies the same equation up to ECOS's tolerance.

    Args:
        gram: ``G`` ``[m, m]``, symmetric positive semi-definite (float64).
        previous: The last ``α`` for the same tasks (original scale), a warm start; ignored if
            its shape differs or it is not positive and finite, and retried without if Newton
            does not converge from it.
        tol: Stop when the relative residual ``max_i |α_i (Gα)_i − 1|`` falls below it (it is
            invariant to the scale of ``G``).
        max_iters: Newton steps at most.

    Returns:
        ``α`` ``[m]`` (original scale) and whether it converged. It does not converge when no
        solution exists: some ``v ≥ 0, v ≠ 0`` has ``G v = 0`` (e.g. a zero gradient, or two
        opposite ones), no direction improves every task, and ``f`` is unbounded below; ``α``
        is then the last (finite, positive) iterate. An all-zero ``G`` gives ones, not
        converged.
    """
    m = gram.shape[0]
    scale = float(np.linalg.norm(gram))
    if not (scale > 0 and np.isfinite(scale)):
        return np.ones(m), False
    g = gram / scale
    root = np.sqrt(scale)
    usable = previous is not None and previous.shape == (m,) and bool(np.all(previous > 0) and np.all(np.isfinite(previous)))
    x = previous * root if usable else np.ones(m)
    for _ in range(max_iters):
        g_x = g @ x
        if float(np.max(np.abs(x * g_x - 1.0))) <= tol:
            return x / root, True
        grad = g_x - 1.0 / x
        try:
            step = np.linalg.solve(g + np.diag(1.0 / (x * x)), -grad)
        except np.linalg.LinAlgError:
            break
        decrement_sq = float(-grad @ step)
        decrement = np.sqrt(max(decrement_sq, 0.0))
        x = x + (step / (1.0 + decrement) if decrement >= 0.25 else step)
        # The Dikin-ellipsoid argument keeps x > 0 exactly; guard against round-off anyway.
        x = np.maximum(x, 1e-300)
    converged = bool(np.max(np.abs(x * (g @ x) - 1.0)) <= tol)
    if not converged and usable:
        # A warm start far from the solution can exhaust max_iters in the damped phase.
        return nash_mtl_alpha(gram, None, tol, max_iters)
    return x / root, converged


def nash_mtl_weights(gram: np.ndarray, alpha: np.ndarray, max_norm: float = 1.0) -> np.ndarray:
    """Nash-MTL's row weights from its bargaining ``α`` ``[m]``: ``α``, scaled down so that
    ``‖αᵀ J‖ = √(αᵀ G α) <= max_norm`` (the official code clips the shared gradient's norm
    to ``max_norm``, default 1; torchjd scales the weights alike). ``max_norm = 0`` disables it.

    At the exact solution ``αᵀ G α = Σ_i α_i (Gα)_i = m``, so with ``m >= 2`` tasks and
    ``max_norm = 1`` the weights are ``α/√m``.

    Args:
        gram: ``G`` ``[m, m]``.
        alpha: From :func:`nash_mtl_alpha`.
        max_norm: ``>= 0``.

    Returns:
        Weights ``[m]``.
    """
    if max_norm > 0:
        norm = float(np.sqrt(max(float(alpha @ gram @ alpha), 0.0)))
        if norm > max_norm:
            return alpha * (max_norm / norm)
    return alpha.copy()
