"""An affinity matrix with its provenance; its graph; saving, loading and printing it."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from automtl.tree import BranchTree

__all__ = ["AffinityResult", "format_affinity", "load_affinity"]

JSON_FILE = "affinity.json"
GRAPHML_FILE = "affinity.graphml"
DOT_FILE = "affinity.dot"
FORMAT_VERSION = 1


def _to_list(m: np.ndarray) -> list[list[float | None]]:
    return [[None if not math.isfinite(float(v)) else float(v) for v in row] for row in np.asarray(m, dtype=float)]


def _from_list(rows: Sequence[Sequence[float | None]]) -> np.ndarray:
    return np.array([[math.nan if v is None else float(v) for v in row] for row in rows], dtype=float).reshape(
        len(rows), len(rows[0]) if rows else 0
    )


@dataclass
class AffinityResult:
    """A task-affinity matrix and where it came from.

    Convention (every measure): ``matrix[i, j]`` is the effect of task ``i`` on task ``j``
    (row: the source task, column: the task affected); positive = ``i`` helps ``j``, negative =
    ``i`` hurts ``j``. For lookahead affinity, ``matrix[i, j] = Z_{i→j}``; :attr:`convention`
    states each measure's exact definition.

    Attributes:
        measure: ``lookahead``, ``cosine``, ``rsa`` or ``cka``.
        tasks: Task names, the row and column order, ``T`` of them.
        matrix: float64 ``[T, T]``, the mean over measurements; NaN for a pair never measured.
        counts: int ``[T, T]``, measurements behind each entry.
        convention: The definition and sign convention, in words.
        source: The paper(s) the measure comes from.
        symmetric: Whether ``matrix[i, j] == matrix[j, i]`` by construction.
        history: Per epoch (see :attr:`history_epochs`), the mean over that epoch's
            measurements, ``[T, T]`` each.
        history_epochs: The 0-based epoch of each :attr:`history` entry.
        per_block: For representation measures, one ``[T, T]`` matrix per backbone block.
        every: Steps between measurements (``k``); ``None`` for measures taken after training.
        tree: The architecture trained while measuring (hard parameter sharing by default).
        cost: Wall times in seconds (``fit_seconds``, ``measure_seconds``), ``steps``,
            ``measurements``, ``overhead`` (``fit_seconds / (fit_seconds - measure_seconds)``,
            the slowdown against the same run without measuring; ≥ 1, lower is better).
        info: Free-form provenance (config name, data set, backbone, training settings).
        baseline: Lookahead only: ``Z_{∅→j}``, ``[T]``, the effect on each task of the optimizer's
            step with a zero gradient (momentum and weight decay alone), the part every row of
            :attr:`matrix` shares; ``matrix[i, j] − baseline[j]`` is task ``i``'s own contribution.
    """

    measure: str
    tasks: list[str]
    matrix: np.ndarray
    counts: np.ndarray
    convention: str
    source: str = ""
    symmetric: bool = False
    history: list[np.ndarray] = field(default_factory=list)
    history_epochs: list[int] = field(default_factory=list)
    per_block: list[np.ndarray] = field(default_factory=list)
    every: int | None = None
    tree: BranchTree | None = None
    cost: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    baseline: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.tasks = list(self.tasks)
        n = len(self.tasks)
        self.matrix = np.asarray(self.matrix, dtype=float)
        self.counts = np.asarray(self.counts, dtype=np.int64)
        if self.matrix.shape != (n, n) or self.counts.shape != (n, n):
            raise ValueError(
                f"matrix and counts must be [{n}, {n}] for {n} tasks, got {list(self.matrix.shape)} "
                f"and {list(self.counts.shape)}"
            )
        if self.baseline is not None:
            self.baseline = np.asarray(self.baseline, dtype=float).reshape(n)
        if len(set(self.tasks)) != n:
            raise ValueError(f"task names repeat: {self.tasks}")

    # ------------------------------------------------------------------ views
    def value(self, source: str, target: str) -> float:
        """``matrix[source, target]``: the effect of task ``source`` on task ``target``."""
        return float(self.matrix[self.tasks.index(source), self.tasks.index(target)])

    def symmetrized(self) -> np.ndarray:
        """``(M + Mᵀ) / 2`` with NaN treated as missing (the other direction alone if only one
        is known); the diagonal is kept. ``[T, T]``."""
        m, mt = self.matrix, self.matrix.T
        with np.errstate(invalid="ignore"):
            both = (m + mt) / 2
        return np.where(np.isnan(m), mt, np.where(np.isnan(mt), m, both))

    def without_momentum(self) -> AffinityResult:
        """Lookahead only: a copy whose matrix is ``M[i, j] − baseline[j]``, task ``i``'s own part
        of ``Z_{i→j}`` with the momentum-only step's effect removed (see :attr:`baseline`).

        With few measurements (large ``k``) the momentum part, shared by every row, varies a lot
        from step to step; the own part is steadier (benchmarks/RESULTS.md, STAR).

        Raises:
            ValueError: If this result has no baseline (not a lookahead measurement).
        """
        if self.baseline is None:
            raise ValueError(f"a '{self.measure}' result has no momentum baseline; only lookahead results do")
        baseline = np.where(np.isfinite(self.baseline), self.baseline, 0.0)
        return dataclasses.replace(
            self,
            measure=f"{self.measure} (own part)",
            matrix=self.matrix - baseline[None, :],
            history=[h - baseline[None, :] for h in self.history],
            convention=f"{self.convention}; minus Z_{{0->j}}, the same step with a zero gradient (momentum alone)",
            baseline=None,
            info={**self.info, "momentum_baseline": [float(v) for v in self.baseline]},
        )

    def reading(self, *, with_momentum: bool = False) -> AffinityResult:
        """The matrix to read: by default each task's own part.

        A lookahead result holds the raw ``Z_{i→j}``, which includes the effect of the
        optimizer's momentum-only step (:attr:`baseline`), the same for every row: with momentum,
        that shared part can outweigh what the tasks' own gradients do, so the raw matrix's
        strongest pairs may say more about the optimizer than about the tasks. The default
        reading is therefore :meth:`without_momentum`; ``with_momentum=True`` keeps the raw
        matrix. A result without a baseline (other measures, or already the own part) is
        returned as it is.

        Args:
            with_momentum: Keep the raw matrix, momentum term included.

        Returns:
            The own part (a copy), or this result.
        """
        if with_momentum or self.baseline is None:
            return self
        return self.without_momentum()

    def pairs(self, *, sign: int = 1, top: int = 5) -> list[tuple[str, str, float]]:
        """The strongest off-diagonal entries of one sign, strongest first.

        Args:
            sign: ``+1`` for the most positive (helping) pairs, ``-1`` for the most negative.
            top: How many.

        Returns:
            ``(source, target, value)``; for a symmetric measure each unordered pair once.
        """
        out = []
        n = len(self.tasks)
        for i in range(n):
            for j in range(n):
                if i == j or (self.symmetric and j < i):
                    continue
                v = float(self.matrix[i, j])
                if math.isfinite(v) and v * sign > 0:
                    out.append((self.tasks[i], self.tasks[j], v))
        out.sort(key=lambda e: -sign * e[2])
        return out[:top]

    def to_networkx(self) -> nx.DiGraph:
        """Tasks as nodes, an edge ``i → j`` per measured off-diagonal entry.

        Node attributes: ``index``, ``self_affinity`` (the diagonal, when measured). Edge
        attributes: ``weight`` (``matrix[i, j]``), ``abs_weight``, ``sign`` (``+1``/``-1``/``0``),
        ``count``. Graph attributes: ``measure``, ``convention``, ``source``, ``symmetric``.
        """
        g = nx.DiGraph(measure=self.measure, convention=self.convention, source=self.source, symmetric=self.symmetric)
        for i, t in enumerate(self.tasks):
            attrs: dict[str, Any] = {"index": i}
            if math.isfinite(self.matrix[i, i]):
                attrs["self_affinity"] = float(self.matrix[i, i])
            g.add_node(t, **attrs)
        for i, a in enumerate(self.tasks):
            for j, b in enumerate(self.tasks):
                v = float(self.matrix[i, j])
                if i != j and math.isfinite(v):
                    g.add_edge(a, b, weight=v, abs_weight=abs(v), sign=int(np.sign(v)), count=int(self.counts[i, j]))
        return g

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON): NaN as ``null``."""
        return {
            "format_version": FORMAT_VERSION,
            "measure": self.measure,
            "convention": self.convention,
            "source": self.source,
            "symmetric": self.symmetric,
            "tasks": self.tasks,
            "matrix": _to_list(self.matrix),
            "counts": self.counts.tolist(),
            "history": [{"epoch": e, "matrix": _to_list(m)} for e, m in zip(self.history_epochs, self.history)],
            "per_block": [_to_list(m) for m in self.per_block],
            "every": self.every,
            "tree": self.tree.to_dict() if self.tree is not None else None,
            "cost": self.cost,
            "info": self.info,
            "baseline": None if self.baseline is None else _to_list(self.baseline[None, :])[0],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AffinityResult:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: A required key is missing or the shapes disagree.
        """
        try:
            return cls(
                measure=d["measure"],
                tasks=d["tasks"],
                matrix=_from_list(d["matrix"]),
                counts=np.array(d["counts"], dtype=np.int64).reshape(len(d["tasks"]), len(d["tasks"])),
                convention=d["convention"],
                source=d.get("source", ""),
                symmetric=bool(d.get("symmetric", False)),
                history=[_from_list(h["matrix"]) for h in d.get("history", [])],
                history_epochs=[int(h["epoch"]) for h in d.get("history", [])],
                per_block=[_from_list(m) for m in d.get("per_block", [])],
                every=d.get("every"),
                tree=BranchTree.from_dict(d["tree"]) if d.get("tree") else None,
                cost=dict(d.get("cost", {})),
                info=dict(d.get("info", {})),
                baseline=None if d.get("baseline") is None else _from_list([d["baseline"]])[0],
            )
        except KeyError as exc:
            raise ValueError(f"an affinity record needs the key {exc}") from exc

    def save(self, directory: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``affinity.json`` (everything; what :func:`load_affinity` reads),
        ``affinity.graphml`` (the graph of :meth:`to_networkx`) and ``affinity.dot`` (Graphviz).

        Returns:
            ``{"json": path, "graphml": path, "dot": path}``.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / JSON_FILE, "graphml": out / GRAPHML_FILE, "dot": out / DOT_FILE}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        nx.write_graphml(self.to_networkx(), paths["graphml"])
        paths["dot"].write_text(to_dot(self))
        return paths


def load_affinity(directory: str | os.PathLike[str]) -> AffinityResult:
    """Read what :meth:`AffinityResult.save` wrote (``directory/affinity.json``, or that file).

    Raises:
        FileNotFoundError: No ``affinity.json`` there.
        ValueError: The file is not an affinity record.
    """
    path = Path(directory)
    if path.is_dir():
        path = path / JSON_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {JSON_FILE} in {directory}; write one with 'automtl affinity CONFIG --out DIR'")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    return AffinityResult.from_dict(data)


def _dot_id(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(result: AffinityResult) -> str:
    """Graphviz DOT text of the affinity graph (no Graphviz needed to write it).

    Edges are blue when positive and red when negative, with pen width growing with ``|M[i, j]|``;
    a symmetric measure is written as an undirected graph, one edge per pair.
    """
    sym = result.symmetric
    lines = [
        f"{'graph' if sym else 'digraph'} affinity {{",
        f"  label={_dot_id(result.measure + ': ' + result.convention)};",
        "  labelloc=t; fontsize=10; node [shape=ellipse, fontname=Helvetica];",
    ]
    finite = [abs(v) for v in result.matrix[~np.eye(len(result.tasks), dtype=bool)] if math.isfinite(v)]
    scale = max(finite) if finite and max(finite) > 0 else 1.0
    for t in result.tasks:
        lines.append(f"  {_dot_id(t)};")
    arrow = "--" if sym else "->"
    for i, a in enumerate(result.tasks):
        for j, b in enumerate(result.tasks):
            v = float(result.matrix[i, j])
            if i == j or not math.isfinite(v) or (sym and j < i):
                continue
            color = "#2166ac" if v >= 0 else "#b2182b"
            width = 0.5 + 3.5 * abs(v) / scale
            lines.append(
                f"  {_dot_id(a)} {arrow} {_dot_id(b)} [weight={v:.6g}, label=\"{v:+.3g}\", color=\"{color}\", "
                f"penwidth={width:.2f}];"
            )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _scale(values: np.ndarray) -> int:
    """A power of ten ``e`` (0, 3 or 6) so that typical entries of ``values * 10**e`` (judged by
    the median non-zero magnitude, so one outlying task does not flatten the rest) print with a
    few significant digits."""
    finite = np.abs(values[np.isfinite(values)])
    finite = finite[finite > 0]
    if not finite.size:
        return 0
    typical = float(np.median(finite))
    if typical >= 0.1:
        return 0
    return 3 if typical >= 1e-4 else 6


def _cell(v: float) -> str:
    return f"{v:+.2f}" if abs(v) < 10 else f"{v:+.1f}" if abs(v) < 100 else f"{v:+.0f}"


def _reading(result: AffinityResult) -> str:
    """Which matrix a result holds, in words: raw with the momentum term, the own part, or as measured."""
    if result.baseline is not None:
        return (
            "raw, momentum term included (every row contains the momentum-only step's effect, "
            "the 'momentum only' row; the own part removes it)"
        )
    if "momentum_baseline" in result.info:
        return "own part: each task's own contribution, the momentum-only step's effect removed"
    return "as measured (no optimizer momentum term in this measure)"


def format_affinity(result: AffinityResult, top: int = 5) -> str:
    """The matrix as a terminal table, then the strongest positive and negative pairs.

    The headline says which reading is shown (:meth:`AffinityResult.reading`): the raw lookahead
    matrix with its momentum term, the own part, or a measure without such a term.

    Args:
        result: An affinity result.
        top: How many pairs of each sign to list.
    """
    n = len(result.tasks)
    e = _scale(result.matrix[~np.eye(n, dtype=bool)])
    factor = 10.0**e
    unit = f" shown x10^{e} (+2.50 means 0.0025)" if e == 3 else f" shown x10^{e}" if e else ""
    head = [
        f"Task affinity: {result.measure}{' (symmetric)' if result.symmetric else ''}",
        f"  reading: {_reading(result)}",
        f"  definition: {result.convention}",
    ]
    if result.source:
        head.append(f"  source: {result.source}")
    where = []
    if result.tree is not None:
        where.append(f"tree [{result.tree.compact()}]")
    if result.every is not None:
        warm = result.info.get("warmup_epochs")
        where.append(f"measured every {result.every} steps" + (f" from epoch {warm} (0-based)" if warm else ""))
    if result.cost.get("measurements"):
        where.append(f"{int(result.cost['measurements'])} measurements")
    if result.history_epochs:
        where.append(f"{len(result.history_epochs)} epochs")
    if where:
        head.append("  " + ", ".join(where))
    head.append(f"  rows: source task i; columns: affected task j; entry M[i, j]{unit}; higher = i helps j more")
    head.append("")
    label_w = max(len(f"{i} {t}") for i, t in enumerate(result.tasks))
    cell_w = 8
    lines = [" " * label_w + " " + "".join(f"{j:>{cell_w}}" for j in range(n))]
    for i, t in enumerate(result.tasks):
        cells = []
        for j in range(n):
            v = float(result.matrix[i, j])
            if not math.isfinite(v):
                cells.append(f"{'-':>{cell_w}}")
            else:
                txt = _cell(v * factor)
                cells.append(f"{'[' + txt + ']' if i == j else txt:>{cell_w}}")
        lines.append(f"{f'{i} {t}':<{label_w}} " + "".join(cells))
    if result.baseline is not None:
        momentum = "".join(
            f"{'-' if not math.isfinite(v) else _cell(float(v) * factor):>{cell_w}}" for v in result.baseline
        )
        lines.append(f"{'momentum only':<{label_w}} " + momentum)
    lines.append("(columns numbered as the rows; [diagonal] = a task's effect on itself)")
    if result.baseline is not None:
        lines.append(
            "(momentum only: the same step with a zero gradient, Z_{0->j}; M[i, j] minus it is task i's own part)"
        )
    out = head + lines + [""]
    arrow = "<->" if result.symmetric else "->"
    for sign, title in ((1, "Strongest positive (helps)"), (-1, "Strongest negative (hurts)")):
        pairs = result.pairs(sign=sign, top=top)
        out.append(f"{title}:")
        if not pairs:
            out.append("  (none)")
        for a, b, v in pairs:
            out.append(f"  {a} {arrow} {b}: {v:+.4g}")
    counts = result.counts[~np.eye(n, dtype=bool)]
    if counts.size:
        out.append(f"Measurements per pair: min {int(counts.min())}, max {int(counts.max())}")
    if result.cost.get("overhead"):
        out.append(
            f"Cost: {result.cost.get('measure_seconds', 0):.1f} s measuring in a {result.cost.get('fit_seconds', 0):.1f} s run "
            f"(x{result.cost['overhead']:.2f} the run without measuring; lower is better)"
        )
    return "\n".join(out)
