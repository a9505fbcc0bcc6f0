"""One-shot screening: how well the supernet ranks trees, what it costs, and what it finds.

Part 1, **ranking** (``--ranking``): on the ground-truth space (``benchmarks/ground_truth_scenes.py``:
4 Fashion-MNIST scene tasks, ``small_cnn`` with 3 blocks, 154 trees, every tree trained alone
with several seeds, the table in ``benchmarks/data/ground_truth_scenes.json``), train the
supernet (:mod:`automtl.supernet`) with several budgets and seeds, score every tree with its
proxy, and compare with each tree's stand-alone validation Δm (mean over the table's seeds, paired
against the single-task networks of the same seed): Kendall τ and Spearman ρ over all trees,
against the table's own split-half reliability as the ceiling. Also the supernet's cost in
training-run equivalents (training, and the proxy of all trees) and its peak memory against the
largest tree's training (each in a child process, maximum resident set size).

Part 2, **searches** (``--searches``): the ``supernet`` strategy against the ``full`` strategy
on the quickstart and STAR (``search_spaces/star.yaml`` with 5 epochs), 40 trials each, the
same confirmation stage, several search seeds: the confirmed answer's test Δm (over its
confirmation seeds, against the single-task networks' confirmation runs; from ``export``), the
cost by stage in TRE and the wall time, measured side by side (the two strategies of one seed
run one after the other).

    python benchmarks/supernet.py --ranking [--budgets 1 2 4] [--seeds 3] [--write]
    python benchmarks/supernet.py --searches [--seeds 3] [--only quickstart] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from automtl.build import build_model
from automtl.config import SearchConfig, load_config, parse_config
from automtl.cost import count_flops
from automtl.experiment import Experiment, prepare
from automtl.metrics import delta_m, mean_std
from automtl.space import SearchSpace, default_value
from automtl.supernet import (
    ProxyEvaluator,
    Supernet,
    path_sampler,
    sandwich_sampler,
    train_supernet,
    tree_sampler,
)
from automtl.train import TrainConfig
from automtl.tree import BranchTree
from benchmarks.ground_truth_scenes import GT_RAW
from benchmarks.results_md import machine, write_section

TABLE = ROOT / "benchmarks" / "data" / "ground_truth_scenes.json"
RUNS = ROOT / "runs" / "benchmarks"
CACHE = RUNS / "supernet.json"
RANKING = "## One-shot screening: ranking"
SEARCHES = "## One-shot screening: searches"

# the ground-truth space and its table: benchmarks/ground_truth_scenes.py


# ------------------------------------------------------------------------------------ ranking
def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b (ties in either ranking accounted for), scipy's definition."""
    from scipy.stats import kendalltau

    return float(kendalltau(x, y).statistic)


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def ground_truth(path: Path) -> tuple[dict[str, float], dict[str, BranchTree], float, int]:
    """Each tree's mean validation Δm (paired against the single-task tree per seed), the trees,
    the split-half reliability (Spearman-Brown) and the number of seeds."""
    table = json.loads(path.read_text())["trees"]
    trees = {key: BranchTree(GT_RAW["data"]["options"]["tasks"], row["partitions"]) for key, row in table.items()}
    tasks = prepare(parse_config(GT_RAW)).data.tasks
    single = next(k for k, t in trees.items() if t == BranchTree.single_task(t.tasks, t.n_blocks))
    seeds = sorted(set.intersection(*(set(row["runs"]) for row in table.values())), key=int)
    per_seed = {
        key: [delta_m(row["runs"][s]["val"], table[single]["runs"][s]["val"], tasks) for s in seeds] for key, row in table.items()
    }
    keys = list(per_seed)
    even = [statistics.fmean(per_seed[k][0::2]) for k in keys]
    odd = [statistics.fmean(per_seed[k][1::2]) for k in keys]
    half = spearman_rho(even, odd)
    return {k: statistics.fmean(v) for k, v in per_seed.items()}, trees, 2 * half / (1 + half), len(seeds)


def _train_settings(config: SearchConfig) -> TrainConfig:
    return TrainConfig(seed=0, **{k: default_value(v) for k, v in config.train.items()})


def proxy_table(config: SearchConfig, experiment: Experiment, budget: float, seed: int, sampling: str = "trees") -> dict[str, Any]:
    """Train one supernet; the proxy Δm of every tree (against the proxy of single-task networks)."""
    from benchmarks.ground_truth import all_trees

    space = SearchSpace(config, experiment.data.task_names, experiment.backbone.n_blocks)
    hps = build_model(BranchTree.hard_sharing(space.tasks, space.n_blocks), experiment.backbone, experiment.data.tasks, "cpu")
    hps_flops = float(count_flops(hps, experiment.data.input_shape))
    torch.manual_seed(seed)
    supernet = Supernet(experiment.backbone, experiment.data.tasks)
    start = time.perf_counter()
    samplers = {
        "paths": lambda: path_sampler(space.random_tree),
        "trees": lambda: tree_sampler(space.random_tree),
        "sandwich": lambda: sandwich_sampler(space.random_tree, space.tasks, space.n_blocks),
    }
    sample = samplers[sampling]()
    done, _ = train_supernet(supernet, experiment.data, sample, _train_settings(config), budget_tre=budget,
                             hps_flops=hps_flops, seed=seed)  # fmt: skip
    train_seconds = time.perf_counter() - start
    evaluator = ProxyEvaluator(supernet.eval(), experiment.data, hps_flops=hps_flops, epochs=int(config.train["epochs"].value))
    start = time.perf_counter()
    single = evaluator.metrics(BranchTree.single_task(space.tasks, space.n_blocks))
    proxy = {t.compact(): delta_m(evaluator.metrics(t), single, experiment.data.tasks) for t in all_trees(space.tasks, space.n_blocks)}
    return {
        "budget": budget,
        "seed": seed,
        "steps": done.steps,
        "train_tre": done.tre,
        "train_seconds": train_seconds,
        "eval_tre": evaluator.tre,
        "eval_seconds": time.perf_counter() - start,
        "proxy": proxy,
    }


def peak_memory(what: str) -> int:
    """Maximum resident set size (KiB) of a fresh child process that trains ``what``
    (``supernet``, ``largest``; ``data``: loads the data set and builds nothing, the floor that
    both share). The child reports its own peak (``getrusage(RUSAGE_SELF)``)."""
    code = (
        f"import sys, torch, resource; sys.path.insert(0, {str(ROOT)!r}); torch.set_num_threads(1)\n"
        f"from benchmarks.supernet import _memory_child; _memory_child({what!r})\n"
        "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(next(line for line in done.stdout.splitlines() if line.startswith("maxrss")).split()[1])


def _memory_child(what: str) -> None:
    config = parse_config(GT_RAW)
    experiment = prepare(config)
    space = SearchSpace(config, experiment.data.task_names, experiment.backbone.n_blocks)
    if what == "data":
        return
    if what == "supernet":
        supernet = Supernet(experiment.backbone, experiment.data.tasks)
        train_supernet(supernet, experiment.data, tree_sampler(space.random_tree), _train_settings(config), budget_tre=1.0,
                       hps_flops=_hps(experiment), seed=0)  # fmt: skip
    else:
        from automtl.balance import create_balancer
        from automtl.train import fit

        net = build_model(BranchTree.single_task(space.tasks, space.n_blocks), experiment.backbone, experiment.data.tasks, "cpu")
        fit(net, experiment.data, create_balancer("equal", experiment.data.task_names), _train_settings(config))


def _hps(experiment: Experiment) -> float:
    tasks = experiment.data.task_names
    net = build_model(BranchTree.hard_sharing(tasks, experiment.backbone.n_blocks), experiment.backbone, experiment.data.tasks, "cpu")
    return float(count_flops(net, experiment.data.input_shape))


def ranking(args: argparse.Namespace) -> str:
    truth, _trees, reliability, n_seeds = ground_truth(Path(args.table))
    config = parse_config(GT_RAW)
    experiment = prepare(config)
    cache: dict[str, Any] = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    rows = []
    started = time.perf_counter()
    for budget in args.budgets:
        runs = []
        for seed in range(args.seeds):
            key = f"ranking/{budget}/{seed}"
            if key not in cache:
                cache[key] = proxy_table(config, experiment, budget, seed)
                CACHE.write_text(json.dumps(cache))
            run = cache[key]
            keys = sorted(truth)
            tau = kendall_tau([run["proxy"][k] for k in keys], [truth[k] for k in keys])
            rho = spearman_rho([run["proxy"][k] for k in keys], [truth[k] for k in keys])
            best_truth = max(keys, key=lambda k: truth[k])
            top = max(keys, key=lambda k: run["proxy"][k])
            runs.append({**run, "tau": tau, "rho": rho, "top": top, "top_rank": sorted(keys, key=lambda k: -truth[k]).index(top) + 1, "best": best_truth})
        taus = [r["tau"] for r in runs]
        rhos = [r["rho"] for r in runs]
        rows.append(
            f"| {budget:g} | {len(runs)} | {statistics.median(taus):+.2f} [{min(taus):+.2f}, {max(taus):+.2f}] | "
            f"{statistics.median(rhos):+.2f} [{min(rhos):+.2f}, {max(rhos):+.2f}] | "
            f"{statistics.median(r['train_tre'] for r in runs):.2f} + {statistics.median(r['eval_tre'] for r in runs):.2f} | "
            f"{statistics.median(r['train_seconds'] for r in runs):.1f} + {statistics.median(r['eval_seconds'] for r in runs):.1f} | "
            f"{', '.join(str(r['top_rank']) for r in runs)} |"
        )
    mem_data, mem_super, mem_largest = (peak_memory(w) for w in ("data", "supernet", "largest"))
    lines = [
        RANKING,
        "",
        ("The supernet's proxy against every tree trained alone, on the ground-truth space (154 trees; see \"Ground truth on the "
        "scenes space\"). Truth: each tree's validation Δm, mean over the table's seeds, each seed against the single-task "
        "networks of the same seed. Proxy: the tree's validation Δm with the supernet's weights (BatchNorm recalibrated per "
        "path on 512 training inputs), against the proxy of the single-task networks. Kendall τ-b and Spearman ρ over all "
        "trees, median [min, max] over supernet seeds; the ceiling is the table's own split-half reliability."),
        "",
        f"- command: `python benchmarks/supernet.py --ranking --budgets {' '.join(f'{b:g}' for b in args.budgets)} --seeds {args.seeds} --write`",
        f"- machine: {machine()}",
        f"- date: {datetime.date.today().isoformat()}; this invocation {time.perf_counter() - started:.0f} s",
        f"- ceiling: split-half reliability of the table's ranking {reliability:.2f} ({n_seeds} seeds, Spearman-Brown)",
        "",
        "| budget (TRE) | supernet seeds | Kendall τ | Spearman ρ | cost: training + proxy of all trees (TRE) | seconds: training + proxy | the proxy's top tree: its true rank (per seed) |",
        "|---:|---:|---|---|---|---|---|",
        *rows,
        "",
        (f"Peak memory (maximum resident set size of a fresh child process, KiB): supernet training {mem_super:,}; the "
        f"largest tree (single-task networks) trained alone {mem_largest:,}; ratio {mem_super / mem_largest:.2f} "
        f"(goal: at most 2). Both include the data set loaded in memory ({mem_data:,} for loading it alone); above that "
        f"floor: {mem_super - mem_data:,} against {mem_largest - mem_data:,}, ratio "
        f"{(mem_super - mem_data) / max(mem_largest - mem_data, 1):.2f}."),
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- searches
def search_configs() -> dict[str, SearchConfig]:
    spaces = ROOT / "search_spaces"
    quick = load_config(spaces / "quickstart.yaml")
    star = load_config(spaces / "star.yaml")
    raw_star = {"name": star.name, **star.raw}
    raw_star["train"] = {**raw_star["train"], "epochs": 5}
    return {"quickstart": quick, "star": parse_config(raw_star, star.source)}


def one_search(name: str, config: SearchConfig, strategy: str, seed: int, n_trials: int) -> dict[str, Any]:
    from automtl.accounting import cost_by_stage
    from automtl.confirm import Confirmation
    from automtl.export import export_trial
    from automtl.search import run_search
    from benchmarks.search_common import with_search

    storage = RUNS / "supernet" / f"{name}_{strategy}_s{seed}.db"
    storage.parent.mkdir(parents=True, exist_ok=True)
    config = with_search(config, strategy=strategy, seed=seed, n_trials=n_trials, storage=f"sqlite:///{storage}",
                         study_name=f"{name}_{strategy}_s{seed}")  # fmt: skip
    start = time.perf_counter()
    study = run_search(config, progress=False)
    wall = time.perf_counter() - start
    metrics = export_trial(study, config.storage, RUNS / "supernet" / f"{name}_{strategy}_s{seed}_bundle")
    conf = Confirmation.from_dict(study.user_attrs["confirmation"])
    confirmed = metrics.get("confirmed", {})
    return {
        "wall_seconds": wall,
        "cost": {c.stage: {"tre": c.tre, "seconds": c.seconds, "runs": c.runs} for c in cost_by_stage(study)},
        "answer": conf.best.label,
        "tree": conf.best.tree,
        "n_params": conf.best.n_params,
        "val": confirmed.get("val", {}).get("(delta_m %)"),
        "test": confirmed.get("test", {}).get("(delta_m %)"),
        "verdict": conf.verdict.splitlines()[0],
    }


def searches(args: argparse.Namespace) -> str:
    cache: dict[str, Any] = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    configs = search_configs()
    names = args.only.split(",") if args.only else list(configs)
    started = time.perf_counter()
    for name in names:
        for seed in range(args.seeds):
            for strategy in ("supernet", "full"):
                key = f"search/{name}/{strategy}/{seed}"
                if key not in cache:
                    print(f"{key} ...", flush=True)
                    cache[key] = one_search(name, configs[name], strategy, seed, args.trials)
                    CACHE.write_text(json.dumps(cache))
    rows = []
    for name in names:
        for strategy in ("supernet", "full"):
            runs = [cache[f"search/{name}/{strategy}/{s}"] for s in range(args.seeds)]
            tests = [r["test"]["mean"] for r in runs if r["test"]]
            mean, std = mean_std(tests) if tests else (math.nan, math.nan)
            se = std / math.sqrt(len(tests)) if tests else math.nan
            cost = {stage: statistics.median(r["cost"][stage]["tre"] for r in runs) for stage in ("screening", "baselines", "confirmation")}
            wall = statistics.median(r["wall_seconds"] for r in runs)
            answers = "; ".join(f"{r['answer']} [{r['tree']}] {r['test']['mean']:+.2f}" if r["test"] else r["answer"] for r in runs)
            rows.append(
                f"| {name} | {strategy} | {mean:+.2f} ± {std:.2f} (SE {se:.2f}) | {cost['screening']:.1f} | {cost['baselines']:.1f} | "
                f"{cost['confirmation']:.1f} | {wall:.0f} | {answers} |"
            )
    lines = [
        SEARCHES,
        "",
        (f"The `supernet` strategy against `full` ({args.trials} screening trials each, the same confirmation stage), "
        f"{args.seeds} search seeds each; the two strategies of a seed ran one after the other. Test Δm: the confirmed answer "
        "over its confirmation seeds, against the single-task networks' confirmation runs (`automtl export`), mean ± std over "
        "search seeds. Costs: medians over seeds, training-run equivalents."),
        "",
        f"- command: `python benchmarks/supernet.py --searches --seeds {args.seeds} --trials {args.trials}{' --only ' + args.only if args.only else ''} --write`",
        f"- machine: {machine()}; load average {os.getloadavg()[0]:.1f}",
        f"- date: {datetime.date.today().isoformat()}; this invocation {time.perf_counter() - started:.0f} s",
        "- STAR: `search_spaces/star.yaml` with 5 epochs.",
        "",
        "| search | strategy | confirmed answer, test Δm | screening (TRE) | baselines (TRE) | confirmation (TRE) | wall (s) | answers (test Δm) |",
        "|---|---|---|---:|---:|---:|---:|---|",
        *rows,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranking", action="store_true")
    parser.add_argument("--searches", action="store_true")
    parser.add_argument("--table", default=str(TABLE))
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(0)
    RUNS.mkdir(parents=True, exist_ok=True)
    for wanted, run in ((args.ranking, ranking), (args.searches, searches)):
        if wanted:
            text = run(args)
            print(text)
            if args.write:
                write_section(text)


if __name__ == "__main__":
    main()
