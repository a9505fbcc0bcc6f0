"""Cost of measuring lookahead affinity (TAG) relative to the same training run without it.

For each configuration, times the very same training run (hard parameter sharing, ``fit`` on
the train split with its per-epoch validation, as ``measure_affinity`` runs it) without a hook,
and with the lookahead meter (and the gradient-cosine meter) every ``k`` steps. A measuring run
is bitwise the same training run (tests/affinity/test_lookahead.py), so the ratio of wall times
is the whole cost. As ``measure_affinity`` does by default, the first epoch is a warm-up left
unmeasured (``warm-up 1``); rows with ``warm-up 0`` measure from the first step. Runs are interleaved (one run of every variant per round), so load from
other processes hits all variants alike, after one untimed warm-up round; the table shows the median
over rounds. One CPU thread.

* quickstart CNN: ``search_spaces/quickstart.yaml`` (fashion_scenes, 11 tasks, 20% of labels
  hidden; small_cnn 8/16/32 + 32 with BatchNorm; 3 epochs of 3000 scenes, batch 64, AdamW);
* STAR MLP: star (8 regression tasks, about half of each unlabelled), mlp 256/128/64, 5 epochs,
  batch 128, AdamW lr 1e-3.

    python benchmarks/affinity_cost.py [--rounds 3] [--every 1 5 10 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from automtl.affinity import DEFAULT_EVERY, MEASURES, train_config_for  # noqa: E402
from automtl.balance import create_balancer  # noqa: E402
from automtl.build import build_model  # noqa: E402
from automtl.experiment import prepare  # noqa: E402
from automtl.train import fit, seed_everything  # noqa: E402
from automtl.tree import BranchTree  # noqa: E402
from benchmarks.affinity_common import quickstart_config, star_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--every", type=int, nargs="+", default=sorted({1, 5, 10, DEFAULT_EVERY, 20}))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, CPU, 1 thread; median of {args.rounds} interleaved rounds; default k = {DEFAULT_EVERY}\n")
    print("| configuration | tasks | steps | measure | k | warm-up epochs | measurements | run (s) | x the run without measuring |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, config in (("quickstart CNN", quickstart_config()), ("STAR MLP", star_config())):
        exp = prepare(config)
        data, backbone = exp.data, exp.backbone
        train = train_config_for(config)
        tree = BranchTree.hard_sharing(data.task_names, backbone.n_blocks)
        variants: list[tuple[str, int, int]] = [("none", 0, 0)]
        variants += [("lookahead", k, 1) for k in args.every]
        variants += [("lookahead", k, 0) for k in sorted({1, DEFAULT_EVERY})]
        variants += [("cosine", k, 1) for k in sorted({1, DEFAULT_EVERY})]
        times: dict[tuple[str, int, int], list[float]] = {v: [] for v in variants}
        info: dict[tuple[str, int, int], tuple[int, int]] = {}
        for round_ in range(args.rounds + 1):  # round 0 warms caches and allocators up, untimed
            for measure, k, warm in variants if round_ else variants[:2]:
                meter: Any = MEASURES[measure](data.task_names, every=k, start_epoch=warm) if measure != "none" else None
                steps = 0

                def hook(ctx: Any, meter: Any = meter) -> None:
                    nonlocal steps
                    steps = max(steps, ctx.step + 1)
                    if meter is not None:
                        meter(ctx)

                seed_everything(train.seed)
                net = build_model(tree, backbone, data.tasks, "cpu")
                start = time.perf_counter()
                fit(net, data, create_balancer("equal", data.task_names), train, on_batch=hook)
                if round_:
                    times[(measure, k, warm)].append(time.perf_counter() - start)
                info[(measure, k, warm)] = (steps, meter.measurements if meter is not None else 0)
        base = statistics.median(times[("none", 0, 0)])
        for measure, k, warm in variants:
            t = statistics.median(times[(measure, k, warm)])
            steps, count = info[(measure, k, warm)]
            default = " (default)" if measure == "lookahead" and k == DEFAULT_EVERY and warm == 1 else ""
            print(
                f"| {name} | {len(data.task_names)} | {steps} | {measure}{default} | {k or '-'} | "
                f"{warm if measure != 'none' else '-'} | {count} | {t:.2f} | {t / base:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
