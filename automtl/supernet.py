"""One-shot screening: a weight-sharing supernet that every tree of the space is part of.

**Weight sharing (task-anchored copies).** The supernet holds, for every block ``b``, one copy of
the block per task, ``copy[b][t]``, and one head per task. A tree's node "block ``b`` shared by
the task set ``S``" uses the copy of ``S``'s first task (in task order), its *anchor*. Two parts
of one block never share a first task, so every tree of the space is a sub-network of the
supernet, with its own copy for each of its nodes: hard parameter sharing runs ``copy[b][0]`` at
every block, single-task networks run ``copy[b][t]`` for task ``t``. The supernet has exactly the
parameters of the single-task networks, the largest tree. (A copy per task set would need
``2^T - 1`` copies per block; a fixed number of branches per block, as in Learning to Branch,
cannot hold every tree of the space.)

**Training (single path, uniform sampling).** As in single-path one-shot NAS (SPOS: Guo et al.,
"Single Path One-Shot Neural Architecture Search with Uniform Sampling", ECCV 2020), each step
samples one tree, here from the search space's own encoding with every parameter uniform (the
distribution of random search), and trains that sub-network on the batch with masked task
losses and equal weighting; the other copies are left alone (their gradients are ``None``, so
AdamW neither moves nor decays them). Step ``k`` draws its tree and seeds torch from the supernet
seed and ``k`` alone, so a run stopped and resumed from its last checkpoint reaches the same
weights as a run in one go. The budget is in training-run equivalents (:mod:`automtl.accounting`):
each step counts its batch's share of an epoch, over the config's epochs, times its tree's FLOPs
over hard sharing's.

**Proxy.** With inherited weights, task ``t``'s output depends only on its *path*, the anchors of
the parts that hold ``t`` at each block (a non-decreasing sequence, as parts only split). The
proxy of a tree is its search objective computed from each task's validation metric on its path;
paths are evaluated once and shared by every tree that uses them (prefixes too). Before a copy
is evaluated on a path, its BatchNorm statistics are recalibrated on a fixed subset of training
inputs run through that same path (SPOS's recalibration; statistics of training inputs only, no
validation input and no label), so that every path is judged with statistics of its own.

This module knows nothing of optuna.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from automtl.backbones import Backbone
from automtl.build import BranchedNet
from automtl.data import MultiTaskData
from automtl.errors import NonFiniteLossError
from automtl.losses import masked_loss
from automtl.metrics import compute_metric
from automtl.seeds import derive_seed
from automtl.tasks import TaskSpec
from automtl.train import OPTIMIZERS, TrainConfig
from automtl.tree import BranchTree, Node

__all__ = [
    "ProxyEvaluator",
    "Supernet",
    "SupernetProgress",
    "anchor",
    "path_sampler",
    "paths_flops",
    "realizable_paths",
    "task_path",
    "train_supernet",
    "tree_sampler",
]

Path = tuple[int, ...]


def anchor(tree: BranchTree, node: Node) -> int:
    """The copy a node runs: the position of its first task among the tree's tasks."""
    return tree.tasks.index(node.tasks[0])


def task_path(tree: BranchTree, task: str) -> Path:
    """The anchors of the parts that hold ``task`` at each block (non-decreasing)."""
    return tuple(tree.tasks.index(tree.part_of(task, b)[0]) for b in range(tree.n_blocks))


class Supernet(nn.Module):
    """Every tree of the space in one network: a copy of each block per task, a head per task.

    Args:
        backbone: Supplies the blocks (:meth:`Backbone.make_block`, once per copy).
        tasks: The tasks; copy ``t`` of each block is anchored at task ``t``.
    """

    def __init__(self, backbone: Backbone, tasks: Sequence[TaskSpec]) -> None:
        super().__init__()
        self.backbone = backbone
        self.tasks = list(tasks)
        self.names = [t.name for t in tasks]
        self.copies = nn.ModuleList(
            [nn.ModuleList([backbone.make_block(b) for _ in self.tasks]) for b in range(backbone.n_blocks)]
        )
        # one head per task and per copy of the last block it may read (copies 0..t for task t)
        self.heads = nn.ModuleDict(
            {t.name: nn.ModuleList([nn.Linear(backbone.out_features, t.output_dim) for _ in range(i + 1)])
             for i, t in enumerate(self.tasks)}
        )  # fmt: skip

    def block(self, b: int, copy: int) -> nn.Module:
        """Copy ``copy`` of block ``b``."""
        return self.copies[b][copy]  # type: ignore[index,no-any-return]

    def head_module(self, task: str, copy: int) -> nn.Module:
        """The head of ``task`` that reads copy ``copy`` of the last block."""
        return self.heads[task][copy]  # type: ignore[index,no-any-return]

    def head(self, task: TaskSpec, z: torch.Tensor, copy: int) -> torch.Tensor:
        y = self.head_module(task.name, copy)(z)
        return y.squeeze(-1) if task.output_dim == 1 else y

    def forward_paths(self, x: torch.Tensor, paths: Mapping[str, Path]) -> dict[str, torch.Tensor]:
        """Each task's output along its path, ``{task: [N] or [N, C]}``; a prefix shared by several
        tasks is computed once (the paths form a prefix tree, itself a branched network).

        Args:
            x: A batch ``[N, *input_shape]``.
            paths: Per task (all of them), the copy it runs at each block.
        """
        out: dict[Path, torch.Tensor] = {(): x}

        def along(path: Path) -> torch.Tensor:
            if path not in out:
                out[path] = self.block(len(path) - 1, path[-1])(along(path[:-1]))
            return out[path]

        return {t.name: self.head(t, along(tuple(paths[t.name])), paths[t.name][-1]) for t in self.tasks}

    def forward_tree(self, x: torch.Tensor, tree: BranchTree) -> dict[str, torch.Tensor]:
        """The outputs of ``tree`` with the supernet's weights, ``{task: [N] or [N, C]}``; each node once.

        Args:
            x: A batch ``[N, *input_shape]``.
            tree: A tree over the supernet's tasks and blocks.
        """
        out: dict[Node, torch.Tensor] = {}
        for node in tree.nodes():
            parent = tree.parent(node)
            out[node] = self.block(node.block, anchor(tree, node))(x if parent is None else out[parent])
        return {t.name: self.head(t, out[tree.leaf(t.name)], anchor(tree, tree.leaf(t.name))) for t in self.tasks}

    def extract(self, tree: BranchTree) -> BranchedNet:
        """The stand-alone network of ``tree`` with the supernet's weights copied in (on the CPU)."""
        net = BranchedNet(tree, self.backbone, self.tasks)
        for node in tree.nodes():
            net.node_module(node).load_state_dict(self.block(node.block, anchor(tree, node)).state_dict())
        for t in self.tasks:
            net.heads[t.name].load_state_dict(self.head_module(t.name, anchor(tree, tree.leaf(t.name))).state_dict())
        return net


def block_flops(backbone: Backbone, input_shape: Sequence[int]) -> list[int]:
    """Forward FLOPs of one sample through each block (torch's FLOP counter, as :mod:`automtl.cost`)."""
    x = torch.zeros(1, *input_shape)
    out = []
    for b in range(backbone.n_blocks):
        block = backbone.make_block(b).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            y = block(x)
        out.append(int(counter.get_total_flops()))
        x = y
    return out


def tree_flops(tree: BranchTree, per_block: Sequence[int], head_flops: int) -> int:
    """FLOPs of one sample through ``tree``: each node's block once, and every head."""
    return sum(per_block[b] * len(parts) for b, parts in enumerate(tree.partitions)) + head_flops * len(tree.tasks)


def paths_flops(paths: Mapping[str, Path], per_block: Sequence[int], head_flops: int) -> int:
    """FLOPs of one sample through the prefix tree of ``paths``: each distinct prefix once, and every head."""
    prefixes = {tuple(p[: b + 1]) for p in paths.values() for b in range(len(p))}
    return sum(per_block[len(q) - 1] for q in prefixes) + head_flops * len(paths)


def realizable_paths(sample_tree: Callable[[random.Random], BranchTree], draws: int = 4000, seed: int = 0) -> dict[str, list[Path]]:
    """Per task, the paths that trees of the space give it, found by drawing ``draws`` trees
    (sorted; a path the space can give but no draw gave is left out, which only rare paths are)."""
    found: dict[str, set[Path]] = {}
    rng = random.Random(seed)
    for _ in range(draws):
        tree = sample_tree(rng)
        for task in tree.tasks:
            found.setdefault(task, set()).add(task_path(tree, task))
    return {task: sorted(paths) for task, paths in found.items()}


def path_sampler(sample_tree: Callable[[random.Random], BranchTree], draws: int = 4000) -> Callable[[random.Random], dict[str, Path]]:
    """Each task's path drawn uniformly among its realizable paths (:func:`realizable_paths`),
    independently of the other tasks': every (task, path) gets the same expected training."""
    options = realizable_paths(sample_tree, draws)

    def sample(rng: random.Random) -> dict[str, Path]:
        return {task: rng.choice(paths) for task, paths in options.items()}

    return sample


def sandwich_sampler(sample_tree: Callable[[random.Random], BranchTree], tasks: Sequence[str], n_blocks: int) -> Callable[[random.Random], list[dict[str, Path]]]:
    """The sandwich rule (Yu et al., BigNAS, ECCV 2020): each step trains the smallest tree (hard
    sharing), the largest (single-task networks) and one drawn by ``sample_tree``."""
    smallest = {t: (0,) * n_blocks for t in tasks}
    largest = {t: (i,) * n_blocks for i, t in enumerate(tasks)}

    def sample(rng: random.Random) -> list[dict[str, Path]]:
        tree = sample_tree(rng)
        return [smallest, largest, {task: task_path(tree, task) for task in tree.tasks}]

    return sample


def tree_sampler(sample_tree: Callable[[random.Random], BranchTree]) -> Callable[[random.Random], dict[str, Path]]:
    """The paths of one tree drawn by ``sample_tree`` (single-path training of whole trees, SPOS)."""

    def sample(rng: random.Random) -> dict[str, Path]:
        tree = sample_tree(rng)
        return {task: task_path(tree, task) for task in tree.tasks}

    return sample


@dataclass
class SupernetProgress:
    """How far a supernet's training went (recorded with its checkpoints).

    Attributes:
        steps: Optimizer steps taken.
        tre: Training-run equivalents spent.
        seconds: Training wall time (s).
    """

    steps: int = 0
    tre: float = 0.0
    seconds: float = 0.0


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "order", epoch)))
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def train_supernet(
    supernet: Supernet,
    data: MultiTaskData,
    sample: Callable[[random.Random], Mapping[str, Path] | list[dict[str, Path]]],
    train: TrainConfig,
    *,
    budget_tre: float,
    hps_flops: float,
    seed: int,
    progress: SupernetProgress | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    checkpoint: Callable[[SupernetProgress, torch.optim.Optimizer], None] | None = None,
    checkpoint_every: int = 200,
) -> tuple[SupernetProgress, torch.optim.Optimizer]:
    """Train the supernet one sampled tree per step until ``budget_tre`` is spent (module docstring).

    Args:
        supernet: Trained in place (on its device).
        data: Only the training split is read.
        sample: Draws each task's path from a ``random.Random`` (:func:`path_sampler`, or
            :func:`tree_sampler` for whole trees).
        train: Batch size, learning rate, weight decay and optimizer (its epochs set the TRE scale).
        budget_tre: Training-run equivalents to spend.
        hps_flops: Forward FLOPs of one sample through hard sharing (the TRE unit).
        seed: The supernet's seed (tree draws, batch order, initial weights are the caller's).
        progress: Where a resumed run stopped (default: a fresh start).
        optimizer_state: The optimizer's state at that point.
        checkpoint: Called every ``checkpoint_every`` steps and at the end.

    Returns:
        The progress and the optimizer.

    Raises:
        NonFiniteLossError: A task loss became NaN or infinite.
    """
    device = next(supernet.parameters()).device
    split = data.train.to(device)
    n = len(split)
    per_block = block_flops(supernet.backbone, data.input_shape)
    head = max(1, supernet.backbone.out_features * max(t.output_dim for t in supernet.tasks) * 2)
    optimizer = OPTIMIZERS[train.optimizer](list(supernet.parameters()), lr=train.lr, weight_decay=train.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(dict(optimizer_state))
    done = progress or SupernetProgress()
    steps_per_epoch = math.ceil(n / train.batch_size)
    supernet.train()
    start = time.perf_counter() - done.seconds
    while done.tre < budget_tre:
        epoch, index = divmod(done.steps, steps_per_epoch)
        rows = _batches(n, train.batch_size, seed, epoch)[index].to(device)
        drawn = sample(random.Random(derive_seed(seed, "tree", done.steps)))
        path_sets = drawn if isinstance(drawn, list) else [drawn]
        torch.manual_seed(derive_seed(seed, "step", done.steps))
        batch = split.subset(rows)
        optimizer.zero_grad(set_to_none=True)
        stepped = False
        for paths in path_sets:  # several sub-networks in one step: their gradients add up
            outputs = supernet.forward_paths(batch.x, paths)
            losses = {}
            for task in supernet.tasks:
                loss = masked_loss(task, outputs[task.name], batch.y[task.name], batch.mask[task.name])
                if loss is not None:
                    losses[task.name] = loss
            if losses:
                total = torch.stack(list(losses.values())).sum()
                if not math.isfinite(float(total.detach())):
                    bad = next(t for t, v in losses.items() if not math.isfinite(float(v.detach())))
                    raise NonFiniteLossError(bad, epoch, done.steps, float(losses[bad].detach()))
                total.backward()
                stepped = True
            done.tre += (len(rows) / n) / train.epochs * paths_flops(paths, per_block, head) / hps_flops
        if stepped:
            optimizer.step()
        done.steps += 1
        done.seconds = time.perf_counter() - start
        if checkpoint is not None and done.steps % checkpoint_every == 0:
            checkpoint(done, optimizer)
    if checkpoint is not None:
        checkpoint(done, optimizer)
    return done, optimizer


def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``module`` that keep running statistics."""
    return [
        m for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None and m.running_var is not None
    ]  # fmt: skip


def _buffer(value: torch.Tensor | None) -> torch.Tensor:
    assert value is not None  # _batchnorms keeps the layers with running statistics only
    return value.clone()


@contextmanager
def _recalibrated(module: nn.Module, calibration: torch.Tensor) -> Iterator[None]:
    """``module`` in eval mode with each BatchNorm's statistics those of ``calibration`` (exact
    averages over it); its own statistics are restored afterwards."""
    norms = _batchnorms(module)
    saved = [(_buffer(bn.running_mean), _buffer(bn.running_var), _buffer(bn.num_batches_tracked), bn.momentum) for bn in norms]
    was_training = module.training
    try:
        if norms:
            for bn in norms:
                bn.reset_running_stats()
                bn.momentum = None  # a cumulative average: one pass gives the exact statistics
            module.train()
            with torch.no_grad():
                module(calibration)
        module.eval()
        yield
    finally:
        for bn, (mean, var, count, momentum) in zip(norms, saved):
            bn.running_mean.copy_(mean)  # type: ignore[union-attr]
            bn.running_var.copy_(var)  # type: ignore[union-attr]
            bn.num_batches_tracked.copy_(count)  # type: ignore[union-attr]
            bn.momentum = momentum
        module.train(was_training)


@dataclass
class ProxyEvaluator:
    """Trees' validation metrics with the supernet's weights, each path evaluated once (module docstring).

    Args:
        supernet: The trained supernet.
        data: Its data: the first ``calibration`` training inputs recalibrate BatchNorm; the
            validation split is scored.
        calibration: How many training inputs recalibrate each path's BatchNorm statistics.
        hps_flops: Forward FLOPs of one sample through hard sharing (for :attr:`tre`).
        epochs: The config's epochs (for :attr:`tre`).

    Attributes:
        tre: Training-run equivalents spent so far (forward passes: each path node runs the
            calibration inputs twice and the validation inputs once; 1 TRE is ``3 × epochs``
            forward passes of hard sharing over the training split, a backward pass counting
            twice a forward one).
    """

    supernet: Supernet
    data: MultiTaskData
    calibration: int = 512
    hps_flops: float = 1.0
    epochs: int = 1
    tre: float = 0.0
    _prefix: dict[Path, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _metric: dict[tuple[str, Path], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        device = next(self.supernet.parameters()).device
        self._calib_x = self.data.train.x[: self.calibration].to(device)
        self._val = self.data.val.to(device)
        self._per_block = block_flops(self.supernet.backbone, self.data.input_shape)
        self._n_train = len(self.data.train)

    def _activations(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibration and validation activations after the blocks of ``path`` (a prefix)."""
        if not path:
            return self._calib_x, self._val.x
        cached = self._prefix.get(path)
        if cached is not None:
            return cached
        calib_in, val_in = self._activations(path[:-1])
        module = self.supernet.block(len(path) - 1, path[-1])
        with _recalibrated(module, calib_in), torch.no_grad():
            out = (module(calib_in), module(val_in))
        self._prefix[path] = out
        samples = 2 * len(calib_in) + len(val_in)
        self.tre += samples * self._per_block[len(path) - 1] / (3 * self.epochs * self._n_train * self.hps_flops)
        return out

    def task_metric(self, task: TaskSpec, path: Path) -> float:
        """``task``'s validation metric on ``path``."""
        key = (task.name, path)
        if key not in self._metric:
            _, z = self._activations(path)
            with torch.no_grad():
                output = self.supernet.head(task, z, path[-1])
            self._metric[key] = compute_metric(task, output, self._val.y[task.name], self._val.mask[task.name])
        return self._metric[key]

    def metrics(self, tree: BranchTree) -> dict[str, float]:
        """Every task's validation metric for ``tree`` with inherited weights."""
        return {t.name: self.task_metric(t, task_path(tree, t.name)) for t in self.supernet.tasks}
