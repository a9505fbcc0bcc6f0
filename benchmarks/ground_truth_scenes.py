"""Ground truth on the scenes space: every tree trained alone over several seeds.

The space (:data:`GT_RAW`): Fashion-MNIST scenes (``fashion_scenes``: 3,000 training, 1,000
validation and 2,000 test mosaics, 20 % of the training labels hidden), four tasks
(``has_tshirt``, ``has_shirt``, ``has_sneaker``: presence, accuracy; ``count``: number of items,
regression, R²), a ``small_cnn`` with 3 blocks (channels 8, 16; hidden 32), equal weighting,
AdamW at a fixed learning rate (3e-3), batch 64, 3 epochs. Every tree of the space (per block a
partition of the 4 tasks, each refining the one before: 154 trees) is trained with seeds
``0 .. S-1`` (:func:`automtl.train.seed_everything` of the seed, and the same seed for the data
order), and its validation and test metrics are stored per seed.

A tree's value on seed ``s`` is its validation Δm against the single-task tree *of the same
seed* (paired), and its ground-truth value is the mean over seeds. The reliability of this
truth is the split-half reliability of the ranking of trees: the Spearman correlation between
the means over even and over odd seeds, stepped up to all seeds by Spearman-Brown,
``2r / (1 + r)``.

Commands:

    python benchmarks/ground_truth_scenes.py table --seeds 0 1 2 3   # train (resumable, per seed)
    python benchmarks/ground_truth_scenes.py merge                   # -> benchmarks/data/ground_truth_scenes.json
    python benchmarks/ground_truth_scenes.py report [--write]        # reliability, sampler simulation, real searches

Several ``table`` processes may run at once on different seeds (each writes its own file under
``runs/benchmarks/ground_truth_scenes/``); each uses one torch thread.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from automtl.balance import create_balancer
from automtl.build import build_model
from automtl.config import SearchConfig, parse_config
from automtl.experiment import Experiment, prepare
from automtl.fixed import default_train_config
from automtl.metrics import delta_m
from automtl.screening import MAX_ANSWERED_STREAK, MAX_SCREEN_RUNS
from automtl.search import _make_sampler
from automtl.space import SearchSpace
from automtl.train import evaluate, fit, seed_everything
from automtl.tree import BranchTree

TABLE = ROOT / "benchmarks" / "data" / "ground_truth_scenes.json"
PARTS = ROOT / "runs" / "benchmarks" / "ground_truth_scenes"

GT_RAW: dict[str, Any] = {
    "name": "ground_truth_scenes",
    "data": {
        "name": "fashion_scenes",
        "options": {
            "n_train": 3000, "n_val": 1000, "n_test": 2000, "missing_label_fraction": 0.2, "seed": 0,
            "tasks": ["has_tshirt", "has_shirt", "has_sneaker", "count"],
        },
    },
    "backbone": {"name": "small_cnn", "options": {"channels": [8, 16], "hidden": 32}},
    "space": {"max_groups": 4, "balancers": ["equal"]},
    "train": {"epochs": 3, "batch_size": 64, "lr": 3.0e-3, "weight_decay": 1.0e-4},
    "device": "cpu",
}  # fmt: skip


def gt_config() -> SearchConfig:
    return parse_config(GT_RAW)


def all_trees(tasks: Sequence[str], n_blocks: int) -> list[BranchTree]:
    """Every tree of the space (delegates to the STAR ground truth's enumeration)."""
    from benchmarks.ground_truth import all_trees as enumerate_trees

    return enumerate_trees(tasks, n_blocks)


# ------------------------------------------------------------------------------------ training
def train_one(experiment: Experiment, tree: BranchTree, seed: int) -> dict[str, Any]:
    """Validation and test metrics of ``tree`` trained alone with ``seed``, its parameters and seconds."""
    data = experiment.data
    start = time.perf_counter()
    seed_everything(seed)
    net = build_model(tree, experiment.backbone, data.tasks, "cpu")
    fit(
        net,
        data,
        create_balancer("equal", data.task_names),
        default_train_config(experiment.config, seed),
    )
    return {
        "val": evaluate(net, data.val, data.tasks),
        "test": evaluate(net, data.test, data.tasks),
        "n_params": net.num_parameters(),
        "seconds": time.perf_counter() - start,
    }


def train_seed(seed: int) -> None:
    """Train every tree with ``seed`` not yet in this seed's part file (saved after each tree)."""
    experiment = prepare(gt_config())
    data = experiment.data
    path = PARTS / f"seed{seed}.json"
    part: dict[str, Any] = (
        json.loads(path.read_text()) if path.is_file() else {"seed": seed, "trees": {}}
    )
    trees = all_trees(data.task_names, experiment.backbone.n_blocks)
    # the single-task and hard-sharing trees first: a partial table is already usable
    trees.sort(
        key=lambda t: (
            t != BranchTree.single_task(t.tasks, t.n_blocks),
            not t.is_hard_sharing(),
        )
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    for i, tree in enumerate(trees):
        key = tree.compact()
        if key in part["trees"]:
            continue
        part["trees"][key] = {
            "partitions": tree.to_dict()["partitions"],
            **train_one(experiment, tree, seed),
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(part))
        tmp.replace(path)
        print(
            f"seed {seed} [{i + 1}/{len(trees)}] {key:<40} {part['trees'][key]['seconds']:.1f} s",
            flush=True,
        )


def merge() -> dict[str, Any]:
    """Assemble the per-seed parts into :data:`TABLE` (only trees present for every seed)."""
    parts = [json.loads(p.read_text()) for p in sorted(PARTS.glob("seed*.json"))]
    if not parts:
        raise SystemExit(f"no part files in {PARTS}; run the table command first")
    n_trees = max(len(p["trees"]) for p in parts)
    unfinished = [p["seed"] for p in parts if len(p["trees"]) < n_trees]
    if unfinished:
        print(f"left out, not finished: seed(s) {unfinished}")
    parts = [p for p in parts if len(p["trees"]) == n_trees]
    keys = set.intersection(*(set(p["trees"]) for p in parts))
    trees: dict[str, Any] = {}
    for key in sorted(keys):
        first = parts[0]["trees"][key]
        trees[key] = {
            "partitions": first["partitions"],
            "n_params": first["n_params"],
            "runs": {
                str(p["seed"]): {
                    k: p["trees"][key][k] for k in ("val", "test", "seconds")
                }
                for p in parts
            },
        }
    table = {
        "settings": GT_RAW,
        "seeds": sorted(p["seed"] for p in parts),
        "trees": trees,
    }
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text(json.dumps(table, indent=1))
    print(f"{TABLE}: {len(trees)} trees x {len(parts)} seeds")
    return table


# ------------------------------------------------------------------------------------ the truth
def per_seed_delta_m(
    table: dict[str, Any], split: str = "val"
) -> dict[str, list[float]]:
    """Each tree's Δm (%) per seed, against the single-task tree of the same seed."""
    tasks = prepare(gt_config()).data.tasks
    trees = {
        k: BranchTree(GT_RAW["data"]["options"]["tasks"], r["partitions"])
        for k, r in table["trees"].items()
    }
    single = next(
        k for k, t in trees.items() if t == BranchTree.single_task(t.tasks, t.n_blocks)
    )
    seeds = [str(s) for s in table["seeds"]]
    return {
        key: [
            delta_m(
                row["runs"][s][split], table["trees"][single]["runs"][s][split], tasks
            )
            for s in seeds
        ]
        for key, row in table["trees"].items()
    }


def reliability(per_seed: dict[str, list[float]]) -> tuple[float, float]:
    """Split-half Spearman between the means over even and odd seeds, and its Spearman-Brown step-up."""
    from scipy.stats import spearmanr

    keys = list(per_seed)
    even = [statistics.fmean(per_seed[k][0::2]) for k in keys]
    odd = [statistics.fmean(per_seed[k][1::2]) for k in keys]
    r = float(spearmanr(even, odd).statistic)
    return r, 2 * r / (1 + r)


def _md(key: str) -> str:
    """A tree's compact form inside a markdown table cell (its block separators escaped)."""
    return key.replace(" | ", " \\| ")


def _median_reliability(per_seed: dict[str, list[float]]) -> float:
    from scipy.stats import spearmanr

    keys = list(per_seed)
    r = float(spearmanr([statistics.median(per_seed[k][0::2]) for k in keys], [statistics.median(per_seed[k][1::2]) for k in keys]).statistic)
    return 2 * r / (1 + r)


def typical_se(per_seed: dict[str, list[float]]) -> float:
    """The standard error of a tree's mean Δm, median over trees: the tolerance "within one
    standard error of the best". (The best tree's own standard error would not do: the
    single-task tree is the paired reference, so its Δm is 0 on every seed.)"""
    return statistics.median(_sem(v) for v in per_seed.values())


def _sem(values: Sequence[float]) -> float:
    return (
        statistics.stdev(values) / math.sqrt(len(values))
        if len(values) > 1
        else math.nan
    )


def truth_lines(table: dict[str, Any]) -> list[str]:
    val = per_seed_delta_m(table, "val")
    test = per_seed_delta_m(table, "test")
    r, rel = reliability(val)
    means = {k: statistics.fmean(v) for k, v in val.items()}
    order = sorted(means, key=lambda k: -means[k])
    best = order[0]
    tasks = GT_RAW["data"]["options"]["tasks"]
    n_blocks = len(next(iter(table["trees"].values()))["partitions"])
    named = {
        BranchTree.single_task(tasks, n_blocks).compact(): "single-task networks",
        BranchTree.hard_sharing(tasks, n_blocks).compact(): "hard sharing",
    }
    seconds = sum(
        run["seconds"]
        for row in table["trees"].values()
        for run in row["runs"].values()
    )
    lines = [
        f"- trees: {len(val)}; seeds per tree: {len(table['seeds'])}; training time summed over all: {seconds / 60:.0f} min (1 thread).",
        (
            f"- split-half reliability of the ranking of trees: Spearman {r:.2f} between even- and odd-seed means, "
            f"**{rel:.2f}** stepped up to all {len(table['seeds'])} seeds (goal ≥ 0.8)."
        ),
        f"- a tree's seed standard deviation of val Δm, median over trees: {statistics.median(statistics.stdev(v) for v in val.values()):.2f} points.",
        (
            f"- heavy tails: {sum(x < -5 for v in val.values() for x in v)} of {sum(len(v) for v in val.values())} runs have "
            f"val Δm below −5 % (the median run: {statistics.median(x for v in val.values() for x in v):+.2f}), mostly one "
            f"task's head failing in that run (lowest per task over all runs: "
            + ", ".join(
                f"{task} {min(run['val'][task] for row in table['trees'].values() for run in row['runs'].values()):.2f}"
                for task in GT_RAW["data"]["options"]["tasks"]
            )
            + "). Diagnostic only, not the truth's definition: with each tree's median over seeds instead of its mean, "
            f"the split-half reliability would be {_median_reliability(val):.2f}."
        ),
        (
            f"- best tree: {best} at {means[best]:+.2f}; the standard error of a tree's mean, median over trees: "
            f"{typical_se(val):.2f}; trees within one standard error of the best: "
            f"{sum(means[k] >= means[best] - typical_se(val) for k in means)}."
        ),
        "",
        "| rank | tree (blocks separated by \\|) | val Δm (%) mean ± s.e. | test Δm (%) mean | params |",
        "|---:|---|---:|---:|---:|",
    ]
    shown = order[:8] + [k for k in named if k not in order[:8]]
    for key in shown:
        label = f" ({named[key]})" if key in named else ""
        lines.append(
            f"| {order.index(key) + 1} | {_md(key)}{label} | {means[key]:+.2f} ± {_sem(val[key]):.2f} | "
            f"{statistics.fmean(test[key]):+.2f} | {table['trees'][key]['n_params']:,} |"
        )
    return lines


# ------------------------------------------------------------------------------------ simulated searches
#: The samplers compared: automtl's setting (``automtl.search._make_sampler``), random search,
#: and TPE variants (more start-up trials; Optuna's default, independent TPE). (``consider_endpoints``
#: and ``prior_weight`` are deprecated in Optuna 4.9 and not tried.)
SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe (automtl: multivariate, group, 5 start-up)": lambda seed: _make_sampler(
        gt_config(), seed
    ),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "tpe, 10 start-up": lambda seed: _tpe(seed, n_startup_trials=10),
    "tpe, 20 start-up": lambda seed: _tpe(seed, n_startup_trials=20),
    "tpe, independent (default Optuna)": lambda seed: optuna.samplers.TPESampler(
        seed=seed
    ),
}


def _tpe(seed: int, **options: Any) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, **options
        )


def simulate_search(
    make: Callable[[int], optuna.samplers.BaseSampler],
    seed: int,
    per_seed: dict[str, list[float]],
    budgets: Sequence[int],
    top_k: int = 3,
) -> dict[str, Any]:
    """One search over the table, following automtl's protocol, read at several budgets.

    The obvious designs are enqueued first; a sampled tree is trained (its value: the table's
    value on a seed drawn for that run, without replacement within the tree) at most
    :data:`automtl.screening.MAX_SCREEN_RUNS` times, a further proposal is answered with the mean
    of its runs and not counted; the search stops after ``max(budgets)`` trainings or
    :data:`automtl.screening.MAX_ANSWERED_STREAK` answered proposals in a row. Confirmation at
    budget ``b`` (from the first ``b`` trainings): the ``top_k`` trees by mean screening value
    and both obvious designs (hard sharing, single-task networks), each valued by the mean over
    the table's seeds *not* used in its screening runs; the answer is the best of them.
    """
    rng = random.Random(seed)
    n_blocks = len(next(iter(per_seed)).split(" | "))
    space = SearchSpace(gt_config(), list(GT_RAW["data"]["options"]["tasks"]), n_blocks)
    study = optuna.create_study(direction="maximize", sampler=make(seed))
    obvious = [
        BranchTree.hard_sharing(space.tasks, space.n_blocks).compact(),
        BranchTree.single_task(space.tasks, space.n_blocks).compact(),
    ]
    for design in space.obvious_designs():
        study.enqueue_trial(design.params)
    runs: dict[str, list[int]] = {}
    trained: list[tuple[str, int]] = []  # (tree, table seed) in training order
    streak = 0
    n_seeds = len(next(iter(per_seed.values())))
    while len(trained) < max(budgets) and streak < MAX_ANSWERED_STREAK:
        trial = study.ask()
        key = space.sample(trial).tree.compact()
        used = runs.setdefault(key, [])
        if len(used) >= MAX_SCREEN_RUNS:
            streak += 1
            study.tell(trial, statistics.fmean(per_seed[key][s] for s in used))
            continue
        streak = 0
        s = rng.choice([i for i in range(n_seeds) if i not in used])
        used.append(s)
        trained.append((key, s))
        study.tell(trial, per_seed[key][s])

    def answer(budget: int) -> str:
        seen: dict[str, list[int]] = {}
        for key, s in trained[:budget]:
            seen.setdefault(key, []).append(s)
        screened = {k: statistics.fmean(per_seed[k][s] for s in v) for k, v in seen.items()}
        top = sorted((k for k in screened if k not in obvious), key=lambda k: -screened[k])[:top_k] + obvious

        def confirmed(key: str) -> float:
            fresh = [i for i in range(n_seeds) if i not in seen.get(key, [])] or list(range(n_seeds))
            return statistics.fmean(per_seed[key][i] for i in fresh)

        return max(top, key=confirmed)

    order = list(dict.fromkeys(k for k, _ in trained))
    return {"order": order, "trained": [k for k, _ in trained], "answers": {b: answer(b) for b in budgets}}


def simulation_lines(
    table: dict[str, Any], n_searches: int, budgets: Sequence[int]
) -> tuple[list[str], dict[str, Any]]:
    """Per sampler: the share of searches whose confirmed answer is within one standard error of
    the best tree; how many trainings it takes to train a *sampled* tree (not an obvious design)
    within that tolerance; the true value of the best sampled tree screened; distinct trees."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    per_seed = per_seed_delta_m(table, "val")
    means = {k: statistics.fmean(v) for k, v in per_seed.items()}
    best = max(means, key=lambda k: means[k])
    target = means[best] - typical_se(per_seed)
    tasks, n_blocks = GT_RAW["data"]["options"]["tasks"], len(best.split(" | "))
    obvious = {BranchTree.hard_sharing(tasks, n_blocks).compact(), BranchTree.single_task(tasks, n_blocks).compact()}
    good = {k for k, m in means.items() if m >= target}
    head = " | ".join(f"answer within 1 s.e. of best, {b} trainings" for b in budgets)
    lines = [
        (f"| sampler | {head} | trainings until a sampled tree within 1 s.e. of the best is trained: median [Q1, Q3] | "
        f"true val Δm of the best sampled tree screened in {max(budgets)} trainings: median | distinct trees in {max(budgets)} trainings |"),
        "|---|" + "---:|" * len(budgets) + "---:|---:|---:|",
    ]
    results: dict[str, Any] = {}
    for name, make in SAMPLERS.items():
        reach, distinct, best_sampled, within = [], [], [], {b: 0 for b in budgets}
        for seed in range(n_searches):
            out = simulate_search(make, seed, per_seed, budgets)
            for b in budgets:
                within[b] += out["answers"][b] in good
            reach.append(next((i + 1 for i, k in enumerate(out["trained"]) if k in good and k not in obvious), math.inf))
            distinct.append(len(out["order"]))
            best_sampled.append(max((means[k] for k in out["order"] if k not in obvious), default=math.nan))
        q = statistics.quantiles(reach, n=4, method="inclusive")
        never = sum(math.isinf(r) for r in reach)
        cells = " | ".join(f"{within[b] / n_searches:.0%}" for b in budgets)
        lines.append(
            f"| {name} | {cells} | {statistics.median(reach):g} [{q[0]:g}, {q[2]:g}]"
            + (f" ({never} of {n_searches} never)" if never else "")
            + f" | {statistics.median(best_sampled):+.2f} | {statistics.median(distinct):g} |"
        )
        results[name] = {"reach": reach, "within": within, "best_sampled": best_sampled}
        print(lines[-1], flush=True)
    return lines, results


# ------------------------------------------------------------------------------------ real searches
SEARCHES = ROOT / "runs" / "benchmarks" / "ground_truth_scenes_searches.json"


def searches_file(strategy: str) -> Path:
    """Where the real searches of ``strategy`` are cached (one file per strategy: they may run at once)."""
    return SEARCHES if strategy == "full" else SEARCHES.with_name(f"{SEARCHES.stem}_{strategy}.json")


def real_search(seed: int, n_trials: int, strategy: str) -> dict[str, Any]:
    """One ``automtl search`` of the space (confirmation on, its defaults), in a fresh SQLite study."""
    from automtl.accounting import cost_by_stage
    from automtl.confirm import Confirmation
    from automtl.search import run_search

    storage = ROOT / "runs" / "benchmarks" / "gt_searches" / f"{strategy}_s{seed}.db"
    storage.parent.mkdir(parents=True, exist_ok=True)
    storage.unlink(missing_ok=True)
    raw = {**GT_RAW, "search": {"n_trials": n_trials, "seed": seed, "strategy": strategy,
                                 "storage": f"sqlite:///{storage}", "study_name": f"gt_{strategy}_s{seed}"}}  # fmt: skip
    start = time.perf_counter()
    study = run_search(parse_config(raw), progress=False, threads=1)
    wall = time.perf_counter() - start
    conf = Confirmation.from_dict(study.user_attrs["confirmation"])
    best = conf.best
    tasks = GT_RAW["data"]["options"]["tasks"]
    tree = (
        BranchTree.from_dict(best.candidate["tree"])
        if best.candidate
        else BranchTree.single_task(tasks, 3)
    ).compact()
    return {
        "seed": seed, "strategy": strategy, "n_trials": n_trials, "answer": tree, "label": best.label,
        "confirmed_mean": best.mean, "confirmed_std": best.std, "verdict": conf.verdict, "wall_seconds": wall,
        "cost": {c.stage: {"tre": c.tre, "runs": c.runs, "seconds": c.seconds} for c in cost_by_stage(study)},
    }  # fmt: skip


def run_searches(n: int, n_trials: int, strategy: str) -> None:
    path = searches_file(strategy)
    done: list[dict[str, Any]] = (
        json.loads(path.read_text()) if path.is_file() else []
    )
    have = {(r["strategy"], r["seed"], r["n_trials"]) for r in done}
    for seed in range(n):
        if (strategy, seed, n_trials) in have:
            continue
        done.append(real_search(seed, n_trials, strategy))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(done, indent=1))
        r = done[-1]
        print(f"search {strategy} seed {seed}: {r['answer']} ({r['label']}) confirmed {r['confirmed_mean']:+.2f} "
              f"± {r['confirmed_std']:.2f}, {r['wall_seconds']:.0f} s", flush=True)  # fmt: skip


def search_lines(table: dict[str, Any]) -> list[str]:
    files = [f for f in (searches_file("full"), searches_file("supernet")) if f.is_file()]
    if not files:
        return ["(no real searches run yet)"]
    per_seed = per_seed_delta_m(table, "val")
    test = per_seed_delta_m(table, "test")
    means = {k: statistics.fmean(v) for k, v in per_seed.items()}
    order = sorted(means, key=lambda k: -means[k])
    best = order[0]
    target = means[best] - typical_se(per_seed)
    lines = [
        "| strategy | trials | search seed | answer (tree) | its rank of 154 | its true val Δm (%) | within 1 s.e. of best | true test Δm (%) | cost: screening / baselines / confirmation (training-run equivalents) | wall (s) |",
        "|---|---:|---:|---|---:|---:|---|---:|---|---:|",
    ]
    rows = [r for f in files for r in json.loads(f.read_text())]
    for r in rows:
        key = r["answer"]
        c = r["cost"]
        lines.append(
            f"| {r['strategy']} | {r['n_trials']} | {r['seed']} | {_md(key)} | {order.index(key) + 1} | {means[key]:+.2f} | "
            f"{'yes' if means[key] >= target else 'no'} | {statistics.fmean(test[key]):+.2f} | "
            f"{c['screening']['tre']:.1f} / {c['baselines']['tre']:.1f} / {c['confirmation']['tre']:.1f} | {r['wall_seconds']:.0f} |"
        )
    for strategy in sorted({r["strategy"] for r in rows}):
        mine = [r for r in rows if r["strategy"] == strategy]
        hits = sum(means[r["answer"]] >= target for r in mine)
        lines.append("")
        lines.append(
            f"- {strategy}: {hits} of {len(mine)} searches answered a tree within one standard error of the best "
            f"(goal: at least 80 %); answers' true val Δm {statistics.fmean(means[r['answer']] for r in mine):+.2f} "
            f"± {statistics.stdev(means[r['answer']] for r in mine) if len(mine) > 1 else 0:.2f} (mean ± std over search seeds)."
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    table_cmd = sub.add_parser("table", help="train every tree for the given seeds")
    table_cmd.add_argument("--seeds", type=int, nargs="+", required=True)
    sub.add_parser("merge", help="assemble the per-seed files into the table")
    report_cmd = sub.add_parser("report", help="reliability and the best trees")
    report_cmd.add_argument("--write", action="store_true")
    report_cmd.add_argument(
        "--reading",
        type=Path,
        help="a text file with the reading to put under the tables",
    )
    report_cmd.add_argument(
        "--searches",
        type=int,
        default=50,
        help="simulated searches per sampler and budget",
    )
    report_cmd.add_argument("--budgets", type=int, nargs="+", default=[20, 40])
    search_cmd = sub.add_parser(
        "searches", help="real searches of the space, confirmation on"
    )
    search_cmd.add_argument("--seeds", type=int, default=10)
    search_cmd.add_argument("--trials", type=int, default=40)
    search_cmd.add_argument("--strategy", default="full")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "table":
        for seed in args.seeds:
            train_seed(seed)
    elif args.command == "searches":
        run_searches(args.seeds, args.trials, args.strategy)
    elif args.command == "merge":
        merge()
    else:
        report(args)


HEADING = "## Ground truth on the scenes space"


def report(args: argparse.Namespace) -> None:
    """Print (and with ``--write`` put into ``benchmarks/RESULTS.md``) the truth, the simulated
    sampler comparison and the real searches."""
    from benchmarks.results_md import machine, write_section

    started = time.perf_counter()
    table = json.loads(TABLE.read_text())
    truth = truth_lines(table)
    simulated, _ = simulation_lines(table, args.searches, args.budgets)
    real = search_lines(table)
    lines = [
        HEADING,
        "",
        (
            "Every tree of a small space trained alone over several seeds, then searches over it: simulated "
            "(the protocol of `automtl search` replayed over the table, to compare samplers) and real (`automtl "
            "search` itself, confirmation on). Space: `fashion_scenes` (3,000 training, 1,000 validation, 2,000 "
            "test mosaics; 20 % of training labels hidden), tasks `has_tshirt`, `has_shirt`, `has_sneaker` "
            "(accuracy) and `count` (R²), `small_cnn` with 3 blocks (channels 8, 16; hidden 32), equal weighting, "
            "AdamW lr 3e-3, batch 64, 3 epochs; 154 trees. A tree's value on a seed is its validation Δm against "
            "the single-task tree of the same seed (paired; Vandenhende et al., TPAMI 2021, eq. 10; higher is "
            "better), its true value the mean over seeds. Selection is on validation; test is shown for reference."
        ),
        "",
        (
            f"- command: `python benchmarks/ground_truth_scenes.py table --seeds {' '.join(str(s) for s in table['seeds'])}`, "
            f"`... merge`, `... searches --seeds N --trials T [--strategy supernet]`, "
            f"`... report --searches {args.searches} --budgets {' '.join(str(b) for b in args.budgets)} --write`"
        ),
        f"- machine: {machine()}",
        f"- date: {datetime.date.today().isoformat()}; this report {time.perf_counter() - started:.0f} s",
        "",
        "### The truth",
        "",
        *truth,
        "",
        "### Samplers, simulated",
        "",
        (
            f"{args.searches} simulated searches per sampler and budget, each following `automtl search`'s "
            "protocol over the table: the obvious designs (hard sharing, single-task networks) first; a sampled "
            "tree is trained at most twice (the second time as a declared extra seed; its value then is one "
            "seed's table value, drawn without replacement), a further proposal is answered with the mean of its "
            "runs and does not count; the budget counts trainings. Confirmation: the 3 best screened trees and "
            "the best obvious design, each valued on the table's seeds not used in its screening; the answer is "
            "the best of them. Target: a tree within one standard error of the best tree's true value."
        ),
        "",
        *simulated,
        "",
        "### Real searches",
        "",
        *real,
    ]
    if args.reading:
        lines += ["", "Reading:", "", args.reading.read_text().strip()]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
