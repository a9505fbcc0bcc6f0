"""Small solvers on the task Gramian ``G = J Jᵀ`` ``[m, m]``, in float64 NumPy.

The weights of MGDA, CAGrad, FairGrad, ConFIG and Nash-MTL depend on the gradients only through ``G``. torchjd
computes them with loops of tiny torch operations (MGDA) or by building a new cvxpy problem
at every call (CAGrad, Nash-MTL); for ``m <= 20`` tasks a few NumPy operations on an ``m x m`` matrix
cost microseconds instead. Each function solves the same problem as the paper (and torchjd),
and the tests compare its output with torchjd's on random Gramians. Warm starts
(``previous``) change where an iterative solver starts, never the problem it solves.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cagrad_weights", "config_weights", "fairgrad_weights", "mgda_weights", "nash_mtl_alpha", "nash_mtl_weights"]


def mgda_weights(gram: np.ndarray, epsilon: float = 1e-3, max_iters: int = 100) -> np.ndarray:
    """MGDA's ``α = argmin_{α ∈ Δ_m} αᵀ G α`` by Frank-Wolfe (Sener and Koltun, NeurIPS 2018,
    Alg. 2), with torchjd's stopping rule (step ``γ < epsilon``, at most ``max_iters`` steps).

    Args:
        gram: ``G`` ``[m, m]``, symmetric positive semi-definite.

    Returns:
        ``α`` ``[m]`` on the simplex.
    """
    m = gram.shape[0]
    alpha = np.full(m, 1.0 / m)
    g_alpha = gram @ alpha
    for _ in range(max_iters):
        t = int(np.argmin(g_alpha))
        a = g_alpha[t]  # αᵀ G e_t
        b = float(alpha @ g_alpha)  # αᵀ G α
        c = gram[t, t]  # e_tᵀ G e_t
        if c <= a:
            gamma = 1.0
        elif b <= a:
            gamma = 0.0
        else:
            gamma = (b - a) / (b + c - 2 * a)
        alpha = (1 - gamma) * alpha
        alpha[t] += gamma
        g_alpha = (1 - gamma) * g_alpha + gamma * gram[:, t]
        if gamma < epsilon:
            break
    return alpha


def cagrad_weights(gram: np.ndarray, c: float, previous: np.ndarray | None = None, norm_eps: float = 1e-4) -> np.ndarray:
    """CAGrad's row weights (Liu et al., NeurIPS 2021, Alg. 1 and its dual, eq. 3), from ``G``.

    Solves ``w* = argmin_{w ∈ Δ_m} wᵀ G 1/m + √φ √(wᵀ G w)`` with ``√φ = c ‖g_0‖``,
    ``‖g_0‖² = 1ᵀ G 1 / m²``, by SLSQP with the exact gradient (the official code also uses
    SciPy's SLSQP), then returns ``1/m + (√φ / ‖g_{w*}‖) w*`` so that ``d = weightsᵀ J`` is
    ``g_0 + (√φ / ‖g_w‖) g_w`` (no final ``1/(1+c²)`` rescaling, as in torchjd). ``G`` is first
    scaled to unit trace, which leaves ``w*`` unchanged (both terms scale alike).

    Args:
        gram: ``G`` ``[m, m]``.
        c: Ball radius ``c >= 0``.
        previous: The last solution for the same tasks, a warm start.
        norm_eps: Below this ``‖g_w‖`` (relative to the scaled ``G``), the tasks are treated
            as already Pareto-stationary and the weights are zero, as in torchjd.

    Returns:
        Weights ``[m]``.
    """
    from scipy.optimize import minimize

    m = gram.shape[0]
    trace = float(np.trace(gram))
    if not trace > 0:
        return np.full(m, 1.0 / m)
    g = gram / trace
    mean_row = g.mean(axis=1)  # G 1/m
    sqrt_phi = c * float(np.sqrt(max(mean_row.mean(), 0.0)))

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        gw = g @ w
        norm = float(np.sqrt(max(w @ gw, 1e-16)))
        return float(w @ mean_row + sqrt_phi * norm), mean_row + sqrt_phi * gw / norm

    start = np.full(m, 1.0 / m) if previous is None or previous.shape != (m,) else previous
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
    w = w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)
    gw_norm = float(np.sqrt(max(w @ g @ w, 0.0)))
    if gw_norm < norm_eps:
        return np.zeros(m)
    # √φ and ‖g_w‖ both scale with √trace, so these weights also hold for the unscaled rows.
    return np.full(m, 1.0 / m) + (sqrt_phi / gw_norm) * w


def fairgrad_weights(gram: np.ndarray, alpha: float, previous: np.ndarray | None = None) -> np.ndarray:
    """FairGrad's ``w`` with ``G w = w^{-1/α}`` (Ban and Ji, ICML 2024, eq. 4), ``w > 0``.

    Solved as torchjd and the official code do, by bounded nonlinear least squares on the
    residual ``G w − w^{-1/α}``, but with its exact Jacobian ``G + (1/α) diag(w^{-1/α-1})``
    (instead of finite differences) and started from ``previous`` (the last solution for the
    same tasks) when given, else from ``1/m``.

    Args:
        gram: ``G`` ``[m, m]``.
        alpha: ``α > 0``.
        previous: A warm start.

    Returns:
        ``w`` ``[m]``.
    """
    from scipy.optimize import least_squares

    m = gram.shape[0]
    start = np.full(m, 1.0 / m) if previous is None or previous.shape != (m,) or not (previous > 0).all() else previous
    inv = 1.0 / alpha

    def residual(w: np.ndarray) -> np.ndarray:
        return gram @ w - np.power(w, -inv)

    def jacobian(w: np.ndarray) -> np.ndarray:
        return gram + np.diag(inv * np.power(w, -inv - 1.0))

    result = least_squares(residual, start, jac=jacobian, bounds=(0.0, np.inf))
    return np.asarray(result.x, dtype=np.float64)


def config_weights(gram: np.ndarray) -> np.ndarray:
    """ConFIG's direction as row weights: ``d = βᵀ J`` (Liu, Chu and Thuerey, ICLR 2025, eq. 2).

    With unit rows ``U = D⁻¹ J`` (``D = diag ‖g_i‖``, zero rows left at zero),
    ``ũ = U⁺ 1 = Uᵀ (U Uᵀ)⁺ 1 = Jᵀ D⁻¹ v`` with ``v = G_U⁺ 1`` and ``G_U = D⁻¹ G D⁻¹``; then
    ``d = (1ᵀ J ũ / ‖ũ‖²) ũ``, so ``β = D⁻¹ v · (1ᵀ G D⁻¹ v) / (vᵀ D⁻¹ G D⁻¹ v)``. torchjd
    computes the pseudo-inverse of the ``[m, n]`` matrix ``U`` itself (an SVD of the whole
    representation); this needs only ``G``.

    Args:
        gram: ``G`` ``[m, m]``.

    Returns:
        ``β`` ``[m]`` (zeros if every gradient is zero).
    """
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    gram_u = gram * inv[:, None] * inv[None, :]
    v = np.linalg.pinv(gram_u, hermitian=True) @ np.ones(gram.shape[0])
    beta = inv * v
    norm_sq = float(beta @ gram @ beta)
    if not norm_sq > 0:
        return np.zeros(gram.shape[0])
    return beta * float(np.ones(gram.shape[0]) @ gram @ beta) / norm_sq


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
