"""GradVac from the Gramian: the same weights, step after step, as torchjd's GradVac."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchjd.aggregation import GradVac as TorchjdGradVac

from automtl.balance import create_balancer
from automtl.balance._gradvac import gradvac_weights


def _jacobian(m: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(1, n, generator=g, dtype=torch.float64)
    return torch.randn(m, n, generator=g, dtype=torch.float64) + 0.3 * shared


@pytest.mark.parametrize("beta", [0.01, 0.5, 1.0])
@pytest.mark.parametrize("m", [2, 3, 8, 11])
def test_weights_match_torchjd_over_consecutive_steps(m: int, beta: float) -> None:
    reference = TorchjdGradVac(beta=beta)
    targets = np.zeros((m, m))
    for step in range(6):
        jac = _jacobian(m, 50, 100 * m + step)
        torch.manual_seed(step)
        want = reference(jac)
        torch.manual_seed(step)
        weights = gradvac_weights((jac @ jac.T).numpy(), targets, beta)
        torch.testing.assert_close(torch.from_numpy(weights) @ jac, want, rtol=1e-9, atol=1e-9)
    # the targets carried across steps are torchjd's too
    np.testing.assert_allclose(targets, reference.gramian_weighting._phi_t.numpy(), rtol=1e-9, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(2, 9), seed=st.integers(0, 10_000), beta=st.floats(0.01, 1.0))
def test_weights_are_finite_and_targets_stay_cosines(m: int, seed: int, beta: float) -> None:
    targets = np.zeros((m, m))
    for step in range(3):
        jac = _jacobian(m, 7, seed + step)  # n < m for m > 7: a rank-deficient Gramian
        torch.manual_seed(seed)
        weights = gradvac_weights((jac @ jac.T).numpy(), targets, beta)
        assert np.isfinite(weights).all()
        assert np.all(np.abs(targets) <= 1.0 + 1e-9)


def test_a_zero_gradient_row_gives_finite_weights() -> None:
    jac = _jacobian(3, 10, 0)
    jac[1] = 0.0
    targets = np.full((3, 3), 0.5)
    weights = gradvac_weights((jac @ jac.T).numpy(), targets, 0.5)
    assert np.isfinite(weights).all()


def test_balancer_keeps_one_target_matrix_per_segment() -> None:
    bal = create_balancer("gradvac", ["a", "b", "c"], beta=0.5)
    jac = _jacobian(3, 20, 1).float()
    bal.aggregate(("a", "b", "c"), jac)
    bal.aggregate(("a", "b"), jac[:2])
    assert set(bal._targets) == {("a", "b", "c"), ("a", "b")}
    assert bal._targets[("a", "b")].shape == (2, 2)
