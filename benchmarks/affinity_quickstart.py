"""The quickstart's affinity graph: measure lookahead affinity (TAG) at the default k while
training the quickstart's hard-parameter-sharing CNN, print the table, the groupings and trees,
and draw the picture (benchmarks/figures/quickstart_affinity.png).

    python benchmarks/affinity_quickstart.py [--every K] [--out runs/affinity/quickstart]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from automtl.affinity import (  # noqa: E402
    DEFAULT_EVERY,
    format_affinity,
    measure_affinity,
    plot_affinity,
    seed_params,
    select_grouping,
    trees_from_affinity,
)
from automtl.experiment import prepare  # noqa: E402
from automtl.space import SearchSpace  # noqa: E402
from benchmarks.affinity_common import ROOT, quickstart_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=DEFAULT_EVERY)
    parser.add_argument("--out", default="runs/affinity/quickstart")
    parser.add_argument("--figure", default=str(ROOT / "benchmarks" / "figures" / "quickstart_affinity.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = quickstart_config()
    exp = prepare(config)
    result = measure_affinity(config, every=args.every, experiment=exp, device="cpu")
    result.save(args.out)
    print(format_affinity(result))
    tasks = result.tasks
    print()
    for k in (2, 3):
        g = select_grouping(result.matrix, tasks, k)
        print(f"best grouping, at most {k} groups: {g.groups}  total affinity {g.score:+.4f} ({'exact' if g.exact else 'heuristic'})")
    space = SearchSpace(config, tasks, exp.backbone.n_blocks)
    trees = trees_from_affinity(result, exp.backbone.n_blocks, max_groups=space.max_groups,
                                group_points=space.group_points, task_points=space.task_points)
    print("\ncandidate trees (quickstart space: max_groups 2, group points 1-4, task points 3-4):")
    for tree in trees:
        print(f"  [{tree.compact()}]")
    print(f"expressible in the search space (to enqueue): {len(seed_params(result, space))} of {len(trees)}")
    path = plot_affinity(result, args.figure, title=f"Task affinity (lookahead, k={args.every}) - quickstart, small CNN, 3 epochs")
    own = result.without_momentum()
    own_path = plot_affinity(
        own,
        Path(args.figure).with_name(Path(args.figure).stem + "_own.png"),
        title=f"Task affinity, own part (lookahead minus the momentum-only step, k={args.every}) - quickstart",
    )
    print("\n" + format_affinity(own))
    for k in (2, 3):
        g = select_grouping(own.matrix, tasks, k)
        print(f"own part, best grouping, at most {k} groups: {g.groups}  total affinity {g.score:+.4f}")
    print(f"\nfigures: {path}, {own_path}; results: {args.out}/")


if __name__ == "__main__":
    main()
