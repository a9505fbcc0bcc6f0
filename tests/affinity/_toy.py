"""Tiny synthetic multi-task problems for the affinity tests (seconds on a CPU)."""

from __future__ import annotations

import torch

from automtl.backbones import create_backbone
from automtl.build import BranchedNet, build_model
from automtl.data import MultiTaskData, Split
from automtl.tasks import TaskSpec
from automtl.tree import BranchTree


def _split(x: torch.Tensor, y: dict[str, torch.Tensor]) -> Split:
    return Split(x, y, {t: torch.ones(len(x), dtype=torch.bool) for t in y})


def opposing_data(n: int = 256, features: int = 8, seed: int = 0) -> MultiTaskData:
    """Tasks ``a`` and ``b`` share one target ``s = w·x``; task ``c`` has the opposing one, ``-s``.

    Also registered as a data set factory for config-level tests (``tests.affinity._toy:opposing_data``).
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(features, generator=g)

    def make(m: int) -> Split:
        x = torch.randn(m, features, generator=g)
        s = x @ w / w.norm()
        return _split(x, {"a": s.clone(), "b": s.clone(), "c": -s})

    tasks = [TaskSpec(t, "regression") for t in ("a", "b", "c")]
    return MultiTaskData("opposing", tasks, make(n), make(64), make(64), (features,), {})


def mirror_heads(net: BranchedNet) -> None:
    """Give every head the same initial weights as the first one, so that a task's transfer to
    another is decided by their targets alone (not by two random heads)."""
    first = net.heads[net.tasks[0].name]
    with torch.no_grad():
        for t in net.tasks[1:]:
            net.heads[t.name].weight.copy_(first.weight)
            net.heads[t.name].bias.copy_(first.bias)


def opposing_net(data: MultiTaskData, seed: int = 0) -> BranchedNet:
    torch.manual_seed(seed)
    backbone = create_backbone("mlp", data.input_shape, hidden=[16, 16])
    net = build_model(BranchTree.hard_sharing(data.task_names, backbone.n_blocks), backbone, data.tasks, "cpu")
    mirror_heads(net)
    return net


def image_data(n: int = 64, seed: int = 0, missing: float = 0.0) -> MultiTaskData:
    """8×8 one-channel images with three tasks (binary, multiclass, regression), for a CNN with BatchNorm."""
    g = torch.Generator().manual_seed(seed)

    def make(m: int) -> Split:
        x = torch.rand(m, 1, 8, 8, generator=g)
        mean = x.mean(dim=(1, 2, 3))
        y = {
            "bright": (mean > 0.5).float(),
            "quadrant": x[:, 0, :4, :4].mean(dim=(1, 2)).mul(3.999).long().clamp(0, 2),
            "left": x[:, 0, :, :4].mean(dim=(1, 2)) - 0.5,
        }
        split = _split(x, y)
        if missing:
            for t in y:
                split.mask[t] = torch.rand(m, generator=g) >= missing
        return split

    tasks = [TaskSpec("bright", "binary"), TaskSpec("quadrant", "multiclass", num_classes=3), TaskSpec("left", "regression")]
    return MultiTaskData("images", tasks, make(n), make(32), make(32), (1, 8, 8), {})


def image_net(data: MultiTaskData, tree: BranchTree | None = None, seed: int = 0, dropout: bool = False) -> BranchedNet:
    torch.manual_seed(seed)
    backbone = create_backbone("small_cnn", data.input_shape, channels=[4, 8], hidden=16)
    tree = tree or BranchTree.hard_sharing(data.task_names, backbone.n_blocks)
    net = build_model(tree, backbone, data.tasks, "cpu")
    if dropout:
        for name, module in list(net.blocks.items()):
            net.blocks[name] = torch.nn.Sequential(module, torch.nn.Dropout(0.3))
    return net
