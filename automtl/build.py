"""From a BranchTree and a backbone to a branched network (hard parameter sharing per part)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from automtl.backbones import Backbone
from automtl.tasks import TaskSpec
from automtl.tree import BranchTree, Node

__all__ = ["BranchedNet", "ParamGroup", "build_model", "resolve_device", "restrict_network"]


@dataclass(frozen=True)
class ParamGroup:
    """Parameters used by exactly the tasks ``tasks`` (one tree node, or one head)."""

    key: str
    tasks: tuple[str, ...]
    params: tuple[nn.Parameter, ...]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; any other value as given.

    Raises:
        ValueError: If the name is not a device (``gpu``), or CUDA is asked for but not available.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:  # torch's message for a bad device string
        raise ValueError(f"device '{device}' is not a device name such as auto, cpu, cuda or cuda:1 ({exc})") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' asked for, but CUDA is not available here")
    return dev


class BranchedNet(nn.Module):
    """A branched multi-task network: one module per tree node, one head per task.

    Each node's block runs once per forward pass and its output feeds every child, so a
    prefix shared by several tasks is computed once per batch.

    Args:
        tree: The architecture.
        backbone: Supplies each block (:meth:`Backbone.make_block` is called once per node).
        tasks: Task descriptions, one head each (``nn.Linear(out_features, output_dim)``).

    Raises:
        ValueError: If the tree's block count or task names differ from the backbone's / tasks'.
    """

    def __init__(self, tree: BranchTree, backbone: Backbone, tasks: Sequence[TaskSpec]) -> None:
        super().__init__()
        if tree.n_blocks != backbone.n_blocks:
            raise ValueError(f"tree has {tree.n_blocks} blocks, backbone has {backbone.n_blocks}")
        if list(tree.tasks) != [t.name for t in tasks]:
            raise ValueError(f"tree tasks {list(tree.tasks)} differ from data tasks {[t.name for t in tasks]}")
        self.tree = tree
        self.tasks = list(tasks)
        self._nodes: list[Node] = tree.nodes()
        self._module_name = {node: f"b{node.block}_{i}" for i, node in enumerate(self._nodes)}
        self.blocks = nn.ModuleDict({self._module_name[n]: backbone.make_block(n.block) for n in self._nodes})
        self.heads = nn.ModuleDict({t.name: nn.Linear(backbone.out_features, t.output_dim) for t in tasks})
        self._parent = {n: tree.parent(n) for n in self._nodes}
        self._leaf = {t.name: tree.leaf(t.name) for t in tasks}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-task outputs.

        Args:
            x: A batch ``[N, *backbone.input_shape]``.

        Returns:
            ``{task: output}``: logits ``[N]`` (binary), ``[N, C]`` (multiclass, multilabel),
            standardized values ``[N]`` (regression).
        """
        return self.heads_forward(self.features(x))

    def features(self, x: torch.Tensor) -> dict[Node, torch.Tensor]:
        """The output of every node, each computed once."""
        out: dict[Node, torch.Tensor] = {}
        for node in self._nodes:
            parent = self._parent[node]
            out[node] = self.blocks[self._module_name[node]](x if parent is None else out[parent])
        return out

    def heads_forward(self, features: dict[Node, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Apply each task's head to its leaf node's output."""
        result = {}
        for task in self.tasks:
            y = self.heads[task.name](features[self._leaf[task.name]])
            result[task.name] = y.squeeze(-1) if task.output_dim == 1 else y
        return result

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Outputs in natural units: probabilities for binary ``[N]``, multiclass ``[N, C]``
        (softmax) and multilabel ``[N, L]`` (sigmoid); regression values ``[N]`` in the target's
        original unit (``value * target_std + target_mean``). Call ``eval()`` first for
        inference (:func:`automtl.load` returns the network in eval mode)."""
        raw = self(x)
        out = {}
        for task in self.tasks:
            y = raw[task.name]
            if task.type == "regression":
                out[task.name] = y * task.target_std + task.target_mean
            elif task.type == "multiclass":
                out[task.name] = torch.softmax(y, dim=-1)
            else:
                out[task.name] = torch.sigmoid(y)
        return out

    def param_groups(self) -> list[ParamGroup]:
        """Every node's and head's parameters with the tasks that use them.

        Gradient-aggregation balancers use this to give each shared block the aggregate of
        exactly the tasks below it.
        """
        groups = [
            ParamGroup(n.key, n.tasks, tuple(self.blocks[self._module_name[n]].parameters())) for n in self._nodes
        ]
        groups += [ParamGroup(f"head:{t.name}", (t.name,), tuple(self.heads[t.name].parameters())) for t in self.tasks]
        return groups

    def node_module(self, node: Node) -> nn.Module:
        """The module that implements ``node``."""
        return self.blocks[self._module_name[node]]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(
    tree: BranchTree, backbone: Backbone, tasks: Sequence[TaskSpec], device: str | torch.device | None = "auto"
) -> BranchedNet:
    """Instantiate ``tree`` on ``device`` (CUDA when available by default).

    Raises:
        ValueError: See :class:`BranchedNet` and :func:`resolve_device`.
    """
    return BranchedNet(tree, backbone, tasks).to(resolve_device(device))


def restrict_network(net: BranchedNet, backbone: Backbone, tasks: Sequence[str]) -> BranchedNet:
    """The part of ``net`` that serves only ``tasks``, with ``net``'s weights.

    Its tree is ``net.tree.restrict(tasks)`` (:meth:`BranchTree.restrict`); each of its block
    copies takes the weights (and buffers) of the copy of ``net`` that the same tasks went
    through, and each head is ``net``'s head. For those tasks it computes exactly what ``net``
    computes, without the blocks that serve only the others. Same device and mode as ``net``.

    Args:
        net: The full network.
        backbone: The backbone ``net`` was built from (it makes the blocks to fill).
        tasks: Tasks to keep (kept in ``net``'s task order).

    Raises:
        ValueError: ``tasks`` is empty, repeats a task or names an unknown one.
    """
    tree = net.tree.restrict(tasks)
    specs = [t for t in net.tasks if t.name in set(tree.tasks)]
    device = next(net.parameters()).device
    sub = BranchedNet(tree, backbone, specs).to(device)
    with torch.no_grad():
        for node in tree.nodes():
            source = Node(node.block, net.tree.part_of(node.tasks[0], node.block))
            sub.node_module(node).load_state_dict(net.node_module(source).state_dict())
        for spec in specs:
            sub.heads[spec.name].load_state_dict(net.heads[spec.name].state_dict())
    return sub.train(net.training)
