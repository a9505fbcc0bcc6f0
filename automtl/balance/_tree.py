"""The tree rule: which tasks' gradients each parameter receives in a branched network.

A :class:`~automtl.build.ParamGroup` is one tree node (a block copy) or one head, with the
tasks that use it. In a step, only the tasks labelled in the batch (those in ``losses``) take
part; a group's *active* tasks are its tasks that are in ``losses``.

The rule, for every group:

* **two or more active tasks**: the group receives the aggregate of exactly those tasks'
  gradients (never the gradient of a task that does not use it);
* **one active task**: that task's plain gradient;
* **no active task**: nothing (``.grad`` is left untouched, so the optimizer skips it).

Groups with the same active task set form a *segment*. In a tree, such groups lie on one path
(nodes of the same block hold disjoint task sets), so a segment is a chain of consecutive
blocks, e.g. the whole trunk of a hard-parameter-sharing network, or a node shared by
``{a, b, c}`` followed by its child shared by ``{a, b}`` when ``c`` is unlabelled in the batch.
A segment is aggregated as one unit: over all its parameters at once ("full" mode), or at
the output of its deepest node, the branching point's shared representation
("representation" mode).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from automtl.build import ParamGroup

__all__ = ["Segment", "block_of", "features_by_key", "leaf_groups", "segments"]

_NODE_KEY = re.compile(r"^b(\d+):")


def block_of(key: str) -> int | None:
    """The block index of a node key (``"b2:a+b"`` -> 2); ``None`` for a head (``"head:a"``)."""
    match = _NODE_KEY.match(key)
    return int(match.group(1)) if match else None


@dataclass
class Segment:
    """Parameter groups that share one active task set (a chain of blocks, or one head).

    Attributes:
        tasks: The active tasks, in the order of ``losses``.
        params: Every parameter of the segment's groups.
        keys: The groups' keys.
        out_key: Key of the segment's deepest tree node (``None`` if it holds only heads);
            its output is the segment's shared representation.
    """

    tasks: tuple[str, ...]
    params: list[nn.Parameter] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    out_key: str | None = None
    _out_block: int = -1


def segments(param_groups: Iterable[ParamGroup], active: Sequence[str]) -> list[Segment]:
    """Group ``param_groups`` by their active task set (tasks outside ``active`` take no part).

    Args:
        param_groups: The network's groups (:meth:`automtl.build.BranchedNet.param_groups`).
        active: The tasks labelled in this step, in the order used for the result's ``tasks``.

    Returns:
        One :class:`Segment` per distinct non-empty active set, in order of first appearance.
    """
    order = {t: i for i, t in enumerate(active)}
    by_tasks: dict[tuple[str, ...], Segment] = {}
    for group in param_groups:
        tasks = tuple(sorted((t for t in group.tasks if t in order), key=order.__getitem__))
        if not tasks:
            continue
        seg = by_tasks.get(tasks)
        if seg is None:
            seg = by_tasks[tasks] = Segment(tasks)
        seg.params.extend(group.params)
        seg.keys.append(group.key)
        block = block_of(group.key)
        if block is not None and block > seg._out_block:
            seg._out_block, seg.out_key = block, group.key
    return list(by_tasks.values())


def features_by_key(features: Mapping[object, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """``{Node: tensor}`` (as the trainer passes in ``ctx.extra["features"]``) to ``{key: tensor}``."""
    if not features:
        return {}
    return {str(getattr(node, "key", node)): value for node, value in features.items()}


def leaf_groups(param_groups: Iterable[ParamGroup], tasks: Iterable[str]) -> dict[str, ParamGroup]:
    """For each task, its deepest tree node (the block that feeds its head).

    Raises:
        ValueError: A task is used by no tree node.
    """
    best: dict[str, tuple[int, ParamGroup]] = {}
    for group in param_groups:
        block = block_of(group.key)
        if block is None:
            continue
        for t in group.tasks:
            if t not in best or block > best[t][0]:
                best[t] = (block, group)
    missing = [t for t in tasks if t not in best]
    if missing:
        raise ValueError(f"no tree node in the parameter groups uses tasks {missing}")
    return {t: g for t, (_, g) in best.items()}
