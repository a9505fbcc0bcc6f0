"""The NumPy Gramian solvers solve the same problems as torchjd's aggregators, and CAGrad's and
FairGrad's at least as well as their previous SciPy implementations (kept below as references)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchjd.aggregation import MGDAWeighting

from automtl.balance import create_balancer
from automtl.balance._gram_solvers import (
    _cagrad_simplex,
    _fairgrad_solve,
    cagrad_weights,
    config_weights,
    fairgrad_weights,
    mgda_weights,
    nash_mtl_alpha,
    nash_mtl_weights,
)

from .conftest import min_norm_point


def _gram(m: int, n: int, seed: int, shared: float = 0.5) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(m, n, generator=g, dtype=torch.float64) + shared * torch.randn(1, n, generator=g, dtype=torch.float64)
    j = j * torch.linspace(0.5, 3.0, m, dtype=torch.float64)[:, None]
    return (j @ j.T).numpy()


def _mgda_jacobian(kind: str, m: int, rng: np.random.Generator) -> np.ndarray:
    """``well``: 30-dim gradients with a shared part; ``ill``: nearly collinear gradients of
    both signs along one direction (independent parts ``1e-4 .. 1e-2`` of the shared one,
    ``κ(J)`` up to about 1e4), so that the minimum-norm point is small and interior;
    ``rank``: fewer dimensions than tasks (0 is often in the hull); ``duplicate``: two or more
    identical tasks; ``zero``: a zero gradient."""
    n = int(rng.integers(1, m)) if kind == "rank" else 30
    if kind == "ill":
        u = rng.standard_normal((1, n))
        j = rng.uniform(-1.0, 2.0, (m, 1)) * u + 10.0 ** rng.uniform(-4, -2) * rng.standard_normal((m, n))
    else:
        j = rng.standard_normal((m, n)) + rng.uniform(0.0, 2.0) * rng.standard_normal((1, n))
        j *= np.exp(rng.uniform(-1.0, 1.0, (m, 1)))
    if kind == "duplicate":
        copies = int(rng.integers(1, m))
        j[m - copies :] = j[rng.integers(0, m - copies, copies)]
    if kind == "zero":
        j[int(rng.integers(m))] = 0.0
    return j


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", ["well", "ill", "rank", "duplicate", "zero"])
def test_mgda_is_the_exact_min_norm_point(kind: str, dtype: torch.dtype) -> None:
    """MGDA's update (Sener and Koltun, NeurIPS 2018, eq. 3), through the balancer, against the
    exhaustive face enumeration on ``J``: on 12 random Jacobians per kind (60 per dtype), the
    vector and its norm within ``1e-6`` of ``‖d*‖``, plus ``1e-12 max_i ‖g_i‖`` where ``d* = 0``
    (0 in the hull, where a relative error means nothing). The float32 Jacobians are compared
    with the reference on the same values in float64."""
    rng = np.random.default_rng(["well", "ill", "rank", "duplicate", "zero"].index(kind))
    for i in range(12):
        m = 2 + i % 6
        j = torch.tensor(_mgda_jacobian(kind, m, rng), dtype=dtype)
        exact = j.double().numpy()
        want = min_norm_point(exact)[0]
        tasks = tuple(f"t{k}" for k in range(m))
        got, weights = create_balancer("mgda", list(tasks)).aggregate(tasks, j)
        assert got.dtype == dtype and weights is not None
        assert float(weights.min()) >= 0 and abs(float(weights.sum()) - 1) < 1e-12
        got = got.double().numpy()
        slack = 1e-6 * np.linalg.norm(want) + 1e-12 * np.linalg.norm(exact, axis=1).max()
        assert np.linalg.norm(got - want) <= slack, (kind, m, np.linalg.norm(got - want), np.linalg.norm(want))
        assert abs(np.linalg.norm(got) - np.linalg.norm(want)) <= slack


_mgda_entries = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0]), st.floats(-3.0, 3.0, allow_subnormal=False))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6).flatmap(lambda m: st.lists(st.lists(_mgda_entries, min_size=3, max_size=3), min_size=m, max_size=m)))
def test_mgda_property_exact_on_small_jacobians(rows: list[list[float]]) -> None:
    """Random 3-dim gradients with exact zeros, duplicates and opposite rows likely: the
    minimum-norm point from the Gramian equals the enumeration's, to ``1e-9`` of the largest
    gradient (round-off of ``G``; ``‖d − d*‖² ≤ 2 · gap`` bounds it by about ``5e-7``)."""
    j = np.array(rows)
    scale = float(np.linalg.norm(j, axis=1).max())
    alpha = mgda_weights(j @ j.T)
    assert alpha.min() >= 0 and abs(alpha.sum() - 1) < 1e-12
    want = min_norm_point(j)[0]
    assert np.linalg.norm(alpha @ j - want) <= 1e-9 * max(scale, 1e-300)


def test_mgda_is_never_longer_than_torchjd_frank_wolfe() -> None:
    """torchjd's Frank-Wolfe (Sener and Koltun's Alg. 2, step-size stopping rule) stops short of
    the minimum: its ``‖d‖`` is never below ours, and on these Gramians it is measurably above
    (by more than 1e-4 relative on at least one), which our exact solve is not."""
    excess = []
    for seed in range(5):
        for m in (2, 5, 11):
            gram = _gram(m, 40, seed)
            ours = mgda_weights(gram)
            theirs = MGDAWeighting()(torch.from_numpy(gram)).numpy()
            norm_ours, norm_theirs = np.sqrt(ours @ gram @ ours), np.sqrt(theirs @ gram @ theirs)
            assert norm_ours <= norm_theirs * (1 + 1e-12)
            excess.append(norm_theirs / norm_ours - 1)
    assert max(excess) > 1e-4


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


def _config_reference(j: torch.Tensor) -> tuple[torch.Tensor, float]:
    """ConFIG's update as the paper writes it (Liu, Chu and Thuerey, ICLR 2025, eq. 2), in
    float64 on ``J`` itself: the unit gradients ``U`` (a zero row stays zero), ``ũ = U⁺ 1`` with
    the pseudo-inverse of the ``[m, n]`` matrix ``U`` by SVD, ``u = ũ / ‖ũ‖`` and
    ``d = (Σ_i g_iᵀ u) u``. Returns ``d`` and ``‖ũ‖``."""
    j = j.double()
    norms = j.norm(dim=1, keepdim=True)
    units = torch.where(norms > 0, j / torch.where(norms > 0, norms, 1.0), 0.0)
    u_tilde = torch.linalg.pinv(units) @ torch.ones(j.shape[0], dtype=torch.float64)
    u = u_tilde / u_tilde.norm()
    return (j @ u).sum() * u, float(u_tilde.norm())


def _config_jacobian(kind: str, m: int, rng: np.random.Generator) -> np.ndarray:
    """``columns``: fewer columns than tasks (3 tasks in 2 columns among them), exactly rank
    deficient; ``duplicate``: 64 columns, one or more tasks copied; ``combination``: 64 columns,
    each gradient a non-negative integer combination of fewer base rows whose entries are
    multiples of 1/256 (exact in float32, so the rank deficiency survives the cast);
    ``ill``: 64 columns, norms spread over ``e^±2``, the last gradient a combination of the
    others plus an independent part ``1e-4 .. 1e-2`` of its size (``κ(J)`` up to about 1e4)."""
    if kind == "columns":
        n = 2 if m == 3 else int(rng.integers(1, m))
        return rng.standard_normal((m, n)) + rng.uniform(0.0, 2.0) * rng.standard_normal((1, n))
    if kind == "combination":
        base = np.round(rng.standard_normal((int(rng.integers(1, m)), 64)) * 256) / 256
        coeffs = rng.integers(0, 4, (m, base.shape[0]))
        coeffs[coeffs.sum(axis=1) == 0, 0] = 1
        return coeffs @ base
    j = rng.standard_normal((m, 64)) + rng.uniform(0.0, 2.0) * rng.standard_normal((1, 64))
    j *= np.exp(rng.uniform(-2.0, 2.0, (m, 1)))
    if kind == "duplicate":
        copies = int(rng.integers(1, m))
        j[m - copies :] = j[rng.integers(0, m - copies, copies)]
    else:
        tail = rng.uniform(-1.0, 1.0, m - 1) @ j[:-1]
        j[-1] = tail + 10.0 ** rng.uniform(-4, -2) * np.linalg.norm(tail) / 8.0 * rng.standard_normal(64)
    return j


@pytest.mark.parametrize("kind", ["columns", "duplicate", "combination", "ill"])
def test_config_on_float32_rank_deficient_and_ill_conditioned_jacobians(kind: str) -> None:
    """Float32 Jacobians through the balancer (the Gramian formed in float64): the update within
    ``1e-6`` relative of the paper's formula on the same values in float64, on 12 Jacobians per
    kind (``m = 3 .. 8``). Cases where ``U⁺ 1 = 0`` (no direction has equal positive cosines
    with the gradients, ``‖ũ‖ < 1e-6``; the reference is then round-off) are the subject of
    :func:`test_config_without_a_direction_is_zero`; at least 10 of 12 are compared."""
    rng = np.random.default_rng(["columns", "duplicate", "combination", "ill"].index(kind))
    compared = 0
    for i in range(12):
        m = 3 + i % 6
        j = torch.tensor(_config_jacobian(kind, m, rng), dtype=torch.float32)
        want, u_tilde = _config_reference(j)
        if u_tilde < 1e-6:
            continue
        tasks = tuple(f"t{k}" for k in range(m))
        got, _ = create_balancer("config", list(tasks)).aggregate(tasks, j)
        assert got.dtype == torch.float32
        error = float((got.double() - want).norm() / want.norm())
        assert error <= 1e-6, (kind, m, error)
        compared += 1
    assert compared >= 10


def test_config_without_a_direction_is_zero() -> None:
    """Opposite gradients (``[g, −g]``, or ``[g, −g, h, −h]``): ``U⁺ 1 = 0``, so the paper's
    ``ũ / ‖ũ‖`` is undefined and no update has equal positive cosines with all of them; the
    update is zero (torchjd's normalisation also returns zero in exact arithmetic), not
    round-off blown up to the gradients' size."""
    g = torch.randn(2, 40, generator=torch.Generator().manual_seed(0))
    for j in (torch.stack([g[0], -g[0]]), torch.stack([g[0], -g[0], g[1], -g[1]]), torch.stack([2 * g[0], 2 * g[0], -g[0], -g[0]])):
        tasks = tuple(f"t{k}" for k in range(j.shape[0]))
        got, _ = create_balancer("config", list(tasks)).aggregate(tasks, j)
        assert float(got.abs().max()) == 0.0


#: The balancers whose update weights the rows by a function of the Gramian alone.
_FROM_GRAMIAN = ["mgda", "cagrad", "fairgrad", "config", "nash_mtl", "gradvac", "upgrad", "dualproj", "imtl_g", "aligned_mtl", "pcgrad"]


@pytest.mark.parametrize("name", _FROM_GRAMIAN)
def test_float32_rows_get_a_float64_gramian(name: str) -> None:
    """A float32 Jacobian of nearly dependent gradients (an independent part of ``1e-4``, so
    ``κ(G) ≈ 1e8``: a float32 Gramian's relative error of ``1e-7`` would be amplified to order 1
    by the methods that invert ``G``, as ConFIG, IMTL-G, Aligned-MTL and UPGrad's projections
    do) gives the same row weights as the same values in float64, to ``1e-7`` of their size,
    and an update that is the float64 one rounded to float32."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(3, 256, generator=g, dtype=torch.float64)
    j = torch.cat([base, (base[0] - 0.5 * base[1] + 1e-4 * torch.randn(1, 256, generator=g, dtype=torch.float64))])
    j = (j * torch.tensor([[1.0], [3.0], [0.5], [2.0]], dtype=torch.float64)).float()
    tasks = ("a", "b", "c", "d")
    results = []
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)  # PCGrad and GradVac draw their visiting order from torch's generator
        vector, weights = create_balancer(name, list(tasks)).aggregate(tasks, j.to(dtype))
        assert vector.dtype == dtype and weights is not None and weights.dtype == torch.float64
        results.append((vector, weights))
    (v32, w32), (v64, w64) = results
    torch.testing.assert_close(w32, w64, rtol=0, atol=1e-7 * float(w64.abs().max()))
    torch.testing.assert_close(v32.double(), v64, rtol=0, atol=1e-6 * float(v64.abs().max()))


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


# ----------------------------------------------------------------------------- CAGrad and FairGrad
# against the previous SciPy implementations


def _scipy_cagrad_weights(
    gram: np.ndarray,
    c: float,
    previous: np.ndarray | None = None,
    norm_eps: float = 1e-4,
    ftol: float = 1e-10,
    inner: bool = False,
) -> np.ndarray:
    """The previous ``cagrad_weights`` (SciPy SLSQP, as the official code), verbatim but for
    ``ftol`` (1e-10 there) and ``inner`` (return SLSQP's ``w*``)."""
    from scipy.optimize import minimize

    m = gram.shape[0]
    trace = float(np.trace(gram))
    if not trace > 0:
        return np.full(m, 1.0 / m)
    g = gram / trace
    mean_row = g.mean(axis=1)
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
        options={"ftol": ftol, "maxiter": 1000},
    )
    w = np.clip(result.x, 0.0, None)
    w = w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)
    if inner:
        return w
    gw_norm = float(np.sqrt(max(w @ g @ w, 0.0)))
    if gw_norm < norm_eps:
        return np.zeros(m)
    return np.full(m, 1.0 / m) + (sqrt_phi / gw_norm) * w


def _scipy_fairgrad_weights(gram: np.ndarray, alpha: float, tight: bool = False) -> np.ndarray:
    """The previous ``fairgrad_weights`` (SciPy's bounded least squares with the exact Jacobian,
    cold start ``1/m``), verbatim; ``tight``: with ``xtol = ftol = gtol = 1e-15``."""
    from scipy.optimize import least_squares

    m = gram.shape[0]
    inv = 1.0 / alpha

    def residual(w: np.ndarray) -> np.ndarray:
        return gram @ w - np.power(w, -inv)

    def jacobian(w: np.ndarray) -> np.ndarray:
        return gram + np.diag(inv * np.power(w, -inv - 1.0))

    tolerances = {"xtol": 1e-15, "ftol": 1e-15, "gtol": 1e-15, "max_nfev": 300} if tight else {}
    with np.errstate(all="ignore"):
        result = least_squares(residual, np.full(m, 1.0 / m), jac=jacobian, bounds=(0.0, np.inf), **tolerances)
    return np.asarray(result.x, dtype=np.float64)


_KINDS = ("well", "ill", "rank", "duplicate", "zero")


def _random_gramians(kind: str, count: int = 11) -> list[np.ndarray]:
    """``count`` Gramians ``[m, m]`` with ``m = 2..12``, scaled by ``10^U(-3, 3)``: ``well``:
    40-dim gradients, a mild shared part; ``ill``: row norms spread over ``e^±3`` and a strong
    shared part (nearly collinear, condition numbers up to ~1e5); ``rank``: fewer dimensions
    than tasks (singular ``G``); ``duplicate``: two identical tasks; ``zero``: a zero gradient."""
    rng = np.random.default_rng(_KINDS.index(kind))
    out = []
    for i in range(count):
        m = 2 + i % 11
        n = int(rng.integers(1, m)) if kind == "rank" and m > 1 else 40
        shared = 3.0 if kind == "ill" else rng.uniform(0.0, 2.0)
        j = rng.standard_normal((m, n)) + shared * rng.standard_normal((1, n))
        j *= (np.exp(rng.uniform(-3, 3, m)) if kind == "ill" else np.linspace(0.5, 3.0, m))[:, None]
        if kind == "duplicate":
            j[-1] = j[0]
        if kind == "zero":
            j[int(rng.integers(m))] = 0.0
        out.append((j @ j.T) * 10 ** rng.uniform(-3, 3))
    return out


def _cagrad_parts(gram: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Unit-trace ``G``, ``b = G 1/m`` and ``s = c ‖g_0‖``, as in eq. 3."""
    g = gram / np.trace(gram)
    b = g.mean(axis=1)
    return g, b, c * float(np.sqrt(max(float(b.mean()), 0.0)))


def _cagrad_f(gram: np.ndarray, w: np.ndarray, c: float) -> float:
    """CAGrad's dual objective (eq. 3) at ``w`` on the simplex, for the unit-trace ``G``."""
    g, b, s = _cagrad_parts(gram, c)
    return float(b @ w + s * np.sqrt(max(float(w @ g @ w), 0.0)))


def _cagrad_gap(gram: np.ndarray, w: np.ndarray, c: float) -> float:
    """The Frank-Wolfe gap ``wᵀ∇f − min_j ∂f/∂w_j >= f(w) − min f``, relative to the
    problem's scale ``max |b| + s max ‖g_j‖``."""
    g, b, s = _cagrad_parts(gram, c)
    grad = b + s * (g @ w) / np.sqrt(float(w @ g @ w))
    return float(grad @ w - grad.min()) / (float(np.abs(b).max()) + s * float(np.sqrt(np.diag(g).max())))


def _simplex_part(weights: np.ndarray) -> np.ndarray:
    """``w*`` back from CAGrad's weights ``1/m + (√φ/‖g_w‖) w*`` (``c > 0``)."""
    w = weights - 1.0 / weights.shape[0]
    return w / w.sum()


@pytest.mark.parametrize("kind", _KINDS)
@pytest.mark.parametrize("c", [0.1, 0.4, 0.9, 1.5])
def test_cagrad_is_certified_optimal_and_never_worse_than_scipy(kind: str, c: float) -> None:
    """On every Gramian: the same zero/non-zero decision as SLSQP (the ``norm_eps`` rule), an
    objective (eq. 3) never above SLSQP's by more than 1e-9 relative, and a Frank-Wolfe gap
    (an upper bound on the distance to the optimum) below 1e-9 of the problem's scale."""
    for gram in _random_gramians(kind):
        ours, theirs = cagrad_weights(gram, c), _scipy_cagrad_weights(gram, c)
        assert np.isfinite(ours).all()
        assert (not ours.any()) == (not theirs.any())
        if not ours.any():
            continue
        w = _simplex_part(ours)
        assert w.min() >= 0 and abs(w.sum() - 1) < 1e-12
        f_ours, f_theirs = _cagrad_f(gram, w, c), _cagrad_f(gram, _simplex_part(theirs), c)
        assert f_ours <= f_theirs + 1e-9 * abs(f_theirs)
        assert _cagrad_gap(gram, w, c) <= 1e-9


@pytest.mark.parametrize("kind", _KINDS)
@pytest.mark.parametrize("c", [0.1, 0.4, 0.9])
def test_cagrad_matches_a_tight_scipy_solve(kind: str, c: float) -> None:
    """Against SLSQP run to ``ftol = 1e-16`` (measured: agrees to ~1e-7). ``w*`` is unique where
    ``G`` is non-singular (``well``, ``ill``): the weights agree; otherwise (a singular ``G``)
    ``g_{w*}`` still is, and so is the direction ``d = weightsᵀ J``, compared through ``G``
    (``‖d − d'‖² = Δᵀ G Δ``)."""
    for gram in _random_gramians(kind, count=6):
        ours, ref = cagrad_weights(gram, c), _scipy_cagrad_weights(gram, c, ftol=1e-16)
        if kind in ("well", "ill"):
            np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6 * np.abs(ref).max())
        else:
            delta = ours - ref
            assert np.sqrt(max(delta @ gram @ delta, 0.0)) <= 2e-6 * np.sqrt(max(ref @ gram @ ref, 1e-300))


@pytest.mark.parametrize("kind", _KINDS)
def test_cagrad_warm_start_changes_nothing(kind: str) -> None:
    """From its own solution, from the centre and from a random point of the simplex (which, with
    duplicated tasks, splits the weight between them: a singular active set, solved again
    cold): the same direction, and the same weights where ``w*`` is unique."""
    rng = np.random.default_rng(0)
    for gram in _random_gramians(kind, count=6):
        m = gram.shape[0]
        cold = cagrad_weights(gram, 0.4)
        starts = [rng.dirichlet(np.ones(m)), np.full(m, 1.0 / m)]
        if cold.any():
            starts.append(_simplex_part(cold))
        for start in starts:
            warm = cagrad_weights(gram, 0.4, previous=start)
            if kind in ("well", "ill"):
                np.testing.assert_allclose(warm, cold, rtol=1e-9, atol=1e-12)
            delta = warm - cold
            assert np.sqrt(max(delta @ gram @ delta, 0.0)) <= 1e-9 * np.sqrt(max(cold @ gram @ cold, 1e-300))


def test_cagrad_with_a_zero_gradient() -> None:
    """With a zero gradient, ``w = e_i`` reaches ``f = 0`` with ``g_w = 0``: the weights are zero
    (Pareto-stationary, as SLSQP finds) unless the other tasks reach ``f < 0``, in which case
    the zero task gets no weight in ``w*``."""
    agreeing = np.array([[1.0, 0.2, 0.0], [0.0, 0.0, 0.0], [0.8, 0.1, 0.3]])
    gram = agreeing @ agreeing.T
    np.testing.assert_array_equal(cagrad_weights(gram, 0.4), np.zeros(3))
    np.testing.assert_array_equal(_scipy_cagrad_weights(gram, 0.4), np.zeros(3))
    conflicting = np.array([[1.0, 0.0], [0.0, 0.0], [-2.0, 0.1]])  # g_0ᵀg_1 < 0
    gram = conflicting @ conflicting.T
    ours = cagrad_weights(gram, 0.1)
    assert ours.any() and _simplex_part(ours)[1] == 0.0
    np.testing.assert_allclose(ours, _scipy_cagrad_weights(gram, 0.1, ftol=1e-16), atol=1e-6)


def test_cagrad_at_a_pareto_stationary_point_with_c_at_least_one_gives_zeros() -> None:
    """Opposite gradients plus a third: ``0`` is in their convex hull and, for ``c >= 1``,
    ``f >= 0`` everywhere, so ``g_{w*} = 0``; with ``c < 1`` the SLSQP fallback decides (no
    worse than SLSQP)."""
    j = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.3, 1.0, 0.0]])
    gram = j @ j.T
    for c in (1.0, 1.5):
        np.testing.assert_array_equal(cagrad_weights(gram, c), np.zeros(3))
    for c in (0.2, 0.6):
        ours, theirs = cagrad_weights(gram, c), _scipy_cagrad_weights(gram, c)
        f_ours = _cagrad_f(gram, _simplex_part(ours), c) if ours.any() else 0.0  # zeros: g_w = 0, f = 0
        f_theirs = _cagrad_f(gram, _simplex_part(theirs), c) if theirs.any() else 0.0
        assert f_ours <= f_theirs + 1e-9


def test_cagrad_degenerate_inputs() -> None:
    """m = 2, a zero Gramian, a zero mean gradient, ``c = 0``."""
    gram = np.array([[4.0, 1.0], [1.0, 1.0]])
    for c in (0.1, 0.5, 2.0):
        np.testing.assert_allclose(cagrad_weights(gram, c), _scipy_cagrad_weights(gram, c, ftol=1e-16), atol=1e-6)
    np.testing.assert_array_equal(cagrad_weights(np.zeros((3, 3)), 0.4), np.full(3, 1 / 3))
    np.testing.assert_array_equal(cagrad_weights(np.array([[1.0, -1.0], [-1.0, 1.0]]), 0.4), np.zeros(2))
    np.testing.assert_array_equal(cagrad_weights(_gram(5, 10, 1), 0.0), np.full(5, 0.2))


_entries = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0]), st.floats(-3.0, 3.0, allow_subnormal=False))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 7).flatmap(lambda m: st.lists(st.lists(_entries, min_size=3, max_size=3), min_size=m, max_size=m)),
    st.floats(0.05, 1.5),
)
def test_cagrad_inner_problem_is_never_worse_than_scipy(rows: list[list[float]], c: float) -> None:
    """Random small Jacobians, with exact zeros, duplicates and opposite rows likely: ``w*``
    (before the ``norm_eps`` rule) is on the simplex and no worse than SLSQP's on eq. 3, by
    1e-9 of the problem's scale. Where ``‖g_{w*}‖ < norm_eps`` (the weights are zero either
    way) only to 1e-6: ``‖g_w‖`` below 1e-7 counts as ``g_w = 0`` there, and so does a
    gradient with ``‖g_i‖² <= 1e-14`` of the trace."""
    j = np.array(rows)
    gram = j @ j.T
    if not np.trace(gram) > 1e-6:
        return
    g, b, s = _cagrad_parts(gram, c)
    if not b.mean() > 1e-12:
        return  # g_0 = 0: d = 0 whatever w (the weights are zero)
    w = _cagrad_simplex(g, b, s, None, c < 1)
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-12
    w_theirs = _scipy_cagrad_weights(gram, c, inner=True)
    scale = float(np.abs(b).max()) + s * float(np.sqrt(np.diag(g).max()))
    stationary = np.sqrt(max(float(w @ g @ w), 0.0)) < 1e-4
    assert _cagrad_f(gram, w, c) <= _cagrad_f(gram, w_theirs, c) + (1e-6 if stationary else 1e-9) * scale


def _has_fairgrad_solution(gram: np.ndarray) -> bool:
    """A solution exists iff no ``v >= 0, v != 0`` has ``G v = 0``, i.e. ``0`` is not in the convex
    hull of the gradients: the min-norm point of the hull (by NNLS on a factor of ``G``) is
    clearly away from 0."""
    from scipy.optimize import nnls

    lam, u = np.linalg.eigh(gram)
    factor = (u * np.sqrt(np.clip(lam, 0.0, None))).T  # factorᵀ factor = G: one column per task
    m = gram.shape[0]
    big = 1e3 * np.sqrt(np.trace(gram))
    _, residual = nnls(np.vstack([factor, np.full((1, m), big)]), np.append(np.zeros(m), big))
    return residual > 1e-4 * np.sqrt(np.trace(gram))


def _fairgrad_floor(gram: np.ndarray, w: np.ndarray, alpha: float) -> float:
    """The round-off in computing ``G w − w^{-1/α}``: 16 ulps of the largest term."""
    return 16 * np.finfo(float).eps * float((np.abs(gram) @ w + w ** (-1 / alpha)).max())


def _fairgrad_backward_error(gram: np.ndarray, w: np.ndarray, alpha: float) -> float:
    """``max_i |(Gw)_i − w_i^{-1/α}| / ((|G| w)_i + w_i^{-1/α})``."""
    w_p = w ** (-1 / alpha)
    return float((np.abs(gram @ w - w_p) / (np.abs(gram) @ w + w_p)).max())


@pytest.mark.parametrize("kind", ["well", "ill", "rank", "duplicate"])
@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0, 2.0, 10.0])
def test_fairgrad_matches_scipy_and_its_residual_is_no_larger(kind: str, alpha: float) -> None:
    """Where a solution exists (it is then unique): convergence, a residual
    ``max |Gw − w^{-1/α}|`` no larger than the previous solver's (up to the round-off in
    computing it), and the same ``w`` as SciPy's least squares run to ``1e-15`` tolerances
    wherever that reaches a backward error below 1e-12 (measured: agreement to 1e-14; with
    ``α = 10`` on ``ill``, whose weights span 20 orders of magnitude, SciPy stops at backward
    errors of 1e-7 to 1e-1 while ours is 4e-16 and moves by 1e-14 under 1e-15 perturbations
    of ``G``)."""
    compared = 0
    for gram in _random_gramians(kind, count=7):
        if not _has_fairgrad_solution(gram):
            continue
        ours, converged = _fairgrad_solve(gram, alpha)
        assert converged
        assert _fairgrad_backward_error(gram, ours, alpha) <= 1e-14
        ref = _scipy_fairgrad_weights(gram, alpha, tight=True)
        if _fairgrad_backward_error(gram, ref, alpha) <= 1e-12:
            np.testing.assert_allclose(ours, ref, rtol=1e-9)
            compared += 1
        theirs = _scipy_fairgrad_weights(gram, alpha)
        ours_res = np.abs(gram @ ours - ours ** (-1 / alpha)).max()
        theirs_res = np.abs(gram @ theirs - theirs ** (-1 / alpha)).max()
        assert ours_res <= theirs_res + _fairgrad_floor(gram, ours, alpha)
    assert compared >= (1 if kind == "ill" and alpha == 10.0 else 3)


@pytest.mark.parametrize("alpha", [0.1, 1.0, 10.0])
def test_fairgrad_warm_start_changes_nothing(alpha: float) -> None:
    rng = np.random.default_rng(1)
    for kind in ("well", "ill", "rank", "duplicate"):
        for gram in _random_gramians(kind, count=6):
            if not _has_fairgrad_solution(gram):
                continue
            cold = fairgrad_weights(gram, alpha)
            m = gram.shape[0]
            for start in (cold, cold * rng.uniform(0.3, 3.0, m), cold * 1e3, np.ones(m), np.full(m, 1e-9)):
                np.testing.assert_allclose(fairgrad_weights(gram, alpha, previous=start), cold, rtol=1e-9)


def test_fairgrad_with_alpha_one_is_nash_mtl_and_scale_is_handled() -> None:
    """``α = 1`` is Nash-MTL's equation ``Gα = 1/α``; ``G → sG`` gives ``w → s^{-α/(1+α)} w``."""
    for m in (2, 5, 11):
        gram = _gram(m, 30, m)
        np.testing.assert_allclose(fairgrad_weights(gram, 1.0), nash_mtl_alpha(gram)[0], rtol=1e-10)
        for alpha in (0.2, 3.0):
            scaled = fairgrad_weights(gram * 1e4, alpha)
            want = fairgrad_weights(gram, alpha) * 1e4 ** (-alpha / (1 + alpha))
            np.testing.assert_allclose(scaled, want, rtol=1e-10)


@pytest.mark.parametrize("alpha", [0.1, 1.0, 10.0])
def test_fairgrad_with_a_zero_gradient_solves_the_other_tasks(alpha: float) -> None:
    """A zero gradient leaves no solution (its equation reads ``0 = w^{-1/α}``) but does not enter
    the others' equations nor ``d``: they get the solution without it, exactly, and it gets
    their largest weight (finite)."""
    for gram in _random_gramians("zero", count=6):
        live = np.diag(gram) > 0
        w, converged = _fairgrad_solve(gram, alpha)
        sub = fairgrad_weights(gram[np.ix_(live, live)], alpha)
        assert not converged and np.isfinite(w).all()
        np.testing.assert_allclose(w[live], sub, rtol=1e-12)
        np.testing.assert_allclose(w[~live], sub.max())


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0, 2.0, 10.0])
def test_fairgrad_without_a_solution_stays_finite_and_positive(alpha: float) -> None:
    """Opposite gradients, or rank-deficient ones with ``0`` in their convex hull: the weights
    along ``v >= 0, Gv = 0`` would grow without bound; the result is finite and positive."""
    opposite = np.array([[1.0, -1.0], [-1.0, 1.0]])
    j = np.array([[1.0, 2.0, 0.0], [-1.0, -2.0, 0.0], [0.5, 1.0, 1.0]])
    cancelling = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [0.3, 0.2]])
    for gram in (opposite, j @ j.T, cancelling @ cancelling.T):
        assert not _has_fairgrad_solution(gram)
        w = fairgrad_weights(gram, alpha)
        assert np.isfinite(w).all() and (w > 0).all()
        assert np.isfinite(fairgrad_weights(gram, alpha, previous=w)).all()
    np.testing.assert_array_equal(fairgrad_weights(np.zeros((3, 3)), alpha), np.ones(3))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 6).flatmap(lambda m: st.lists(st.lists(_entries, min_size=3, max_size=3), min_size=m, max_size=m)),
    st.sampled_from([0.1, 0.5, 1.0, 2.0, 10.0]),
)
def test_fairgrad_property(rows: list[list[float]], alpha: float) -> None:
    """Random small Jacobians (zeros, duplicates and opposite rows likely): always finite and
    positive; where a solution exists, solved to round-off, no worse than the previous solver,
    and the same from a warm start."""
    j = np.array(rows)
    gram = j @ j.T
    w, converged = _fairgrad_solve(gram, alpha)
    assert np.isfinite(w).all() and (w > 0).all()
    if not (np.trace(gram) > 1e-6 and np.diag(gram).min() > 1e-6 * np.trace(gram) and _has_fairgrad_solution(gram)):
        return
    assert converged and _fairgrad_backward_error(gram, w, alpha) <= 1e-14
    residual = np.abs(gram @ w - w ** (-1 / alpha)).max()
    theirs = _scipy_fairgrad_weights(gram, alpha)
    assert residual <= np.abs(gram @ theirs - theirs ** (-1 / alpha)).max() + _fairgrad_floor(gram, w, alpha)
    warm = fairgrad_weights(gram, alpha, previous=w * 2.0)
    assert _fairgrad_backward_error(gram, warm, alpha) <= 1e-14
    # G may be singular here (fewer dimensions than tasks, duplicated rows), and with α = 0.1
    # the w^{-10} terms can be far below the round-off of Gw: then the weights along G's null
    # space are not determined to working precision (e.g. how two duplicated tasks split
    # their weight), but the direction d = wᵀJ is; compare it, through G.
    delta = warm - w
    assert np.sqrt(max(delta @ gram @ delta, 0.0)) <= 1e-6 * np.sqrt(w @ gram @ w)
