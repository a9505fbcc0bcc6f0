"""GradVac's row weights from the task Gramian, in plain Python floats.

GradVac (Wang, Tsvetkov, Firat, Cao, "Gradient vaccine", ICLR 2021, Alg. 1 and eq. 4) changes
each task gradient ``g_i`` by adding multiples of the other tasks' gradients, so every modified
gradient stays a combination ``g_i' = Σ_k C_ik g_k`` of the rows of ``J`` ``[m, n]``. Its norms
and dot products are then ``‖g_i'‖² = C_i G C_iᵀ`` and ``g_i'·g_j = (C_i G)_j`` with
``G = J Jᵀ`` ``[m, m]``, and the aggregate ``Σ_i g_i'`` is ``(1ᵀ C) J``: the method needs only
``G``. torchjd's ``GradVacWeighting`` (0.18) computes exactly this with one small torch
operation per scalar (a few hundred per call); here the same loop runs on Python floats.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["gradvac_weights"]


def gradvac_weights(gram: np.ndarray, phi_hat: np.ndarray, beta: float, eps: float = 1e-8) -> np.ndarray:
    """GradVac's row weights ``1ᵀ C`` ``[m]``; updates the target similarities in place.

    For each task ``i`` and each other task ``j`` (in an order drawn with ``torch.randperm``
    from torch's global generator, one permutation per ``i``, as torchjd draws it):
    ``φ_ij = g_i'·g_j / (‖g_i'‖ ‖g_j‖ + eps)``; if ``φ_ij < φ̂_ij``, then
    ``g_i' ← g_i' + w g_j`` with
    ``w = ‖g_i'‖ (φ̂_ij √(1 − φ_ij²) − φ_ij √(1 − φ̂_ij²)) / (‖g_j‖ √(1 − φ̂_ij²) + eps)``
    (eq. 4, which makes the new cosine ``φ̂_ij``); then ``φ̂_ij ← (1 − β) φ̂_ij + β φ_ij``.

    Args:
        gram: ``G`` ``[m, m]``, float64.
        phi_hat: The targets ``φ̂`` ``[m, m]`` (float64; zeros at the start), updated in place.
        beta: EMA rate ``β`` in ``[0, 1]``.
        eps: Added to the denominators, as in torchjd.

    Returns:
        Weights ``[m]`` (float64) with ``d = weightsᵀ J``.
    """
    m = gram.shape[0]
    g = gram.tolist()
    phi = phi_hat.tolist()
    coeffs = [[1.0 if k == i else 0.0 for k in range(m)] for i in range(m)]
    for i in range(m):
        c_i = coeffs[i]
        c_g = list(g[i])  # (C_i G)_k = g_i'·g_k, with C_i = e_i at the start
        others = [j for j in range(m) if j != i]
        for idx in torch.randperm(m - 1).tolist():
            j = others[idx]
            norm_i = math.sqrt(max(sum(a * b for a, b in zip(c_g, c_i)), 0.0))
            norm_j = math.sqrt(max(g[j][j], 0.0))
            cos = c_g[j] / (norm_i * norm_j + eps)
            target = phi[i][j]
            if cos < target:
                root_cos = math.sqrt(max(1.0 - cos * cos, 0.0))
                root_target = math.sqrt(max(1.0 - target * target, 0.0))
                w = norm_i * (target * root_cos - cos * root_target) / (norm_j * root_target + eps)
                c_i[j] += w
                row_j = g[j]
                c_g = [a + w * b for a, b in zip(c_g, row_j)]
            phi[i][j] = (1.0 - beta) * target + beta * cos
    phi_hat[...] = np.asarray(phi, dtype=np.float64)
    return np.asarray(coeffs, dtype=np.float64).sum(axis=0)
