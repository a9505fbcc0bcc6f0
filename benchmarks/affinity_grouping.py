"""Wall time of choosing a task grouping from an affinity matrix, for 10, 16 and 24 tasks.

Matrices: random ``[T, T]`` affinities with a planted structure (tasks in 4 hidden clusters:
+0.002 inside, -0.001 across, Gaussian noise of 0.002, like lookahead values), 5 seeds each.
``auto`` runs the local search, then branch-and-bound seeded with its result under a budget
of 50,000 nodes (exact when it finishes); ``heuristic`` is the local search alone; ``exact``
runs branch-and-bound to the end (only where it finishes quickly). One CPU thread, pure Python.

    python benchmarks/affinity_grouping.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from automtl.affinity import select_grouping  # noqa: E402


def problem(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, 4, size=n)
    m = np.where(cluster[:, None] == cluster[None, :], 0.002, -0.001) + rng.normal(0, 0.002, size=(n, n))
    return m, [f"task{i}" for i in range(n)]


def main() -> None:
    print("| tasks | max groups | method | median time (ms) | max time (ms) | exact (of 5) | median B&B nodes | score / best found |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (10, 16, 24):
        for k in (2, 3, 4):
            rows: dict[str, list] = {"auto": [], "heuristic": []}
            if n <= 10:
                rows["exact"] = []
            for seed in range(5):
                m, tasks = problem(n, seed)
                found = {method: select_grouping(m, tasks, k, method=method) for method in rows}
                best = max(g.score for g in found.values())
                for method, g in found.items():
                    rows[method].append((g.seconds * 1000, g.exact, g.nodes, g.score / best if best > 0 else 1.0))
            for method, vals in rows.items():
                times = [v[0] for v in vals]
                print(
                    f"| {n} | {k} | {method} | {statistics.median(times):.1f} | {max(times):.1f} | "
                    f"{sum(v[1] for v in vals)} | {statistics.median(v[2] for v in vals):.0f} | "
                    f"{min(v[3] for v in vals):.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
