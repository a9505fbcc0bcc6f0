"""Tiny branched networks and batches for the balancer tests.

Set ``AUTOMTL_TEST_DEVICE=cuda`` to run the device-parametrized tests on CUDA only; by
default they run on the CPU, and on CUDA too where it is available.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pytest
import torch

from automtl.backbones import MLPBackbone
from automtl.balance import BALANCERS, Balancer, StepContext
from automtl.build import BranchedNet
from automtl.data import Split
from automtl.tasks import TaskSpec
from automtl.train import task_losses
from automtl.tree import BranchTree

TASKS = ("a", "b", "c")
N_FEATURES = 5


def devices() -> list[str]:
    forced = os.environ.get("AUTOMTL_TEST_DEVICE")
    if forced:
        return [forced]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def variants(names: Iterable[str] | None = None) -> list[tuple[str, dict[str, object]]]:
    """Every registered balancer, once per mode for those that have one."""
    out = []
    for name in BALANCERS.list() if names is None else names:
        hp = BALANCERS.get(name).hyperparameters.get("mode")
        modes = list(hp.choices) if hp is not None and hp.choices else [None]
        out += [(name, {} if m is None else {"mode": m}) for m in modes]
    return out


def variant_id(v: tuple[str, dict[str, object]]) -> str:
    return v[0] + (f"-{v[1]['mode']}" if "mode" in v[1] else "")


def make_specs(tasks: Sequence[str] = TASKS) -> list[TaskSpec]:
    return [TaskSpec(t, "regression") for t in tasks]


def make_net(partitions: Sequence[Sequence[Sequence[str]]], tasks: Sequence[str] = TASKS, seed: int = 0, device: str = "cpu") -> BranchedNet:
    """An MLP tree with ``len(partitions)`` blocks of width 6."""
    torch.manual_seed(seed)
    backbone = MLPBackbone((N_FEATURES,), hidden=[6] * len(partitions))
    return BranchedNet(BranchTree(tasks, partitions), backbone, make_specs(tasks)).to(device)


HPS = [[TASKS]] * 3
# block 0 shared by all; blocks 1-2 shared by {a, b}; c alone from block 1.
BRANCHED = [[TASKS], [("a", "b"), ("c",)], [("a", "b"), ("c",)]]


def make_batch(tasks: Sequence[str] = TASKS, n: int = 12, seed: int = 1, hidden: Iterable[str] = (), device: str = "cpu") -> Split:
    """Random regression data; every label of the tasks in ``hidden`` is masked out."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g)
    y = {t: torch.randn(n, generator=g) * (i + 1) for i, t in enumerate(tasks)}
    hidden = set(hidden)
    mask = {t: torch.full((n,), t not in hidden, dtype=torch.bool) for t in tasks}
    return Split(x, y, mask).to(device)


def step(net: BranchedNet, balancer: Balancer, batch: Split, step_index: int = 0) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """What :func:`automtl.train.fit` does in one step, up to (not including) the optimizer."""
    features = net.features(batch.x)
    outputs = net.heads_forward(features)
    losses = task_losses(net, batch, outputs)
    net.zero_grad(set_to_none=True)
    balancer.zero_grad(set_to_none=True)
    extra = {"features": features, "outputs": outputs}
    weights = balancer.backward(losses, StepContext(net.param_groups(), 0, step_index, extra))
    return weights, losses


def grads(net: BranchedNet) -> dict[str, torch.Tensor | None]:
    return {name: (None if p.grad is None else p.grad.detach().clone()) for name, p in net.named_parameters()}


def group_of(net: BranchedNet) -> Mapping[str, str]:
    """Parameter name -> the key of its group (``"b1:a+b"``, ``"head:c"``)."""
    by_id = {id(p): g.key for g in net.param_groups() for p in g.params}
    return {name: by_id[id(p)] for name, p in net.named_parameters()}


def min_norm_point(j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact minimum-norm point ``d*`` of the convex hull of the rows of ``j`` ``[m, n]``
    (float64), and barycentric weights that give it, independently of any solver under test.

    ``d*`` lies in the relative interior of some face, where it is the point of that face's
    affine hull closest to 0. So, for every support ``S`` (``2^m − 1`` of them) whose rows are
    affinely independent, the affine minimiser ``g_0 + D y`` (``D = [g_i − g_0]_{i ∈ S}``, ``y``
    by least squares on ``J`` itself, by SVD, never through the Gramian) is a candidate when its
    weights ``(1 − Σy, y)`` are non-negative. Of the candidates, the one that best satisfies
    the optimality condition ``g_iᵀd ≥ ‖d‖²`` for every ``i`` is kept (smallest
    ``‖d‖² − min_i g_iᵀd``, which bounds ``‖d − d*‖²``): comparing the norms instead cannot
    tell apart points whose squared norms differ by less than round-off."""
    m = j.shape[0]
    candidates: list[tuple[np.ndarray, np.ndarray]] = [(j[i], np.eye(m)[i]) for i in range(m)]
    for k in range(2, m + 1):
        for support in itertools.combinations(range(m), k):
            g0 = j[support[0]]
            diffs = (j[list(support[1:])] - g0).T
            if np.linalg.matrix_rank(diffs) < k - 1:
                continue  # affinely dependent: a smaller support reaches the same points
            y = np.linalg.lstsq(diffs, -g0, rcond=None)[0]
            if min(1.0 - y.sum(), y.min()) < -1e-12:
                continue
            weights = np.zeros(m)
            weights[list(support)] = np.concatenate([[1.0 - y.sum()], y])
            candidates.append((g0 + diffs @ y, weights))

    def violation(point: np.ndarray) -> tuple[float, float]:
        return max(float(point @ point - (j @ point).min()), 0.0), float(point @ point)

    return min(candidates, key=lambda c: violation(c[0]))


@pytest.fixture(params=devices())
def device(request: pytest.FixtureRequest) -> str:
    return str(request.param)
