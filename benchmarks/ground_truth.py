"""Ground truth on a small space: every tree trained, then searches simulated over the table.

Space: 4 STAR tasks (default ``readk, mathk, read3, math3``: reading and math in kindergarten
and in grade 3) on an ``mlp`` backbone with 3 blocks, so branching points 0, 1, 2 (3 = shared up
to the heads); equal weighting, a fixed learning rate, a few epochs. STAR has no task-selection
option, so this file holds the data-set factory :func:`star_subset` that the config names as
``benchmarks.ground_truth:star_subset``.

1. Enumerate every :class:`~automtl.tree.BranchTree` (per block a partition of the tasks, each
   refining the one before) and check that each is reachable by the search space's encoding
   (``SearchSpace`` with ``max_groups`` 4 and every split point), counting for each tree the
   share of all encodings that give it (the chance that one random-search trial draws it).
2. Train every tree with the same budget over ``--seeds`` seeds (:func:`automtl.fixed.train_fixed`)
   and record its validation Δm (%) against the cached single-task baseline (positive is
   better), cached in ``runs/benchmarks/ground_truth.json`` so that a rerun resumes.
3. Simulate searches over the table: Optuna with automtl's TPE settings
   (``automtl.search._make_sampler``) and with random search, sampling through
   ``SearchSpace.sample(trial)`` and returning the tabled mean Δm of the sampled tree, for
   ``--sim-seeds`` seeds of ``--sim-trials`` trials each; report the number of trials needed to
   reach a tree within each ``--tolerance`` (Δm points) of the best (median and quartiles over
   seeds), the rank of the best tree found after 10, 25 and 50 trials, and how many distinct
   trees a search samples (TPE re-samples trees it has already seen).

    python benchmarks/ground_truth.py [--epochs 4] [--hidden 64 32 16] [--lr 3e-4] [--seeds 2] [--write]
    python benchmarks/ground_truth.py --time-only 4     # train 4 trees and print their times
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna

from automtl.balance import create_balancer
from automtl.build import build_model
from automtl.config import SearchConfig, parse_config
from automtl.data import MultiTaskData, Split, load_dataset
from automtl.experiment import Experiment, prepare
from automtl.fixed import default_train_config, single_task_baseline
from automtl.metrics import DELTA_M_CONVENTION, delta_m
from automtl.search import _make_sampler
from automtl.space import SearchSpace
from automtl.train import evaluate, fit, seed_everything
from automtl.tree import BranchTree
from benchmarks.affinity_common import spearman
from benchmarks.results_md import ROOT, machine, write_section
from benchmarks.search_common import quartiles, with_search

HEADING = "## Ground truth on a small space"
TASKS: tuple[str, ...] = ("readk", "mathk", "read3", "math3")
RUNS = ROOT / "runs" / "benchmarks"
CACHE = RUNS / "ground_truth.json"
SAMPLERS = ("tpe", "random")


# ----------------------------------------------------------------------------- data and config
def _keep_tasks(split: Split, tasks: Sequence[str]) -> Split:
    return Split(
        split.x, {t: split.y[t] for t in tasks}, {t: split.mask[t] for t in tasks}
    )


def star_subset(tasks: Sequence[str] = TASKS, **star_options: Any) -> MultiTaskData:
    """The ``star`` data set restricted to ``tasks`` (same students, features and splits).

    Raises:
        ValueError: A task is not one of STAR's eight.
    """
    data = load_dataset("star", star_options)
    unknown = [t for t in tasks if t not in data.task_names]
    if unknown:
        raise ValueError(f"star has no tasks {unknown}; it has {data.task_names}")
    return MultiTaskData(
        name="star_subset",
        tasks=[data.task(t) for t in tasks],
        train=_keep_tasks(data.train, tasks),
        val=_keep_tasks(data.val, tasks),
        test=_keep_tasks(data.test, tasks),
        input_shape=data.input_shape,
        info={**data.info, "tasks_kept": list(tasks)},
    )


def make_config(
    tasks: Sequence[str], hidden: Sequence[int], epochs: int, lr: float
) -> SearchConfig:
    """4-task STAR, ``mlp`` with ``len(hidden)`` blocks, equal weighting, every split point, up to 4 groups."""
    return parse_config(
        {
            "name": "ground_truth",
            "data": {
                "name": "benchmarks.ground_truth:star_subset",
                "options": {"tasks": list(tasks), "seed": 0},
            },
            "backbone": {"name": "mlp", "options": {"hidden": list(hidden)}},
            "space": {"max_groups": len(tasks), "balancers": ["equal"]},
            "train": {
                "epochs": epochs,
                "batch_size": 128,
                "lr": lr,
                "weight_decay": 1.0e-4,
            },
            "search": {"objective": "delta_m"},
            "device": "cpu",
        },
        trust_code=True,  # the data set is this file's own star_subset, by import path
    )


# ----------------------------------------------------------------------------- the trees
def set_partitions(items: Sequence[str]) -> Iterator[list[list[str]]]:
    """Every partition of ``items`` into non-empty parts (Bell(n) of them)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in set_partitions(rest):
        yield [[first], *partition]
        for i in range(len(partition)):
            yield [*partition[:i], [first, *partition[i]], *partition[i + 1 :]]


def _refines(fine: Sequence[Sequence[str]], coarse: Sequence[Sequence[str]]) -> bool:
    return all(any(set(f) <= set(c) for c in coarse) for f in fine)


def all_trees(tasks: Sequence[str], n_blocks: int) -> list[BranchTree]:
    """Every tree: chains of ``n_blocks`` partitions, each refining the one before."""
    partitions = list(set_partitions(list(tasks)))
    chains: list[list[list[list[str]]]] = [[p] for p in partitions]
    for _ in range(n_blocks - 1):
        chains = [[*c, p] for c in chains for p in partitions if _refines(p, c[-1])]
    return sorted({BranchTree(tasks, c) for c in chains}, key=BranchTree.compact)


def encoding_shares(space: SearchSpace) -> dict[BranchTree, float]:
    """For each tree the encoding reaches, the share of all encodings that give it.

    The encoding draws each task's group (``G`` values), each group's split point and each task's
    split point. Group labels are interchangeable, so each set partition of the tasks into ``k``
    groups stands for ``G!/(G-k)!`` labelings, and the split points of the ``G - k`` unused groups
    are free. Under random search (each parameter uniform) the share is the chance of one trial.
    """
    tasks, n_groups = space.tasks, space.max_groups
    gp, tp = space.group_points, space.task_points
    counts: dict[BranchTree, int] = {}
    for grouping in set_partitions(tasks):
        k = len(grouping)
        group_of = {t: g for g, part in enumerate(grouping) for t in part}
        weight = math.perm(n_groups, k) * len(gp) ** (n_groups - k)
        for group_split in itertools.product(gp, repeat=k):
            for task_split in itertools.product(tp, repeat=len(tasks)):
                tree = BranchTree.from_branch_points(
                    tasks,
                    space.n_blocks,
                    group_of,
                    dict(enumerate(group_split)),
                    dict(zip(tasks, task_split)),
                )
                counts[tree] = counts.get(tree, 0) + weight
    total = n_groups ** len(tasks) * len(gp) ** n_groups * len(tp) ** len(tasks)
    assert sum(counts.values()) == total, "encoding count does not add up"
    return {tree: c / total for tree, c in counts.items()}


# ----------------------------------------------------------------------------- training
def load_cache(settings: dict[str, Any]) -> dict[str, Any]:
    """The cached table if it was made with the same ``settings``; a fresh one otherwise.

    Raises:
        SystemExit: The cache exists with other settings (move it away to start again).
    """
    if not CACHE.is_file():
        return {"settings": settings, "trees": {}, "baseline_seconds": 0.0}
    cache = json.loads(CACHE.read_text())
    cache["settings"].pop(
        "seeds", None
    )  # seeds are added per tree; older caches recorded them here
    if cache["settings"] != settings:
        raise SystemExit(
            f"{CACHE} was made with {cache['settings']}, not {settings}; move it away to start again"
        )
    return cache


def save_cache(cache: dict[str, Any]) -> None:
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    CACHE.write_text(json.dumps(cache, indent=2))


def train_seed(
    experiment: Experiment,
    tree: BranchTree,
    seed: int,
    baseline: dict[str, dict[str, float]],
) -> tuple[float, float, int]:
    """Validation and test Δm of ``tree`` trained with ``seed`` (what :func:`automtl.fixed.train_fixed`
    does for each of its seeds: equal weighting, the config's default training), and its parameter count."""
    data = experiment.data
    seed_everything(seed)
    net = build_model(tree, experiment.backbone, data.tasks, "cpu")
    fit(
        net,
        data,
        create_balancer("equal", data.task_names),
        default_train_config(experiment.config, seed),
    )
    val, test = (
        evaluate(net, data.val, data.tasks),
        evaluate(net, data.test, data.tasks),
    )
    return (
        delta_m(val, baseline["val"], data.tasks),
        delta_m(test, baseline["test"], data.tasks),
        net.num_parameters(),
    )


def train_tree(
    experiment: Experiment,
    tree: BranchTree,
    seeds: int,
    baseline: dict[str, dict[str, float]],
    row: dict[str, Any],
) -> dict[str, Any]:
    """``row`` (per-seed validation and test Δm of ``tree``) completed to ``seeds`` seeds."""
    row = {"val_delta_m": [], "test_delta_m": [], "n_params": 0, "seconds": 0.0, **row}
    for seed in range(len(row["val_delta_m"]), seeds):
        start = time.perf_counter()
        val, test, row["n_params"] = train_seed(experiment, tree, seed, baseline)
        row["val_delta_m"].append(val)
        row["test_delta_m"].append(test)
        row["seconds"] += time.perf_counter() - start
    return row


def train_all(
    experiment: Experiment,
    trees: Sequence[BranchTree],
    seeds: int,
    cache: dict[str, Any],
    save: bool = True,
) -> None:
    """Train every tree not yet in ``cache``, saving the cache after each (when ``save``)."""
    start = time.perf_counter()
    baseline = single_task_baseline(
        experiment, RUNS / "ground_truth_baselines", ("val", "test"), "cpu"
    )
    cache["baseline_seconds"] = cache["baseline_seconds"] or time.perf_counter() - start
    todo = [
        t
        for t in trees
        if len(cache["trees"].get(t.compact(), {}).get("val_delta_m", [])) < seeds
    ]
    for i, tree in enumerate(todo):
        row = train_tree(
            experiment, tree, seeds, baseline, cache["trees"].get(tree.compact(), {})
        )
        cache["trees"][tree.compact()] = row
        if save:
            save_cache(cache)
        print(
            f"[{i + 1}/{len(todo)}] {tree.compact():<28} val Δm {statistics.fmean(row['val_delta_m']):+.2f} "
            f"(seeds {', '.join(f'{v:+.2f}' for v in row['val_delta_m'])}) {row['seconds']:.1f} s",
            flush=True,
        )


# ----------------------------------------------------------------------------- simulated searches
def sampled_trees(
    sampler_name: str,
    seed: int,
    space: SearchSpace,
    config: SearchConfig,
    table: dict[BranchTree, float],
    n_trials: int,
) -> list[str]:
    """The trees (compact form) that one Optuna search samples in ``n_trials`` trials, each
    trial returning the tabled Δm of its tree; the sampler is automtl's (``_make_sampler``)."""
    sampler = _make_sampler(with_search(config, sampler=sampler_name, seed=seed), seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    seen: list[str] = []

    def objective(trial: optuna.Trial) -> float:
        tree = space.sample(trial).tree
        seen.append(tree.compact())
        return table[tree]

    study.optimize(objective, n_trials=n_trials)
    return seen


def simulate(
    space: SearchSpace,
    config: SearchConfig,
    table: dict[BranchTree, float],
    seeds: int,
    n_trials: int,
) -> dict[str, list[list[str]]]:
    """Sampled trees of ``seeds`` searches per sampler."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return {
        s: [
            sampled_trees(s, seed, space, config, table, n_trials)
            for seed in range(seeds)
        ]
        for s in SAMPLERS
    }


def first_reaching(
    run: Sequence[str], values: dict[str, float], target: float
) -> float:
    """1-based trial at which ``run`` first samples a tree with value >= ``target``; inf if never."""
    return next((i + 1 for i, key in enumerate(run) if values[key] >= target), math.inf)


def geometric_quartiles(p: float) -> tuple[int, int, int]:
    """Quartiles of the trials random search needs when each trial succeeds with chance ``p``."""
    q1, q2, q3 = (
        math.ceil(math.log(1 - q) / math.log(1 - p)) for q in (0.25, 0.5, 0.75)
    )
    return q1, q2, q3


# ----------------------------------------------------------------------------- report
def mean_table(cache: dict[str, Any], seeds: int) -> dict[str, float]:
    """Each tree's mean validation Δm over its first ``seeds`` seeds."""
    return {
        k: statistics.fmean(v["val_delta_m"][:seeds]) for k, v in cache["trees"].items()
    }


def noise(rows: Sequence[Sequence[float]]) -> dict[str, float]:
    """How far the table is from noise: each tree's standard deviation over seeds (median over
    trees), and the split-half reliability of the trees' ranking: the Spearman correlation of
    the mean over even seeds with the mean over odd seeds, and its Spearman-Brown step-up to
    all seeds, ``2r / (1 + r)`` (1: the ranking would repeat; 0: it is noise)."""
    even = np.array([statistics.fmean(v[0::2]) for v in rows])
    odd = np.array([statistics.fmean(v[1::2]) for v in rows])
    r = spearman(even, odd)
    return {
        "median_seed_std": statistics.median(statistics.stdev(v) for v in rows),
        "split_half": r,
        "reliability": 2 * r / (1 + r) if r > -1 else float("nan"),
    }


def describe(tree: BranchTree) -> str:
    """Per block, the parts by task name, e.g. ``readk+mathk / read3+math3``."""
    return " \\| ".join(
        " / ".join("+".join(part) for part in partition)
        for partition in tree.partitions
    )


def best_rows(
    tasks: Sequence[str],
    trees: dict[str, BranchTree],
    cache: dict[str, Any],
    shares: dict[BranchTree, float],
    n: int,
) -> list[str]:
    rows = sorted(
        cache["trees"].items(), key=lambda kv: -statistics.fmean(kv[1]["val_delta_m"])
    )
    lines = [
        "| rank | tree (block 0 \\| block 1 \\| block 2) | val Δm (%), mean of seeds | per seed | test Δm (%), mean | params | P(one random trial draws it) |",
        "|---:|---|---:|---|---:|---:|---:|",
    ]
    n_blocks = next(iter(trees.values())).n_blocks
    named = {
        "hard sharing": BranchTree.hard_sharing(tasks, n_blocks).compact(),
        "single-task": BranchTree.single_task(tasks, n_blocks).compact(),
    }
    rank = {k: i + 1 for i, (k, _) in enumerate(rows)}
    shown = [k for k, _ in rows[:n]] + [c for c in named.values() if rank.get(c, 0) > n]
    for key in shown:
        row, tree = cache["trees"][key], trees[key]
        label = next((f" ({name})" for name, c in named.items() if c == key), "")
        lines.append(
            f"| {rank[key]} | {describe(tree)}{label} | {statistics.fmean(row['val_delta_m']):+.2f} | "
            f"{', '.join(f'{v:+.2f}' for v in row['val_delta_m'])} | {statistics.fmean(row['test_delta_m']):+.2f} | "
            f"{row['n_params']:,} | {shares[tree]:.4f} |"
        )
    return lines


def _q(values: Sequence[float]) -> str:
    q1, q2, q3 = quartiles(sorted(values))
    return f"{q2:g} [{q1:g}, {q3:g}]"


def sim_rows(
    runs: dict[str, list[list[str]]],
    values: dict[str, float],
    tolerances: Sequence[float],
    p_random: dict[float, float],
) -> list[str]:
    best = max(values.values())
    n_trials = len(next(iter(runs.values()))[0])
    ranks = {k: i + 1 for i, k in enumerate(sorted(values, key=lambda k: -values[k]))}
    head = " | ".join(f"trials to within {t} of best" for t in tolerances)
    lines = [
        f"| sampler | {head} | rank of best tree found after 10 / 25 / 50 trials | distinct trees in 50 trials |",
        "|---|" + "---:|" * len(tolerances) + "---|---:|",
    ]
    for sampler, sampler_runs in runs.items():
        cells = []
        for tol in tolerances:
            found = [first_reaching(run, values, best - tol) for run in sampler_runs]
            missed = sum(math.isinf(f) for f in found)
            cells.append(
                _q(found)
                + (
                    f" ({missed} of {len(found)} never, in {n_trials})"
                    if missed
                    else ""
                )
            )
        best_rank = [
            statistics.median(min(ranks[k] for k in run[:n]) for run in sampler_runs)
            for n in (10, 25, 50)
        ]
        distinct = statistics.median(len(set(run[:50])) for run in sampler_runs)
        lines.append(
            f"| {sampler} | {' | '.join(cells)} | {' / '.join(f'{r:g}' for r in best_rank)} | {distinct:g} |"
        )
    exact = []
    for tol in tolerances:
        g1, g2, g3 = geometric_quartiles(p_random[tol])
        exact.append(f"{g2} [{g1}, {g3}] (p = {p_random[tol]:.4f})")
    lines.append(f"| random, exact (geometric) | {' | '.join(exact)} | | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs=4, default=list(TASKS), help="four STAR tasks")
    parser.add_argument(
        "--hidden",
        type=int,
        nargs=3,
        default=[64, 32, 16],
        help="MLP widths (3 blocks)",
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per tree")
    parser.add_argument(
        "--sim-seeds", type=int, default=50, help="simulated searches per sampler"
    )
    parser.add_argument(
        "--sim-trials", type=int, default=200, help="trials of one simulated search"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        nargs="+",
        default=[0.5, 2.0],
        help="Δm points from the best that count as reached",
    )
    parser.add_argument(
        "--time-only",
        type=int,
        metavar="N",
        help="train N trees, print their times, stop",
    )
    parser.add_argument(
        "--reading",
        type=Path,
        help="a text file with the reading to put under the tables",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help="write the section into benchmarks/RESULTS.md",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    tasks = tuple(args.tasks)
    start = time.perf_counter()
    config = make_config(tasks, args.hidden, args.epochs, args.lr)
    experiment = prepare(config)
    space = SearchSpace(
        config, experiment.data.task_names, experiment.backbone.n_blocks
    )
    trees = all_trees(tasks, experiment.backbone.n_blocks)
    shares = encoding_shares(space)
    unreachable = [t for t in trees if t not in shares]
    print(
        f"{len(trees)} trees; {len(trees) - len(unreachable)} reachable by the encoding; {len(unreachable)} not"
    )
    settings = {
        "tasks": list(tasks),
        "hidden": args.hidden,
        "epochs": args.epochs,
        "lr": args.lr,
    }
    if args.time_only:
        sample = [
            trees[i] for i in range(0, len(trees), max(1, len(trees) // args.time_only))
        ][: args.time_only]
        scratch = {"settings": settings, "trees": {}, "baseline_seconds": 0.0}
        train_all(experiment, sample, args.seeds, scratch, save=False)
        return
    cache = load_cache(settings)
    train_all(experiment, trees, args.seeds, cache)
    by_key = {t.compact(): t for t in trees}
    values = mean_table(cache, args.seeds)
    table = {by_key[k]: v for k, v in values.items()}
    best = max(values.values())
    sim_start = time.perf_counter()
    runs = simulate(space, config, table, args.sim_seeds, args.sim_trials)
    rows = [r["val_delta_m"][: args.seeds] for r in cache["trees"].values()]
    facts = {
        "n_trees": len(trees),
        "unreachable": [t.compact() for t in unreachable],
        "best": best,
        "n_good": {
            tol: sum(v >= best - tol for v in values.values()) for tol in args.tolerance
        },
        "p_random": {
            tol: sum(shares[t] for t, v in table.items() if v >= best - tol)
            for tol in args.tolerance
        },
        "p_single_task": shares[
            BranchTree.single_task(tasks, experiment.backbone.n_blocks)
        ],
        **noise(rows),
        "train_seconds": sum(r["seconds"] for r in cache["trees"].values())
        + cache["baseline_seconds"],
        "sim_seconds": time.perf_counter() - sim_start,
    }
    (RUNS / "ground_truth_sim.json").write_text(
        json.dumps({**facts, "runs": runs}, indent=1)
    )
    command = "python benchmarks/ground_truth.py " + " ".join(sys.argv[1:])
    reading = args.reading.read_text() if args.reading else "Reading: (not yet written)"
    text = report(
        args,
        facts,
        by_key,
        cache,
        shares,
        runs,
        values,
        command.strip(),
        time.perf_counter() - start,
        reading,
    )
    print(text)
    if args.write:
        write_section(text)


def report(
    args: argparse.Namespace,
    facts: dict[str, Any],
    trees: dict[str, BranchTree],
    cache: dict[str, Any],
    shares: dict[BranchTree, float],
    runs: dict[str, list[list[str]]],
    values: dict[str, float],
    command: str,
    seconds: float,
    reading: str,
) -> str:
    n_trees = facts["n_trees"]
    good = "; ".join(
        f"within {tol}: **{facts['n_good'][tol]} of {n_trees}** trees, chance per random trial {facts['p_random'][tol]:.4f}"
        for tol in args.tolerance
    )
    lines = [
        HEADING,
        "",
        (
            f"Four STAR tasks ({', '.join(args.tasks)}; regression, R² on validation) on an `mlp` with 3 blocks "
            f"(widths {'-'.join(map(str, args.hidden))}, smaller than the default 256-128-64 to fit the time budget): "
            "branching points 0, 1, 2, and 3 = shared up to the heads. "
            f"Equal weighting, AdamW lr {args.lr:g}, batch 128, {args.epochs} epochs, every tree trained with "
            f"{args.seeds} seeds (0..{args.seeds - 1}); its value is the mean over seeds of its validation Δm against "
            "the single-task networks (seed 0, same training). STAR has no task-selection option; the benchmark's own "
            "factory `benchmarks.ground_truth:star_subset` keeps four of its eight tasks."
        ),
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}",
        (
            f"- date: {datetime.date.today().isoformat()}; run time: training {facts['train_seconds']:.0f} s "
            f"(summed over resumed runs), simulated searches {facts['sim_seconds']:.0f} s, this invocation {seconds:.0f} s"
        ),
        f"- Δm: {DELTA_M_CONVENTION}; higher is better.",
        f"- trees: **{n_trees}** (per block a partition of the 4 tasks, each refining the one before); "
        f"reachable by the search space's encoding (`SearchSpace`, max_groups 4, every split point): "
        f"{n_trees - len(facts['unreachable'])} of {n_trees}"
        + (
            f"; not reachable: {', '.join(facts['unreachable'])}"
            if facts["unreachable"]
            else ""
        )
        + f". The encoding is far from uniform over trees: one random trial draws the single-task tree with "
        f"chance {facts['p_single_task']:.3f}, hard sharing with {shares[trees[BranchTree.hard_sharing(args.tasks, 3).compact()]]:.4f}.",
        f"- best tree: val Δm {facts['best']:+.2f}%; {good} (the random-search base rate).",
        (
            f"- noise: a tree's standard deviation of Δm over seeds, median over trees: {facts['median_seed_std']:.2f} "
            f"points (so its mean over {args.seeds} seeds is uncertain by about "
            f"{facts['median_seed_std'] / math.sqrt(args.seeds):.2f}); split-half reliability of the ranking of trees: "
            f"Spearman {facts['split_half']:.2f} between the means over even and over odd seeds, "
            f"{facts['reliability']:.2f} stepped up to all {args.seeds} seeds (1 = the ranking would repeat, 0 = noise)."
        ),
        "",
        "The best trees on validation (test Δm only for reference; nothing was selected on it):",
        "",
        *best_rows(args.tasks, trees, cache, shares, 10),
        "",
        (
            f"Simulated searches over the table, {args.sim_seeds} seeds per sampler, {args.sim_trials} trials each: Optuna "
            "with automtl's sampler settings (`automtl.search._make_sampler`: TPE multivariate, grouped, 5 start-up "
            "trials; or random), sampling through `SearchSpace.sample`, each trial returning its tree's tabled mean Δm. "
            "Trials until a search first samples a tree within the tolerance of the best: median [Q1, Q3] over seeds "
            "(inf: not within the trials run); the rank of the best tree found so far (1 = best; median over seeds):"
        ),
        "",
        *sim_rows(runs, values, args.tolerance, facts["p_random"]),
        "",
        reading.strip(),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
