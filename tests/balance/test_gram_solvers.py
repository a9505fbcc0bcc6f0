"""The NumPy Gramian solvers solve the same problems as torchjd's aggregators."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchjd.aggregation import MGDAWeighting

from automtl.balance import create_balancer
from automtl.balance._gram_solvers import (
    cagrad_weights,
    config_weights,
    fairgrad_weights,
    mgda_weights,
    nash_mtl_alpha,
    nash_mtl_weights,
)


def _gram(m: int, n: int, seed: int, shared: float = 0.5) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(m, n, generator=g, dtype=torch.float64) + shared * torch.randn(1, n, generator=g, dtype=torch.float64)
    j = j * torch.linspace(0.5, 3.0, m, dtype=torch.float64)[:, None]
    return (j @ j.T).numpy()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("m", [2, 5, 11])
def test_mgda_matches_torchjd(seed: int, m: int) -> None:
    gram = _gram(m, 40, seed)
    want = MGDAWeighting()(torch.from_numpy(gram)).numpy()
    np.testing.assert_allclose(mgda_weights(gram), want, rtol=1e-6, atol=1e-9)


def _cagrad_objective(gram: np.ndarray, w: np.ndarray, c: float) -> float:
    g0 = gram.mean(axis=1)
    return float(w @ g0 + c * np.sqrt(g0.mean()) * np.sqrt(w @ gram @ w))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("c", [0.1, 0.4, 0.9])
def test_cagrad_solves_the_dual_problem_at_least_as_well_as_torchjd(seed: int, c: float) -> None:
    """Same weights as torchjd's cvxpy solve, up to solver tolerance; the inner ``w*`` is
    no worse on the paper's objective (eq. 3)."""
    pytest.importorskip("cvxpy")
    from torchjd.aggregation import CAGradWeighting

    m = 6
    gram = _gram(m, 30, seed)
    ours = cagrad_weights(gram, c)
    want = CAGradWeighting(c=c)(torch.from_numpy(gram)).numpy()
    np.testing.assert_allclose(ours, want, rtol=2e-3, atol=2e-3)
    w = (ours - 1 / m) / (ours - 1 / m).sum()
    w_ref = (want - 1 / m) / (want - 1 / m).sum()
    assert _cagrad_objective(gram, w, c) <= _cagrad_objective(gram, w_ref, c) + 1e-7


def test_cagrad_with_c_zero_is_the_mean() -> None:
    np.testing.assert_allclose(cagrad_weights(_gram(4, 10, 0), 0.0), np.full(4, 0.25))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad_solves_its_fixed_point_and_warm_start_changes_nothing(seed: int, alpha: float) -> None:
    from torchjd.aggregation import FairGradWeighting

    gram = _gram(5, 30, seed)
    gram = gram / np.linalg.norm(gram)
    w = fairgrad_weights(gram, alpha)
    np.testing.assert_allclose(gram @ w, w ** (-1 / alpha), rtol=1e-5)  # eq. 4
    want = FairGradWeighting(alpha=alpha)(torch.from_numpy(gram)).numpy()
    np.testing.assert_allclose(w, want, rtol=1e-4)
    warm = fairgrad_weights(gram, alpha, previous=w * 1.3)
    np.testing.assert_allclose(warm, w, rtol=1e-5)


@pytest.mark.parametrize("name", ["mgda", "cagrad", "fairgrad", "config", "nash_mtl"])
def test_balancers_use_the_gramian_solvers(name: str) -> None:
    """The balancer's aggregate is ``weightsᵀ J`` with the solver's weights."""
    j = torch.randn(4, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bal = create_balancer(name, ["a", "b", "c", "d"])
    vector, weights = bal.aggregate(("a", "b", "c", "d"), j)
    assert weights is not None and weights.shape == (4,)
    torch.testing.assert_close(vector, weights @ j)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("m", [2, 4, 7])
def test_config_matches_torchjd(seed: int, m: int) -> None:
    from torchjd.aggregation import ConFIG

    g = torch.Generator().manual_seed(seed)
    j = torch.randn(m, 30, generator=g, dtype=torch.float64) + 0.5 * torch.randn(1, 30, generator=g, dtype=torch.float64)
    j = j * torch.linspace(0.5, 3.0, m, dtype=torch.float64)[:, None]
    want = ConFIG()(j)
    got = torch.from_numpy(config_weights((j @ j.T).numpy())) @ j
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_config_with_a_zero_gradient_matches_torchjd() -> None:
    from torchjd.aggregation import ConFIG

    j = torch.randn(3, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    j[1] = 0
    torch.testing.assert_close(torch.from_numpy(config_weights((j @ j.T).numpy())) @ j, ConFIG()(j), rtol=1e-6, atol=1e-9)


def _nash_residual(gram: np.ndarray, alpha: np.ndarray) -> float:
    """``max_i |α_i (Gα)_i − 1|``: zero exactly at Nash-MTL's bargaining solution (§3)."""
    return float(np.max(np.abs(alpha * (gram @ alpha) - 1.0)))


def _torchjd_nash_alpha(j: torch.Tensor) -> np.ndarray:
    """torchjd's ``NashMTL`` weights before its norm scaling (``max_norm=0``), from a fresh state."""
    pytest.importorskip("cvxpy")
    import warnings

    from torchjd.aggregation import NashMTL

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cvxpy: "problem is not DPP"
        return NashMTL(n_tasks=j.shape[0], max_norm=0.0).weighting(j).numpy()


def _jacobian(m: int, n: int, seed: int, shared: float, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(m, n, generator=g, dtype=torch.float64) + shared * torch.randn(1, n, generator=g, dtype=torch.float64)
    return scale * j * torch.linspace(0.5, 3.0, m, dtype=torch.float64)[:, None]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("m", [2, 5, 11])
@pytest.mark.parametrize("shared,scale", [(0.0, 1.0), (0.5, 1.0), (2.0, 1e3), (0.5, 1e-3)])
def test_nash_mtl_solves_the_bargaining_equation_at_least_as_well_as_torchjd(
    seed: int, m: int, shared: float, scale: float
) -> None:
    """Both solve ``α ⊙ Gα = 1`` (§3); ours to 1e-10, never worse than torchjd's CCP, and
    the two agree wherever torchjd's CCP converged.

    Tolerance: torchjd stops its concave-convex loop when ``‖G/‖G‖ α − 1/α‖ < 1e-3`` or the
    iterate moves by less than 1e-6, so its ``α`` satisfies the equation only to about
    ``1e-3 .. 1e-2`` (measured: at most 9e-3 on these cases when it converges), and some
    starts leave it far off (residual > 1); where its residual is below 1e-2, ``α`` agrees with
    ours to ``rtol = 5e-3`` (measured at most 4e-3)."""
    j = _jacobian(m, 50, seed, shared, scale)
    gram = (j @ j.T).numpy()
    ours, converged = nash_mtl_alpha(gram)
    assert converged and (ours > 0).all()
    assert _nash_residual(gram, ours) <= 1e-10
    theirs = _torchjd_nash_alpha(j)
    assert _nash_residual(gram, ours) <= _nash_residual(gram, theirs)
    if _nash_residual(gram, theirs) < 1e-2:
        np.testing.assert_allclose(ours, theirs, rtol=5e-3)


def test_nash_mtl_is_exact_on_orthogonal_gradients() -> None:
    """With orthogonal gradients ``G = diag(‖g_t‖²)``, so ``α_t = 1/‖g_t‖`` (by hand): every
    task gets the same unit-norm share, ``d = Σ_t g_t/‖g_t‖``, scaled to ``‖d‖ = 1``."""
    norms = np.array([0.5, 2.0, 10.0])
    gram = np.diag(norms**2)
    alpha, converged = nash_mtl_alpha(gram)
    assert converged
    np.testing.assert_allclose(alpha, 1 / norms, rtol=1e-10)
    np.testing.assert_allclose(nash_mtl_weights(gram, alpha), 1 / (norms * np.sqrt(3)), rtol=1e-10)
    np.testing.assert_allclose(nash_mtl_weights(gram, alpha, max_norm=0.0), alpha)
    np.testing.assert_allclose(nash_mtl_weights(gram, alpha, max_norm=10.0), alpha)  # ‖d‖ = √3 < 10


def test_nash_mtl_warm_start_changes_nothing_and_scale_is_handled() -> None:
    gram = _gram(6, 30, 3)
    alpha, _ = nash_mtl_alpha(gram)
    for start in (alpha * 3.0, alpha * 1e-3, np.ones(6), alpha * np.array([1, 1e9, 1, 1, 1, 1])):
        np.testing.assert_allclose(nash_mtl_alpha(gram, previous=start)[0], alpha, rtol=1e-9)
    # G → s G gives α → α / √s (the equation is homogeneous of degree 2 in α).
    np.testing.assert_allclose(nash_mtl_alpha(gram * 1e6)[0], alpha / 1e3, rtol=1e-9)


def test_nash_mtl_without_a_solution_stays_finite() -> None:
    """No ``α`` exists when a gradient is zero or two gradients are opposite (``G v = 0`` with
    ``v ≥ 0``); the iterate stays finite and the direction bounded."""
    opposite = np.array([[1.0, -1.0], [-1.0, 1.0]])
    alpha, converged = nash_mtl_alpha(opposite)
    assert not converged and np.isfinite(alpha).all() and (alpha > 0).all()
    j = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.5, 1.0, 1.0]], dtype=torch.float64)
    gram = (j @ j.T).numpy()
    alpha, converged = nash_mtl_alpha(gram)
    assert not converged and np.isfinite(alpha).all()
    # The other two tasks still get their own bargaining solution.
    sub = gram[np.ix_([0, 2], [0, 2])]
    np.testing.assert_allclose(alpha[[0, 2]], nash_mtl_alpha(sub)[0], rtol=1e-6)
    np.testing.assert_allclose(nash_mtl_alpha(np.zeros((3, 3)))[0], np.ones(3))


def test_nash_mtl_balancer_matches_torchjd_aggregate_on_real_gradients() -> None:
    """Per-task gradients of a small two-layer network: the balancer's aggregate equals
    torchjd's ``NashMTL`` (max_norm 1) over several steps of the same stateful instance,
    to torchjd's solver tolerance (see above), and ``‖d‖ = 1``."""
    pytest.importorskip("cvxpy")
    import warnings

    from torchjd.aggregation import NashMTL

    torch.manual_seed(0)
    shared = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh())
    heads = torch.nn.ModuleList(torch.nn.Linear(16, 1) for _ in range(4))
    params = list(shared.parameters())
    tasks = ("a", "b", "c", "d")
    bal = create_balancer("nash_mtl", list(tasks))
    ref = NashMTL(n_tasks=4)
    for step_index in range(3):
        x = torch.randn(32, 8)
        z = shared(x)
        losses = [((h(z).squeeze(1) - torch.randn(32) * (i + 1)) ** 2).mean() for i, h in enumerate(heads)]
        rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)]) for loss in losses]
        j = torch.stack(rows).double()
        ours, weights = bal.aggregate(tasks, j)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = ref(j)
        assert weights is not None
        torch.testing.assert_close(torch.linalg.vector_norm(ours), torch.tensor(1.0, dtype=torch.float64), rtol=1e-9, atol=0)
        torch.testing.assert_close(ours, want, rtol=5e-3, atol=5e-3 * float(want.abs().max()), msg=f"step {step_index}")


def test_nash_mtl_update_weights_every_reuses_alpha_but_rescales() -> None:
    """With ``update_weights_every=3``, α is solved at calls 0 and 3 (as torchjd's step counter
    does) and reused at calls 1-2, where only the norm scaling follows the new gradients."""
    bal = create_balancer("nash_mtl", ["a", "b", "c"], update_weights_every=3)
    grams = [_gram(3, 20, s) for s in range(4)]
    tasks = ("a", "b", "c")
    got = [bal.gramian_weights(tasks, g) for g in grams]
    alpha0, _ = nash_mtl_alpha(grams[0])
    for k in (1, 2):
        np.testing.assert_allclose(got[k], nash_mtl_weights(grams[k], alpha0), rtol=1e-12)
    np.testing.assert_allclose(got[3], nash_mtl_weights(grams[3], nash_mtl_alpha(grams[3])[0]), rtol=1e-9)
    assert not np.allclose(got[3] / np.linalg.norm(got[3]), alpha0 / np.linalg.norm(alpha0), rtol=1e-3)


def test_nash_mtl_balancer_does_not_warm_start_from_a_diverged_alpha() -> None:
    """After a step with no solution (a zero gradient: α diverges), the next solve starts cold
    and reaches the exact solution."""
    bal = create_balancer("nash_mtl", ["a", "b", "c"])
    tasks = ("a", "b", "c")
    diverging = _gram(3, 20, 0)
    diverging[1, :] = diverging[:, 1] = 0.0
    bal.gramian_weights(tasks, diverging)
    regular = _gram(3, 20, 1)
    want = nash_mtl_weights(regular, nash_mtl_alpha(regular)[0])
    np.testing.assert_allclose(bal.gramian_weights(tasks, regular), want, rtol=1e-9)
