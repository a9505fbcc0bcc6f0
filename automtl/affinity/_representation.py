"""Representation-based affinity: how alike the features of single-task networks are.

Vandenhende et al. (Branched Multi-Task Networks: Deciding What Layers to Share, BMVC 2020,
§3.2) train one network per task, and at each branching point compare the tasks'
representations of the same ``K`` inputs with representation similarity analysis (RSA;
Kriegeskorte et al., Frontiers in Systems Neuroscience 2008): each task's representational
dissimilarity matrix ``RDM_t[a, b] = 1 − corr(f_t(x_a), f_t(x_b))`` (``[K, K]``), and the
affinity of two tasks is the Spearman rank correlation of their RDMs' upper triangles. Tasks
whose networks represent the inputs alike at a layer can share that layer. Linear centred
kernel alignment (CKA; Kornblith et al., Similarity of Neural Network Representations
Revisited, ICML 2019, eq. 5) is offered as a second similarity of the same features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from automtl.build import BranchedNet
from automtl.tree import Node

__all__ = ["REPRESENTATION_MEASURES", "linear_cka", "representation_affinity", "rsa"]

REPRESENTATION_MEASURES: dict[str, dict[str, str]] = {
    "rsa": {
        "convention": (
            "M[i, j] = Spearman correlation of the representational dissimilarity matrices of single-task networks i "
            "and j on the same inputs, mean over blocks; in [-1, 1], symmetric; higher: more alike representations "
            "(sharing is more likely to help); unitless"
        ),
        "source": (
            "Vandenhende et al., Branched Multi-Task Networks: Deciding What Layers to Share, BMVC 2020 (RSA of "
            "Kriegeskorte et al., 2008)"
        ),
    },
    "cka": {
        "convention": (
            "M[i, j] = linear CKA between the features of single-task networks i and j on the same inputs, mean over "
            "blocks; in [0, 1], symmetric; higher: more alike representations; unitless"
        ),
        "source": "Kornblith et al., Similarity of Neural Network Representations Revisited, ICML 2019 (linear CKA, eq. 5)",
    },
}


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks ``0..n-1`` of a 1-D tensor (ties broken by position; features are continuous)."""
    r = torch.empty_like(v)
    r[torch.argsort(v)] = torch.arange(len(v), dtype=v.dtype, device=v.device)
    return r


def _rdm_upper(features: torch.Tensor) -> torch.Tensor:
    """Upper triangle (``K(K−1)/2`` entries) of ``1 − corr`` between the rows of ``[K, D]`` features."""
    x = features.double()
    x = x - x.mean(dim=1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    rdm = 1.0 - x @ x.T
    i, j = torch.triu_indices(len(x), len(x), offset=1, device=x.device)
    return rdm[i, j]


def rsa(features: Sequence[torch.Tensor]) -> np.ndarray:
    """RSA affinity ``[T, T]`` of per-task features ``[K, D_t]`` of the same ``K`` inputs:
    the Spearman correlation of the tasks' RDMs (Pearson correlation of their ranks)."""
    ranks = []
    for f in features:
        r = _ranks(_rdm_upper(f))
        r = r - r.mean()
        ranks.append(r / r.norm().clamp_min(1e-12))
    stacked = torch.stack(ranks)
    return (stacked @ stacked.T).cpu().numpy()  # type: ignore[no-any-return]


def linear_cka(features: Sequence[torch.Tensor]) -> np.ndarray:
    """Linear CKA ``[T, T]``: ``‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)`` for column-centred ``X, Y``
    (``[K, D]`` each); computed through ``K × K`` Gram matrices."""
    grams = []
    for f in features:
        x = f.double().reshape(len(f), -1)
        x = x - x.mean(dim=0, keepdim=True)
        g = x @ x.T
        grams.append(g / g.norm().clamp_min(1e-12))
    flat = torch.stack([g.reshape(-1) for g in grams])
    return (flat @ flat.T).cpu().numpy()  # type: ignore[no-any-return]


@torch.no_grad()
def representation_affinity(net: BranchedNet, x: torch.Tensor, measure: str = "rsa") -> list[np.ndarray]:
    """Per-block affinity of the tasks' representations of inputs ``x``.

    Args:
        net: A network in which every task has its own copy of every block (single-task networks,
            :meth:`BranchTree.single_task`); evaluated in eval mode.
        x: ``K`` inputs, ``[K, *input_shape]``, on ``net``'s device.
        measure: ``rsa`` or ``cka``.

    Returns:
        One ``[T, T]`` matrix per block (outputs of block ``b`` of each task's network, flattened).

    Raises:
        ValueError: Unknown measure, or some block is shared by several tasks.
    """
    if measure not in REPRESENTATION_MEASURES:
        raise ValueError(f"unknown representation measure '{measure}'; expected one of {sorted(REPRESENTATION_MEASURES)}")
    tree = net.tree
    if any(len(part) > 1 for partition in tree.partitions for part in partition):
        raise ValueError(f"representation affinity needs single-task networks, got tree [{tree.compact()}]")
    was_training = net.training
    net.eval()
    feats = net.features(x)
    net.train(was_training)
    fn = rsa if measure == "rsa" else linear_cka
    out = []
    for b in range(tree.n_blocks):
        out.append(fn([feats[Node(b, (t,))].reshape(len(x), -1) for t in tree.tasks]))
    return out
