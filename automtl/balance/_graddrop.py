"""GradDrop's sign-dropout mask on a shared representation (Chen et al., NeurIPS 2020).

"Just pick a sign: optimizing deep multitask models with gradient sign dropout" (Chen, Ngiam,
Huang, Luong, Kretzschmar, Chai and Anguelov, NeurIPS 2020) acts on the activations ``A``
``[N, ...]`` of a shared layer and the gradients ``∇_A L_i`` that the task losses send into
them. With ``sign(A)`` inspired by their eq. 2, per loss ``i``
``G_i = Σ_batch sign(A) ∘ ∇_A L_i`` (one value per feature, the batch summed out, their Alg. 1
line 5); the positive sign purity is ``P = ½ (1 + Σ_i G_i / Σ_i |G_i|)`` (eq. 1); with ``U``
uniform on ``[0, 1]``, one draw per feature, the mask is
``M_i = I[f(P) > U] ∘ I[G_i > 0] + I[f(P) < U] ∘ I[G_i < 0]`` (eq. 3, ``f`` the identity here,
the paper's default) and the gradient passed on into ``A`` is
``Σ_i (ℓ_i + (1 − ℓ_i) M_i) ∘ ∇_A L_i`` (Alg. 1, line 11), ``M_i`` broadcast over the batch.

Where every ``G_i`` of a feature is zero, ``P`` is ``0/0``; every ``M_i`` is zero there
whatever ``P`` (both indicators of ``G_i`` are), and ``P = ½`` is used.
"""

from __future__ import annotations

import torch

__all__ = ["graddrop_combine", "graddrop_masks"]


def graddrop_masks(rows: torch.Tensor, activations: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """GradDrop's masks ``M_i`` (Chen et al., NeurIPS 2020, eq. 1 and 3, Alg. 1 lines 5-9).

    Args:
        rows: ``∇_A L_i`` for each of ``m`` losses, ``[m, N, *F]`` (``N`` the batch, ``F`` the
            feature shape).
        activations: ``A`` ``[N, *F]``.
        uniform: ``U`` ``[*F]``, uniform draws on ``[0, 1]``, one per feature.

    Returns:
        ``M`` ``[m, *F]``, 0 or 1 in ``rows``' dtype.

    Raises:
        ValueError: The shapes do not agree.
    """
    if rows.shape[1:] != activations.shape or uniform.shape != activations.shape[1:]:
        raise ValueError(
            f"GradDrop: rows {tuple(rows.shape)}, activations {tuple(activations.shape)} and uniform "
            f"{tuple(uniform.shape)} do not agree ([m, N, *F], [N, *F], [*F])"
        )
    signed = (torch.sign(activations).to(rows.dtype) * rows).sum(dim=1)  # G_i, [m, *F]
    total = signed.abs().sum(dim=0)
    purity = 0.5 * (1.0 + torch.where(total > 0, signed.sum(dim=0) / torch.where(total > 0, total, 1.0), 0.0))
    positive = (purity > uniform) & (signed > 0)
    negative = (purity < uniform) & (signed < 0)
    return (positive | negative).to(rows.dtype)


def graddrop_combine(rows: torch.Tensor, activations: torch.Tensor, uniform: torch.Tensor, leak: float = 0.0) -> torch.Tensor:
    """The gradient GradDrop passes into ``A``: ``Σ_i (ℓ + (1 − ℓ) M_i) ∘ ∇_A L_i`` (Chen et al.,
    NeurIPS 2020, Alg. 1 line 11, one leak ``ℓ`` for every loss).

    Args:
        rows: ``∇_A L_i``, ``[m, N, *F]``.
        activations: ``A`` ``[N, *F]``.
        uniform: ``U`` ``[*F]``.
        leak: ``ℓ`` in ``[0, 1]`` (0: pure GradDrop).

    Returns:
        ``[N, *F]``, ``rows``' dtype.
    """
    masks = graddrop_masks(rows, activations, uniform)
    keep = leak + (1.0 - leak) * masks  # [m, *F]
    return (keep.unsqueeze(1) * rows).sum(dim=0)
