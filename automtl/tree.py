"""The branched architecture as a sequence of task partitions (the one source of truth).

A backbone is a sequence of ``n_blocks`` blocks. Branching point ``b`` is the boundary just
before block ``b`` (``0 <= b < n_blocks``). A :class:`BranchTree` holds, for every block ``b``,
a partition of the tasks: tasks in one part share (the same copy of) block ``b``. Each partition
refines the one before it, so once two tasks are apart they stay apart. After the last block
each task has its own head.

* hard parameter sharing: one part at every block (:meth:`BranchTree.hard_sharing`);
* single-task networks: singletons from block 0 (:meth:`BranchTree.single_task`).

This module knows nothing of torch or optuna.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import yaml

__all__ = ["BranchTree", "Node"]

Part = tuple[str, ...]
Partition = tuple[Part, ...]


@dataclass(frozen=True, order=True)
class Node:
    """One block copy of a branched network: block ``block`` shared by ``tasks``."""

    block: int
    tasks: Part

    @property
    def key(self) -> str:
        """Stable identifier, e.g. ``"b2:count+has_bag"``."""
        return f"b{self.block}:" + "+".join(self.tasks)


class BranchTree:
    """Per-block task partitions, each refining the one before.

    Args:
        tasks: The task names in their canonical order.
        partitions: For each block, an iterable of parts (iterables of task names). Parts are
            stored canonically: tasks within a part in ``tasks`` order, parts ordered by their
            first task, so equal architectures compare and hash equal.

    Raises:
        ValueError: If there are no tasks or blocks, a task name repeats, a partition does not
            cover every task exactly once, or a partition does not refine the one before.
    """

    __slots__ = ("_order", "_partitions", "_tasks")

    def __init__(self, tasks: Sequence[str], partitions: Iterable[Iterable[Iterable[str]]]) -> None:
        tasks = tuple(tasks)
        if not tasks:
            raise ValueError("a BranchTree needs at least one task")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"task names repeat: {list(tasks)}")
        order = {t: i for i, t in enumerate(tasks)}
        canon: list[Partition] = []
        for b, partition in enumerate(partitions):
            parts: list[Part] = []
            seen: set[str] = set()
            for part in partition:
                part_t = tuple(part)
                if not part_t:
                    raise ValueError(f"block {b}: empty part")
                for t in part_t:
                    if t not in order:
                        raise ValueError(f"block {b}: unknown task '{t}'")
                    if t in seen:
                        raise ValueError(f"block {b}: task '{t}' is in two parts")
                    seen.add(t)
                parts.append(tuple(sorted(part_t, key=order.__getitem__)))
            missing = [t for t in tasks if t not in seen]
            if missing:
                raise ValueError(f"block {b}: tasks {missing} are in no part")
            canon.append(tuple(sorted(parts, key=lambda p: order[p[0]])))
        if not canon:
            raise ValueError("a BranchTree needs at least one block")
        for b in range(1, len(canon)):
            for part in canon[b]:
                if not any(set(part) <= set(prev) for prev in canon[b - 1]):
                    raise ValueError(
                        f"block {b}: part {list(part)} does not refine block {b - 1}'s partition "
                        f"{[list(p) for p in canon[b - 1]]}"
                    )
        self._tasks = tasks
        self._partitions = tuple(canon)
        self._order = order

    # ----------------------------------------------------------------- constructors
    @classmethod
    def hard_sharing(cls, tasks: Sequence[str], n_blocks: int) -> BranchTree:
        """Hard parameter sharing: every block shared by all tasks."""
        return cls(tasks, [[tasks]] * n_blocks)

    @classmethod
    def single_task(cls, tasks: Sequence[str], n_blocks: int) -> BranchTree:
        """One independent network per task (all singletons from branching point 0)."""
        return cls(tasks, [[[t] for t in tasks]] * n_blocks)

    @classmethod
    def from_branch_points(
        cls,
        tasks: Sequence[str],
        n_blocks: int,
        group_of: Mapping[str, int],
        group_split: Mapping[int, int],
        task_split: Mapping[str, int],
    ) -> BranchTree:
        """A three-level tree: shared trunk, then task groups, then single tasks.

        Task ``t`` belongs to group ``group_of[t]``. Group ``g`` leaves the trunk at branching
        point ``group_split[g]``; task ``t`` leaves its group (or the trunk, if earlier) at
        ``task_split[t]``. A point equal to ``n_blocks`` means "never" (shared up to the heads).

        Raises:
            ValueError: If a split point is outside ``[0, n_blocks]``.
        """
        for where, point in [*((f"group {g}", p) for g, p in group_split.items()), *task_split.items()]:
            if not 0 <= point <= n_blocks:
                raise ValueError(f"branching point of {where} is {point}, outside [0, {n_blocks}]")
        partitions = []
        for b in range(n_blocks):
            parts: dict[tuple[Any, ...], list[str]] = {}
            for t in tasks:
                g = group_of[t]
                if b >= task_split[t]:
                    key: tuple[Any, ...] = ("task", t)
                elif b >= group_split[g]:
                    key = ("group", g)
                else:
                    key = ("trunk",)
                parts.setdefault(key, []).append(t)
            partitions.append(list(parts.values()))
        return cls(tasks, partitions)

    # ----------------------------------------------------------------- accessors
    @property
    def tasks(self) -> tuple[str, ...]:
        return self._tasks

    @property
    def partitions(self) -> tuple[Partition, ...]:
        """For each block, its partition of the tasks (canonical order)."""
        return self._partitions

    @property
    def n_blocks(self) -> int:
        return len(self._partitions)

    def part_of(self, task: str, block: int) -> Part:
        """The part of ``block``'s partition that contains ``task``."""
        for part in self._partitions[block]:
            if task in part:
                return part
        raise KeyError(f"unknown task '{task}'")

    def nodes(self) -> list[Node]:
        """Every block copy, block by block (a topological order)."""
        return [Node(b, part) for b, partition in enumerate(self._partitions) for part in partition]

    def parent(self, node: Node) -> Node | None:
        """The node whose output feeds ``node``; ``None`` for block 0."""
        if node.block == 0:
            return None
        return Node(node.block - 1, self.part_of(node.tasks[0], node.block - 1))

    def leaf(self, task: str) -> Node:
        """The last-block node that feeds ``task``'s head."""
        return Node(self.n_blocks - 1, self.part_of(task, self.n_blocks - 1))

    def restrict(self, tasks: Iterable[str]) -> BranchTree:
        """The subtree that serves only ``tasks``: every part cut down to them, empty parts dropped.

        Each node of the result is a node of this tree with fewer tasks (the same block copy),
        so a network of the result computes the same outputs for those tasks with the
        matching weights (:func:`automtl.build.restrict_network`). Tasks keep this tree's order.

        Raises:
            ValueError: If ``tasks`` is empty, repeats a task or names an unknown one.
        """
        wanted = list(tasks)
        if not wanted:
            raise ValueError("restrict needs at least one task")
        unknown = [t for t in wanted if t not in self._order]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; the tree's tasks are {list(self._tasks)}")
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"tasks {wanted} name a task twice")
        keep = [t for t in self._tasks if t in set(wanted)]
        partitions = [[[t for t in part if t in keep] for part in partition] for partition in self._partitions]
        return BranchTree(keep, [[part for part in partition if part] for partition in partitions])

    def is_hard_sharing(self) -> bool:
        return all(len(p) == 1 for p in self._partitions)

    def parameter_count(self, block_params: Sequence[int], head_params: Mapping[str, int]) -> int:
        """Total parameters: each node costs its block's count, plus every head.

        Args:
            block_params: Parameters of one copy of each block, ``len == n_blocks``.
            head_params: Parameters of each task's head.

        Raises:
            ValueError: If ``block_params`` has the wrong length or a head is missing.
        """
        if len(block_params) != self.n_blocks:
            raise ValueError(f"block_params has {len(block_params)} entries for {self.n_blocks} blocks")
        missing = [t for t in self._tasks if t not in head_params]
        if missing:
            raise ValueError(f"no head parameter count for tasks {missing}")
        shared = sum(block_params[b] * len(p) for b, p in enumerate(self._partitions))
        return shared + sum(int(head_params[t]) for t in self._tasks)

    # ----------------------------------------------------------------- views
    def to_networkx(self) -> nx.DiGraph:
        """A directed graph ``input -> block nodes -> head:<task>``.

        Block nodes are keyed by :attr:`Node.key` and carry ``block`` and ``tasks`` attributes;
        head nodes carry ``task``.
        """
        g = nx.DiGraph()
        g.add_node("input", kind="input")
        for node in self.nodes():
            g.add_node(node.key, kind="block", block=node.block, tasks=list(node.tasks))
            parent = self.parent(node)
            g.add_edge("input" if parent is None else parent.key, node.key)
        for t in self._tasks:
            g.add_node(f"head:{t}", kind="head", task=t)
            g.add_edge(self.leaf(t).key, f"head:{t}")
        return g

    def compact(self) -> str:
        """One-line shape with task indices, e.g. ``"0-3 | 0-1/2-3 | 0/1/2-3"``."""

        def part_str(part: Part) -> str:
            idx = [self._order[t] for t in part]
            if len(idx) > 2 and idx == list(range(idx[0], idx[-1] + 1)):
                return f"{idx[0]}-{idx[-1]}"
            return ",".join(map(str, idx))

        return " | ".join("/".join(part_str(p) for p in partition) for partition in self._partitions)

    def render(self, block_names: Sequence[str] | None = None) -> str:
        """A readable multi-line drawing of the tree, one line per node and head."""
        names = list(block_names) if block_names else [f"block {b}" for b in range(self.n_blocks)]
        lines = ["input"]
        children: dict[Node | None, list[Node]] = {}
        for node in self.nodes():
            children.setdefault(self.parent(node), []).append(node)

        def walk(node: Node, prefix: str, last: bool) -> None:
            branch = "└─ " if last else "├─ "
            label = "all tasks" if len(node.tasks) == len(self._tasks) else ", ".join(node.tasks)
            lines.append(f"{prefix}{branch}{names[node.block]} [{label}]")
            sub = prefix + ("   " if last else "│  ")
            kids: list[Any] = children.get(node, [])
            if node.block == self.n_blocks - 1:
                kids = [f"head {t}" for t in node.tasks]
            for i, kid in enumerate(kids):
                is_last = i == len(kids) - 1
                if isinstance(kid, Node):
                    walk(kid, sub, is_last)
                else:
                    lines.append(f"{sub}{'└─ ' if is_last else '├─ '}{kid}")

        roots = children.get(None, [])
        for i, root in enumerate(roots):
            walk(root, "", i == len(roots) - 1)
        return "\n".join(lines)

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"tasks": list(self._tasks), "partitions": [[list(p) for p in part] for part in self._partitions]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BranchTree:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: If keys are missing or the partitions are invalid.
        """
        if not isinstance(d, Mapping):  # malformed file content: a ValueError, as every other case here
            raise ValueError(f"a BranchTree mapping needs the keys 'tasks' and 'partitions', got {type(d).__name__}")  # noqa: TRY004
        try:
            return cls(d["tasks"], d["partitions"])
        except KeyError as exc:
            raise ValueError(f"a BranchTree mapping needs the key {exc}") from exc

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> BranchTree:
        return cls.from_dict(yaml.safe_load(text))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> BranchTree:
        return cls.from_dict(json.loads(text))

    # ----------------------------------------------------------------- identity
    def __eq__(self, other: object) -> bool:
        return isinstance(other, BranchTree) and (self._tasks, self._partitions) == (other._tasks, other._partitions)

    def __hash__(self) -> int:
        return hash((self._tasks, self._partitions))

    def __repr__(self) -> str:
        return f"BranchTree({self.compact()!r}, tasks={list(self._tasks)})"
