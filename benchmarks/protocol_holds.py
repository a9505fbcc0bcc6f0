"""Does a search's answer hold up? Real searches, then their answers retrained on fresh seeds.

For each search (``quickstart`` and ``csv_example`` as shipped; ``star`` from
``search_spaces/star.yaml`` with 20 trials and 5 epochs, to fit the machine's time) and each
study seed, this runs the whole protocol of :func:`automtl.search.run_search` (baselines,
obvious designs, screening, confirmation) in a fresh storage, then retrains with three *fresh*
seeds (:func:`automtl.seeds.derive_seed` of the study seed and ``"fresh"``, used by no run of
the search), paired (seed ``i`` is the same for every design):

* the confirmed answer, and the single-task networks at their tuned rates (the reference of Δm);
* on ``quickstart`` and ``star``, every obvious design of the search (hard sharing with each
  balancer family's default) and the best hard-sharing balancer of the "Fixed designs" table.

It reports:

1. **The winner's curse**: the objective the search printed for its answer (the mean over the
   confirmation seeds, validation) minus the same design's mean over the fresh seeds
   (validation, against the fresh single-task networks), in units of the design's fresh seed
   standard deviation. For comparison, what an unconfirmed search would have printed: the best
   screening trial's one-seed value minus that design's fresh mean, both against the tuned
   baselines (the screening's reference).
2. **The answer against the obvious designs on test**: test Δm over the fresh seeds of the
   answer and of each design above, the paired difference, parameters, and the search's cost
   in training-run equivalents (:mod:`automtl.accounting`).

Selection is on validation only; test is read after selection, for these reports. Results are
cached per (search, seed) in ``runs/benchmarks/protocol_holds.json``; a rerun resumes.

    python benchmarks/protocol_holds.py --seeds 2 [--only quickstart] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from automtl.accounting import cost_by_stage
from automtl.baselines import baseline_candidate
from automtl.config import SearchConfig, load_config
from automtl.confirm import Confirmation
from automtl.experiment import Experiment, prepare
from automtl.metrics import aggregate_score, delta_m, mean_std
from automtl.runs import train_candidate
from automtl.search import run_search
from automtl.seeds import derive_seed
from automtl.space import Candidate, default_value
from automtl.study import TrialRecord, designs
from automtl.train import TrainConfig, evaluate
from automtl.tree import BranchTree
from benchmarks.results_md import machine, write_section
from benchmarks.search_common import with_search

SECTION = "## Does the answer hold up?"
RUNS = ROOT / "runs" / "benchmarks"
CACHE = RUNS / "protocol_holds.json"
FRESH_SEEDS = 3

#: The best hard-sharing balancer on validation in the "Fixed designs" table (default settings).
BEST_HPS = {"quickstart": ("nash_mtl", {"mode": "representation"}), "star": ("mgda", {"mode": "representation"})}


def _configs() -> dict[str, Callable[[], SearchConfig]]:
    spaces = ROOT / "search_spaces"

    def star() -> SearchConfig:
        config = load_config(spaces / "star.yaml")
        raw = {"name": config.name, **config.raw}
        raw["train"] = {**raw["train"], "epochs": 5}
        raw["search"] = {**raw["search"], "n_trials": 20}
        from automtl.config import parse_config

        return parse_config(raw, config.source)

    return {
        "quickstart": lambda: load_config(spaces / "quickstart.yaml"),
        "star": star,
        "csv_example": lambda: load_config(spaces / "csv_example.yaml"),
    }


def _quality(objective: str, experiment: Experiment) -> Callable[[Mapping[str, float], Mapping[str, float]], float]:
    tasks = experiment.data.tasks
    if objective == "delta_m":
        return lambda m, b: delta_m(m, b, tasks)
    return lambda m, b: aggregate_score(m, tasks)


def _runs(experiment: Experiment, candidate: Candidate, seeds: Sequence[int]) -> list[dict[str, dict[str, float]]]:
    """Val and test metrics of ``candidate`` trained with each seed."""
    out = []
    for seed in seeds:
        run = train_candidate(experiment, candidate.with_seed(seed), "cpu")
        out.append({s: evaluate(run.net, experiment.data.split(s), experiment.data.tasks) for s in ("val", "test")})
    return out


def _mean_metrics(runs: Sequence[Mapping[str, Mapping[str, float]]], split: str) -> dict[str, float]:
    tasks = list(runs[0][split])
    return {t: mean_std([r[split][t] for r in runs])[0] for t in tasks}


def _hps_candidate(config: SearchConfig, experiment: Experiment, balancer: str, params: Mapping[str, Any]) -> Candidate:
    values = {k: default_value(v) for k, v in config.train.items()}
    tree = BranchTree.hard_sharing(experiment.data.task_names, experiment.backbone.n_blocks)
    return Candidate(tree, balancer, dict(params), TrainConfig(seed=0, **values))


def one_search(name: str, config: SearchConfig, seed: int, log: Path) -> dict[str, Any]:
    """Run one search and its fresh retrainings; return the plain-data result."""
    storage = RUNS / "protocol" / f"{name}_s{seed}.db"
    storage.parent.mkdir(parents=True, exist_ok=True)
    config = with_search(config, seed=seed, storage=f"sqlite:///{storage}", study_name=f"{name}_s{seed}")
    start = time.perf_counter()
    with log.open("a") as fh:
        study = run_search(config, progress=False, echo=lambda line: print(line, file=fh, flush=True))
    wall = time.perf_counter() - start
    experiment = prepare(config)
    conf = Confirmation.from_dict(study.user_attrs["confirmation"])
    quality = _quality(conf.objective, experiment)
    fresh = [derive_seed(seed, "fresh", i) for i in range(FRESH_SEEDS)]
    lr_by_task = study.user_attrs["baselines"]["lr_by_task"]
    single = baseline_candidate(config, experiment.data.task_names, experiment.backbone.n_blocks, 0, lr_by_task=lr_by_task)
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"single-task networks": _runs(experiment, single, fresh)}
    reference = {s: _mean_metrics(runs["single-task networks"], s) for s in ("val", "test")}
    answer = conf.best
    if answer.key != "single-task":
        runs[answer.label] = _runs(experiment, Candidate.from_dict(answer.candidate or {}), fresh)
    # what an unconfirmed search would have printed: the best screening trial's one-seed value
    screen_best = max(designs(study.get_trials(deepcopy=False)), key=lambda d: max(v[0] for v in d.values))
    best_trial = max(screen_best.trials, key=lambda t: t.values[0])
    screen_label = f"screening trial {best_trial.number}"
    screen_candidate = Candidate.from_dict(TrialRecord.of(best_trial).candidate or {})
    if screen_candidate.key() != (Candidate.from_dict(answer.candidate).key() if answer.candidate else ""):
        runs[screen_label] = _runs(experiment, screen_candidate, fresh)
    else:
        runs[screen_label] = runs[answer.label]
    if name in BEST_HPS:
        for t in study.get_trials(deepcopy=False):
            record = TrialRecord.of(t)
            if record.stage == "obvious" and record.label.startswith("hard sharing") and record.label not in runs:
                runs[record.label] = _runs(experiment, Candidate.from_dict(record.candidate or {}), fresh)
        balancer, params = BEST_HPS[name]
        label = f"hard sharing + {balancer} (best in Fixed designs)"
        runs[label] = _runs(experiment, _hps_candidate(config, experiment, balancer, params), fresh)
    tuned = study.user_attrs["baselines"]["val"]
    n_params = {label: _n_params(experiment, study, conf, label) for label in runs}
    return {
        "name": name,
        "seed": seed,
        "objective": conf.objective,
        "unit": conf.unit,
        "wall_seconds": round(wall, 1),
        "cost": [{"stage": c.stage, "runs": c.runs, "tre": c.tre, "seconds": c.seconds} for c in cost_by_stage(study)],
        "answer": answer.label,
        "answer_tree": answer.tree,
        "answer_balancer": answer.balancer,
        "reported": answer.mean,
        "reported_std": answer.std,
        "verdict": conf.verdict,
        "screen_label": screen_label,
        "screen_value": best_trial.values[0],
        "fresh_seeds": fresh,
        "runs": runs,
        "reference": reference,
        "tuned_reference_val": tuned,
        "n_params": n_params,
        "quality_of": {
            label: {
                "val": [quality(r["val"], reference["val"]) for r in rs],
                "test": [quality(r["test"], reference["test"]) for r in rs],
                "val_vs_tuned": [quality(r["val"], tuned) for r in rs],
            }
            for label, rs in runs.items()
        },
    }


def _n_params(experiment: Experiment, study: Any, conf: Confirmation, label: str) -> int:
    from automtl.build import build_model

    if label == "single-task networks":
        tree = BranchTree.single_task(experiment.data.task_names, experiment.backbone.n_blocks)
    elif label == conf.best.label and conf.best.candidate:
        tree = BranchTree.from_dict(conf.best.candidate["tree"])
    elif label.startswith("screening trial"):
        number = int(label.split()[-1])
        tree = BranchTree.from_dict(TrialRecord.of(study.trials[number]).candidate["tree"])
    else:
        tree = BranchTree.hard_sharing(experiment.data.task_names, experiment.backbone.n_blocks)
    return build_model(tree, experiment.backbone, experiment.data.tasks, "cpu").num_parameters()


def _pm(values: Sequence[float], digits: int = 2) -> str:
    mean, std = mean_std(values)
    return f"{mean:+.{digits}f} ± {std:.{digits}f}"


def curse_rows(results: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[float], list[float]]:
    """Table rows of the winner's curse, and the curses in fresh-std units (confirmed, unconfirmed)."""
    rows, confirmed, unconfirmed = [], [], []
    for r in results:
        q = r["quality_of"]
        fresh_mean, fresh_std = mean_std(q[r["answer"]]["val"]) if r["answer"] in q else (0.0, 0.0)
        if r["answer"] == "single-task networks":
            fresh_mean, fresh_std = mean_std(q["single-task networks"]["val"])
        curse = r["reported"] - fresh_mean
        in_std = curse / fresh_std if fresh_std > 0 else math.nan
        s_mean, s_std = mean_std(q[r["screen_label"]]["val_vs_tuned"])
        s_curse = r["screen_value"] - s_mean
        s_in_std = s_curse / s_std if s_std > 0 else math.nan
        confirmed.append(in_std)
        unconfirmed.append(s_in_std)
        rows.append(
            f"| {r['name']} | {r['seed']} | {r['answer']} | {r['reported']:+.2f} | {fresh_mean:+.2f} ± {fresh_std:.2f} | "
            f"{curse:+.2f} ({in_std:+.2f} std) | {r['screen_label']}: {r['screen_value']:+.2f} → {s_mean:+.2f} ± {s_std:.2f} "
            f"({s_in_std:+.2f} std) |"
        )
    return rows, confirmed, unconfirmed


def test_rows(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per search with obvious designs: each design's test Δm on fresh seeds and the answer's paired difference."""
    rows = []
    for r in results:
        if r["name"] not in BEST_HPS:
            continue
        q = r["quality_of"]
        answer = r["answer"]
        tre = sum(c["tre"] for c in r["cost"])
        parts = "; ".join(f"{c['stage']} {c['tre']:.1f}" for c in r["cost"])
        for label in q:
            if label.startswith("screening trial") and label != answer:
                continue
            diffs = [a - b for a, b in zip(q[answer]["test"], q[label]["test"])]
            better = sum(d > 0 for d in diffs)
            mark = " (answer)" if label == answer else ""
            paired = "-" if label == answer else f"{_pm(diffs)} ({better}/{len(diffs)})"
            rows.append(
                f"| {r['name']} | {r['seed']} | {label}{mark} | {r['n_params'][label]:,} | {_pm(q[label]['val'])} | "
                f"{_pm(q[label]['test'])} | {paired} | {tre:.1f} ({parts}) |"
            )
    return rows


def _rechecked(result: Mapping[str, Any]) -> str:
    """The first verdict line of a cached search's recorded confirmation, judged by the current rules."""
    import optuna

    from automtl.confirm import recheck
    from automtl.study import open_storage

    name, seed = result["name"], result["seed"]
    storage = RUNS / "protocol" / f"{name}_s{seed}.db"
    if not storage.is_file():
        return "(study not found)"
    study = optuna.load_study(study_name=f"{name}_s{seed}", storage=open_storage(f"sqlite:///{storage}"))
    return recheck(Confirmation.from_dict(study.user_attrs["confirmation"])).verdict.splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2, help="study seeds per search (0..N-1)")
    parser.add_argument("--only", help="comma-separated search names")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--reading", type=Path, help="a text file with the reading to put under the tables")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RUNS.mkdir(parents=True, exist_ok=True)
    cache: dict[str, Any] = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    configs = _configs()
    names = args.only.split(",") if args.only else list(configs)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    for name in names:
        for seed in range(args.seeds):
            key = f"{name}/{seed}"
            if key in cache:
                continue
            print(f"{key}: searching ...", flush=True)
            cache[key] = one_search(name, configs[name](), seed, RUNS / "protocol_holds.log")
            CACHE.write_text(json.dumps(cache, indent=1))
            r = cache[key]
            print(f"{key}: answer {r['answer']} reported {r['reported']:+.2f}, {r['wall_seconds']:.0f} s", flush=True)
    results = [cache[k] for k in sorted(cache) if k.split("/")[0] in names]
    rows, confirmed, unconfirmed = curse_rows(results)
    finite = sorted(v for v in confirmed if not math.isnan(v))
    median_curse = finite[len(finite) // 2] if len(finite) % 2 else (finite[len(finite) // 2 - 1] + finite[len(finite) // 2]) / 2
    finite_u = sorted(v for v in unconfirmed if not math.isnan(v))
    median_u = finite_u[len(finite_u) // 2] if len(finite_u) % 2 else (finite_u[len(finite_u) // 2 - 1] + finite_u[len(finite_u) // 2]) / 2
    # an answer that is the single-task networks has a curse of 0 by construction (it is the reference)
    nontrivial = sorted(v for v, r in zip(confirmed, results) if not math.isnan(v) and r["answer"] != "single-task networks")
    median_nt = statistics.median(nontrivial) if nontrivial else math.nan
    text = "\n".join(
        [
            SECTION,
            "",
            ("Real searches with the whole protocol (baselines, obvious designs, screening, confirmation), then their answers "
            f"retrained with {FRESH_SEEDS} fresh seeds that no run of the search used, paired across designs. Validation selects; test "
            "is read afterwards, for these reports only. Objective values are Δm in percent (higher is better) against the "
            "single-task networks trained with the same fresh seeds at their tuned learning rates."),
            "",
            f"- command: `python benchmarks/protocol_holds.py --seeds {args.seeds}{' --only ' + args.only if args.only else ''} --write`",
            f"- machine: {machine()}; load average before the last invocation {load_before:.1f}",
            f"- date: {datetime.date.today().isoformat()}; this invocation {time.perf_counter() - started:.0f} s; searches: "
            + ", ".join(f"{r['name']}/{r['seed']} {r['wall_seconds']:.0f} s" for r in results),
            "- searches: `quickstart` and `csv_example` as shipped; `star` is `search_spaces/star.yaml` with 20 trials and 5 epochs.",
            "",
            "### The winner's curse",
            "",
            ("Printed = the search's answer as printed (mean over its confirmation seeds, validation). Fresh = the same design over the "
            "fresh seeds (mean ± std). Curse = printed − fresh, and in units of the fresh seed std. The last column is what an "
            "unconfirmed search would have printed, its best screening trial's one-seed value, against that design's fresh mean "
            "(both against the tuned baselines, the screening's reference)."),
            "",
            "| search | seed | answer | printed | fresh (mean ± std) | curse | unconfirmed: printed → fresh (curse) |",
            "|---|---:|---|---:|---|---|---|",
            *rows,
            "",
            (f"Median curse of the confirmed answer: **{median_curse:+.2f} seed std** over {len(finite)} searches (goal: at most "
            f"+0.5). The single-task networks' curse is 0 by construction (they are the reference); over the "
            f"{len(nontrivial)} searches that answered another design the median is {median_nt:+.2f} seed std. "
            f"Median for the unconfirmed best trial: {median_u:+.2f} seed std."),
            "",
            "### The answer against the obvious designs, on test",
            "",
            ("Every design trained with the same fresh seeds; test Δm against the fresh single-task networks; the paired column is "
            "the answer minus the design, seed by seed (seeds where the answer is better). Search cost in training-run equivalents "
            "(1 TRE = one hard-sharing training of the config's budget; screening, baselines, confirmation)."),
            "",
            "| search | seed | design | params | val Δm | test Δm | answer − design, test (seeds better) | search cost (TRE) |",
            "|---|---:|---|---:|---|---|---|---|",
            *test_rows(results),
            "",
            ("Verdicts printed by the searches, and the same recorded confirmation runs judged by the current rule "
            "(`automtl.confirm.recheck`: the noise test Bonferroni-corrected for the number of designs the answer was "
            "chosen from):"),
            "",
            *[f"- {r['name']}/{r['seed']}: " + r["verdict"].splitlines()[0]
              + (f" Current rule: {v}" if (v := _rechecked(r)) != r["verdict"].splitlines()[0] else " (unchanged)")
              for r in results],
        ]
        + (["", "Reading:", "", args.reading.read_text().strip()] if args.reading else [])
    )
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
