"""automtl's search (TPE, the default sampler) against random search at the same number of trials.

On the quickstart search space (``search_spaces/quickstart.yaml``: fashion_scenes, 11 tasks,
small CNN, tree + balancer + learning rate searched, 3 epochs a trial, median pruner) with the
objective set to ``delta_m`` (Δm in percent against cached single-task baselines on
validation, positive is better), each sampler runs ``--seeds`` studies of ``--trials`` trials
(study seed ``s`` seeds both the sampler and every trial's training, so trial ``k`` of the TPE
and of the random study of one seed train with the same seed). It reports

* the best validation Δm found after 5, 10, ... trials (median [min, max] over seeds);
* the test Δm of the trial each study selected on validation: its saved weights, exported with
  :func:`automtl.export.export_trial` (the only place the test split is read), against the
  single-task baselines on test;
* the best fixed design for reference: hard parameter sharing with equal weighting and the
  config's default training (lr at the geometric middle of the range), over 3 seeds
  (:func:`automtl.fixed.train_fixed`).

Studies live in ``runs/benchmarks/search_vs_random.db`` and resume; results are cached in
``runs/benchmarks/search_vs_random.json``. One CPU thread.

    python benchmarks/search_vs_random.py [--trials 20] [--seeds 3] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optuna.trial import TrialState

from automtl.config import SearchConfig
from automtl.experiment import prepare
from automtl.export import export_trial
from automtl.fixed import single_task_baseline, train_fixed
from automtl.metrics import DELTA_M_CONVENTION
from automtl.search import baseline_dir, finished_trials, run_search
from benchmarks.affinity_common import quickstart_config
from benchmarks.results_md import ROOT, machine, write_section
from benchmarks.search_common import (
    best_so_far,
    fmt,
    mean_std,
    median_range,
    with_search,
)

HEADING = "## Search against random search"
SAMPLERS = ("tpe", "random")
RUNS = ROOT / "runs" / "benchmarks"


def storage_url(name: str) -> str:
    """The SQLite storage of this benchmark's studies, ``runs/benchmarks/<name>.db``."""
    return f"sqlite:///{RUNS / name}.db"


def study_config(sampler: str, storage: str) -> SearchConfig:
    """The quickstart config with the objective Δm and the given sampler and storage."""
    return with_search(
        quickstart_config(), objective="delta_m", sampler=sampler, storage=storage
    )


def trial_values(study: Any, n_trials: int) -> list[float | None]:
    """The objective of the first ``n_trials`` finished trials in order; ``None`` for pruned or failed ones."""
    trials = sorted(finished_trials(study), key=lambda t: t.number)
    return [
        t.value if t.state == TrialState.COMPLETE else None for t in trials[:n_trials]
    ]


def run_one(sampler: str, seed: int, n_trials: int, storage: str) -> dict[str, Any]:
    """One study: search, then export the validation-best trial and read its test Δm."""
    config = study_config(sampler, storage)
    name = f"svr-{sampler}-seed{seed}"
    study = run_search(
        config,
        n_trials=n_trials,
        storage=storage,
        study_name=name,
        seed=seed,
        progress=False,
        echo=print,
    )
    trials = finished_trials(study)
    search_seconds = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete is not None and t.datetime_start is not None
    )
    with tempfile.TemporaryDirectory() as tmp:
        metrics = export_trial(study, storage, tmp)
    best = study.best_trial
    return {
        "study": name,
        "values": trial_values(study, n_trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "search_seconds": search_seconds,
        "best_trial": best.number,
        "best_tree": best.user_attrs.get("tree"),
        "best_balancer": best.params.get("balancer"),
        "best_lr": best.params.get("train.lr"),
        "val_delta_m": best.value,
        "export_val_delta_m": metrics["val_delta_m"],
        "test_delta_m": metrics["test_delta_m"],
    }


def run_fixed(seeds: int, storage: str) -> dict[str, Any]:
    """Hard parameter sharing, equal weighting, default training, over ``seeds`` seeds."""
    config = study_config("tpe", storage)
    experiment = prepare(config)
    start = time.perf_counter()
    result = train_fixed(experiment, "hps", "equal", seeds=seeds, device="cpu")
    baseline = single_task_baseline(
        experiment, baseline_dir(storage), ("val", "test"), "cpu"
    )
    summary = result.summary(experiment.data.tasks, baseline)
    return {
        "seeds": seeds,
        "lr": result.train.lr,
        "val": summary["val"]["(delta_m %)"],
        "test": summary["test"]["(delta_m %)"],
        "seconds": time.perf_counter() - start,
    }


def load_cache(path: Path) -> dict[str, Any]:
    return (
        json.loads(path.read_text())
        if path.is_file()
        else {"runs": {}, "wall_seconds": 0.0}
    )


def save_cache(cache: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cache, indent=2))


def checkpoints(n_trials: int) -> list[int]:
    """5, 10, ... up to ``n_trials`` (and ``n_trials`` itself)."""
    points = list(range(5, n_trials + 1, 5))
    return points if points and points[-1] == n_trials else [*points, n_trials]


def md_cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell (a tree's compact form separates blocks by ``|``)."""
    return text.replace("|", "\\|")


def curve_table(
    runs: dict[str, dict[str, Any]], seeds: int, n_trials: int
) -> list[str]:
    lines = [
        "| trials | TPE: best val Δm (%) | random: best val Δm (%) |",
        "|---:|---|---|",
    ]
    for k in checkpoints(n_trials):
        cells = []
        for sampler in SAMPLERS:
            bests = [
                best_so_far(runs[f"{sampler}-seed{s}"]["values"])[k - 1]
                for s in range(seeds)
            ]
            cells.append(median_range(bests))
        lines.append(f"| {k} | {cells[0]} | {cells[1]} |")
    return lines


def selection_table(
    runs: dict[str, dict[str, Any]], seeds: int, fixed: dict[str, Any] | None
) -> list[str]:
    lines = [
        "| sampler | seed | selected trial | tree (per block) | balancer | lr | val Δm (%) | test Δm (%) | pruned / failed | search time |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for sampler in SAMPLERS:
        for s in range(seeds):
            r = runs[f"{sampler}-seed{s}"]
            lines.append(
                f"| {sampler} | {s} | {r['best_trial']} | `{md_cell(r['best_tree'])}` | {r['best_balancer']} | "
                f"{r['best_lr']:.1e} | {fmt(r['val_delta_m'])} | {fmt(r['test_delta_m'])} | "
                f"{r['pruned']} / {r['failed']} | {r['search_seconds']:.0f} s |"
            )
    for sampler in SAMPLERS:
        rs = [runs[f"{sampler}-seed{s}"] for s in range(seeds)]
        lines.append(
            f"| **{sampler}, median [min, max]** | | | | | | {median_range([r['val_delta_m'] for r in rs])} | "
            f"{median_range([r['test_delta_m'] for r in rs])} | | |"
        )
    if fixed is not None:
        lines.append(
            f"| **fixed: hard sharing + equal** | {fixed['seeds']} seeds | | `all tasks shared` | equal | "
            f"{fixed['lr']:.1e} | {mean_std(fixed['val'])} | {mean_std(fixed['test'])} | | {fixed['seconds']:.0f} s |"
        )
    return lines


def report(
    cache: dict[str, Any],
    seeds: int,
    n_trials: int,
    command: str,
    seconds: float,
    reading: str,
) -> str:
    runs, fixed = cache["runs"], cache.get("fixed")
    lines = [
        HEADING,
        "",
        (
            f"automtl's search (TPE, `search.sampler: tpe`) against random search (`sampler: random`) at the same "
            f"number of trials: {n_trials} trials per study, {seeds} seeds per sampler, on the quickstart search "
            "space (`search_spaces/quickstart.yaml`: fashion_scenes, 11 tasks, small CNN, tree + every installed "
            "balancer in representation mode + lr, 3 epochs a trial, median pruner) with `search.objective: delta_m`. "
            "Study seed s seeds the sampler and every trial's training, so trial k of both samplers trains with the "
            "same seed; TPE's first 5 trials are its random start-up trials."
        ),
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}",
        f"- date: {datetime.date.today().isoformat()}; run time {seconds:.0f} s (searches, exports and the fixed design, summed over invocations)",
        (
            f"- Δm: {DELTA_M_CONVENTION}; higher is better. Baselines: single-task networks, trained once with the "
            "config's default training (lr 1.7e-3, the geometric middle of the range), cached."
        ),
        (
            "- selection on validation only: the best complete trial of each study; its saved weights are exported "
            "(`automtl.export.export_trial`) and evaluated once on test against the test baselines."
        ),
        "",
        "Best validation Δm found so far against the number of trials (median [min, max] over seeds):",
        "",
        *curve_table(runs, seeds, n_trials),
        "",
        "What each study selected on validation, and its test Δm; the fixed design is mean ± std over seeds:",
        "",
        *selection_table(runs, seeds, fixed),
        "",
        reading.strip(),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=20, help="trials per study")
    parser.add_argument("--seeds", type=int, default=3, help="studies per sampler")
    parser.add_argument(
        "--fixed-seeds", type=int, default=3, help="seeds of the fixed design (0: skip)"
    )
    parser.add_argument(
        "--name",
        default="search_vs_random",
        help="runs/benchmarks/NAME.db and NAME.json",
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
    storage, cache_path = storage_url(args.name), RUNS / f"{args.name}.json"
    cache = load_cache(cache_path)
    for seed in range(args.seeds):
        for sampler in SAMPLERS:
            key = f"{sampler}-seed{seed}"
            if len(cache["runs"].get(key, {}).get("values", [])) == args.trials:
                continue
            print(f"== {key}: {args.trials} trials", flush=True)
            start = time.perf_counter()
            cache["runs"][key] = run_one(sampler, seed, args.trials, storage)
            cache["wall_seconds"] += time.perf_counter() - start
            save_cache(cache, cache_path)
    if args.fixed_seeds and cache.get("fixed", {}).get("seeds") != args.fixed_seeds:
        print(
            f"== fixed design: hard sharing + equal, {args.fixed_seeds} seeds",
            flush=True,
        )
        cache["fixed"] = run_fixed(args.fixed_seeds, storage)
        cache["wall_seconds"] += cache["fixed"]["seconds"]
        save_cache(cache, cache_path)
    command = "python benchmarks/search_vs_random.py " + " ".join(sys.argv[1:])
    reading = args.reading.read_text() if args.reading else "Reading: (not yet written)"
    text = report(
        cache, args.seeds, args.trials, command.strip(), cache["wall_seconds"], reading
    )
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
