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


@pytest.mark.parametrize("name", ["mgda", "cagrad", "fairgrad", "config"])
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
