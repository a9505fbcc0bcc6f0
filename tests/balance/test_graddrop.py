"""GradDrop against an independent, loop-by-loop reading of the paper (Chen et al., NeurIPS 2020)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from automtl.balance import GradDrop, StepContext, create_balancer
from automtl.balance._graddrop import graddrop_combine, graddrop_masks
from automtl.balance._tree import features_by_key, segments
from automtl.train import task_losses

from .conftest import HPS, TASKS, make_batch, make_net


def _paper_graddrop(rows: np.ndarray, activations: np.ndarray, uniform: np.ndarray, leak: float) -> np.ndarray:
    """Alg. 1 of "Just pick a sign" written out feature by feature, in float64: per feature ``f``,
    ``G_i = Σ_n sign(A[n, f]) ∇_i[n, f]`` (the batch summed out), ``P = ½ (1 + Σ_i G_i / Σ_i |G_i|)``
    (eq. 1), ``M_i = [P > U_f][G_i > 0] + [P < U_f][G_i < 0]`` (eq. 3, ``f`` the identity), and
    the output ``Σ_i (ℓ + (1 − ℓ) M_i) ∇_i[:, f]``. ``rows`` ``[m, N, F]``, ``activations``
    ``[N, F]``, ``uniform`` ``[F]``."""
    m, n, features = rows.shape
    out = np.zeros((n, features))
    for f in range(features):
        signed = [sum(np.sign(activations[k, f]) * rows[i, k, f] for k in range(n)) for i in range(m)]
        total = sum(abs(g) for g in signed)
        purity = 0.5 * (1.0 + sum(signed) / total) if total > 0 else 0.5
        for i in range(m):
            keep = (purity > uniform[f] and signed[i] > 0) or (purity < uniform[f] and signed[i] < 0)
            out[:, f] += (leak + (1.0 - leak) * float(keep)) * rows[i, :, f]
    return out


def test_graddrop_hand_checked_sign_of_the_activations() -> None:
    """Two tasks, two examples, one feature. Task 0's gradient is ``[1, 1]`` but the second
    example's activation is negative, so ``G_0 = 1 − 1 = 0``; task 1 has ``[−3, 0.5]``, so
    ``G_1 = −3 − 0.5 = −3.5``; ``P = ½ (1 − 3.5/3.5) = 0 < U = 0.5``: only negative ``G`` pass,
    which keeps task 1 alone. Without ``sign(A)`` task 0's ``G`` would be ``+2``."""
    rows = torch.tensor([[[1.0], [1.0]], [[-3.0], [0.5]]], dtype=torch.float64)
    activations = torch.tensor([[2.0], [-1.0]], dtype=torch.float64)
    uniform = torch.tensor([0.5], dtype=torch.float64)
    torch.testing.assert_close(graddrop_masks(rows, activations, uniform), torch.tensor([[0.0], [1.0]], dtype=torch.float64))
    torch.testing.assert_close(graddrop_combine(rows, activations, uniform), torch.tensor([[-3.0], [0.5]], dtype=torch.float64))
    # with the leak, a quarter of task 0's gradient always passes
    torch.testing.assert_close(
        graddrop_combine(rows, activations, uniform, leak=0.25), torch.tensor([[-2.75], [0.75]], dtype=torch.float64)
    )


@pytest.mark.parametrize("leak", [0.0, 0.3])
def test_graddrop_matches_the_paper_on_a_small_example(leak: float) -> None:
    """3 losses, a batch of 4, a ``[2, 3]`` feature map, fixed uniform draws; some activations
    exactly zero (``sign = 0``) and one feature where every gradient is zero."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((3, 4, 2, 3))
    activations = rng.standard_normal((4, 2, 3))
    activations[0, 0, 0] = activations[2, 1, 1] = 0.0
    rows[:, :, 1, 2] = 0.0
    uniform = np.array([[0.05, 0.5, 0.95], [0.3, 0.7, 0.5]])
    want = _paper_graddrop(rows.reshape(3, 4, 6), activations.reshape(4, 6), uniform.reshape(6), leak).reshape(4, 2, 3)
    got = graddrop_combine(torch.from_numpy(rows), torch.from_numpy(activations), torch.from_numpy(uniform), leak)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    masks = graddrop_masks(torch.from_numpy(rows), torch.from_numpy(activations), torch.from_numpy(uniform))
    assert 0 < float(masks.mean()) < 1  # the example does drop some gradients and keep others


def test_graddrop_balancer_writes_the_papers_gradient_into_the_trunk() -> None:
    """On a hard-parameter-sharing network in ``representation`` mode: the trunk receives
    ``(∂z/∂θ)ᵀ`` of the paper's GradDrop output at its last block ``z``, computed by the
    loop reference from the per-task gradients of ``z`` and the same uniform draws (torch's
    generator, seeded)."""
    net = make_net(HPS)
    batch = make_batch()
    features = net.features(batch.x)
    losses = task_losses(net, batch, net.heads_forward(features))
    (trunk,) = [s for s in segments(net.param_groups(), list(losses)) if len(s.tasks) == 3]
    z = features_by_key(features)[trunk.out_key]
    rows = torch.stack([torch.autograd.grad(losses[t], z, retain_graph=True)[0] for t in TASKS])
    torch.manual_seed(7)
    uniform = torch.rand(z.shape[1:], dtype=z.dtype)
    want = _paper_graddrop(rows.double().numpy(), z.detach().double().numpy(), uniform.double().numpy(), 0.0)
    want_grads = torch.autograd.grad(z, trunk.params, torch.from_numpy(want).to(z.dtype), retain_graph=True)
    net.zero_grad(set_to_none=True)
    bal = create_balancer("graddrop", TASKS, mode="representation")
    torch.manual_seed(7)
    bal.backward(losses, StepContext(net.param_groups(), extra={"features": features}))
    for p, g in zip(trunk.params, want_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


def test_graddrop_is_offered_only_where_activations_exist() -> None:
    """The paper's mask needs the activations: no ``full`` mode, and a direct call without them fails."""
    assert GradDrop.hyperparameters["mode"].choices == ("representation", "grouped")
    with pytest.raises(ValueError, match="mode"):
        create_balancer("graddrop", TASKS, mode="full")
    with pytest.raises(ValueError, match="activations"):
        GradDrop(list(TASKS)).aggregate(("a", "b"), torch.ones(2, 6))
