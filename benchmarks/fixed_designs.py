"""Fixed designs against single-task baselines: Δm ± std over seeds on validation and test.

For each data set (``fashion_scenes`` with ``search_spaces/quickstart.yaml``, 3 epochs;
``star`` with :func:`benchmarks.affinity_common.star_config`, 5 epochs) this trains:

* the single-task design (every task its own network from branching point 0, equal weighting);
* hard parameter sharing (``hps``) with every installed balancing strategy at its default
  hyperparameters, gradient aggregators (and GradNorm) in ``representation`` mode where they
  offer it (the quickstart search space's choice); ``fixed`` is left out (with no weights it
  is equal weighting); a strategy whose solver is not installed is skipped and listed.

Each design is trained with seeds 0, 1, 2 and scored on validation and test; Δm (percent,
positive is better, :data:`automtl.metrics.DELTA_M_CONVENTION`) is against the cached single-task
baseline (:func:`automtl.fixed.single_task_baseline`, seed 0, same training budget). The
single-task design's own Δm over its three seeds is the noise floor: seed 0 *is* the baseline.
Every design of a data set uses the same training hyperparameters:
:func:`automtl.fixed.default_train_config` (a fixed value, else the middle of the config's range).

Per-(data set, design, seed) results are cached in ``runs/benchmarks/fixed_designs.json``, so an
interrupted run resumes where it stopped.

Usage::

    python benchmarks/fixed_designs.py                    # run (or resume) and print the table
    python benchmarks/fixed_designs.py --write            # also update benchmarks/RESULTS.md
    python benchmarks/fixed_designs.py --only equal,upgrad --datasets star   # a quick look
    nohup python benchmarks/fixed_designs.py --write > runs/benchmarks/fixed_designs.log 2>&1 &
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from automtl.balance import describe_balancers
from automtl.config import SearchConfig
from automtl.experiment import Experiment, prepare
from automtl.fixed import (
    FixedResult,
    default_train_config,
    resolve_arch,
    single_task_baseline,
    train_fixed,
)
from automtl.metrics import DELTA_M_CONVENTION, delta_m
from benchmarks.affinity_common import quickstart_config, star_config
from benchmarks.results_md import machine, write_section

SECTION = "## Fixed designs"
RUNS = ROOT / "runs" / "benchmarks"
CACHE = RUNS / "fixed_designs.json"
BASELINES = RUNS / "baselines"
SKIPPED_ALWAYS = {"fixed": "no weights given, so it is equal weighting"}

DATASETS: dict[str, Callable[[], SearchConfig]] = {
    "fashion_scenes": quickstart_config,
    "star": lambda: star_config(epochs=5),
}


@dataclass(frozen=True)
class Design:
    """One fixed design: an architecture, a balancer and its hyperparameters."""

    arch: str
    balancer: str
    params: dict[str, Any]

    @property
    def key(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.arch}/{self.balancer}" + (f"[{params}]" if params else "")


def designs(only: set[str] | None = None) -> tuple[list[Design], dict[str, str]]:
    """The single-task design, then ``hps`` with every installed balancer; and the skipped ones."""
    found: list[Design] = [Design("single", "equal", {})]
    skipped: dict[str, str] = {}
    for entry in describe_balancers():
        name = entry["name"]
        if only is not None and name not in only:
            continue
        if name in SKIPPED_ALWAYS:
            skipped[name] = SKIPPED_ALWAYS[name]
            continue
        if entry["missing"]:
            skipped[name] = f"missing {', '.join(entry['missing'])} ({entry['install']})"
            continue
        modes = (entry["hyperparameters"].get("mode") or {}).get("choices") or []
        params = {"mode": "representation"} if "representation" in modes else ({"mode": modes[0]} if modes else {})
        found.append(Design("hps", name, params))
    return found, skipped


def train_one_seed(experiment: Experiment, design: Design, seed: int) -> dict[str, Any]:
    """Seed ``seed`` of :func:`automtl.fixed.train_fixed`; ``seconds`` is its training time."""
    result = train_fixed(experiment, design.arch, design.balancer, design.params, seeds=1, first_seed=seed)
    return {
        "val": result.val[0],
        "test": result.test[0],
        "n_params": result.n_params,
        "seconds": result.seconds[0],
        "lr": result.train.lr,
    }


def load_cache() -> dict[str, Any]:
    return json.loads(CACHE.read_text()) if CACHE.is_file() else {}


def save_cache(cache: dict[str, Any]) -> None:
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = CACHE.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1))
    tmp.replace(CACHE)


def run_design(experiment: Experiment, dataset: str, design: Design, seeds: int, cache: dict[str, Any]) -> list[dict[str, Any]]:
    """Every seed of ``design``, from the cache where it is there (the cache is saved after each seed)."""
    runs = []
    for seed in range(seeds):
        key = f"{dataset}|{design.key}|{seed}"
        if key not in cache:
            try:
                cache[key] = train_one_seed(experiment, design, seed)
            except Exception as exc:  # noqa: BLE001 (a failing strategy is reported in its row, not fatal)
                cache[key] = {"error": f"{type(exc).__name__}: {exc}"}
            save_cache(cache)
            status = cache[key].get("error") or f"{cache[key]['seconds']:.1f} s"
            print(f"  {dataset} {design.key} seed {seed}: {status}", flush=True)
        runs.append(cache[key])
    return runs


def fixed_result(experiment: Experiment, design: Design, runs: list[dict[str, Any]]) -> FixedResult:
    """The :class:`automtl.fixed.FixedResult` that ``train_fixed`` would have returned for these seeds."""
    data = experiment.data
    tree = resolve_arch(design.arch, data.task_names, experiment.backbone.n_blocks)
    result = FixedResult(tree, design.balancer, design.params, default_train_config(experiment.config, 0))
    result.val = [r["val"] for r in runs]
    result.test = [r["test"] for r in runs]
    result.n_params = runs[0]["n_params"]
    return result


def per_seed_delta_m(experiment: Experiment, runs: list[dict[str, Any]], baseline: dict[str, dict[str, float]], split: str) -> list[float]:
    """Δm of every seed on ``split`` (percent, positive is better)."""
    return [delta_m(r[split], baseline[split], experiment.data.tasks) for r in runs]


def summarize(
    experiment: Experiment,
    design: Design,
    runs: list[dict[str, Any]],
    baseline: dict[str, dict[str, float]],
    reference: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """Δm and mean score (mean ± std over seeds) through :meth:`automtl.fixed.FixedResult.summary`, and
    the difference of Δm to ``reference`` (hps with equal weighting) paired by seed."""
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        return {"design": design, "error": errors[0]}
    result = fixed_result(experiment, design, runs)
    summary = result.summary(experiment.data.tasks, baseline)
    row = {
        "design": design,
        "val_dm": summary["val"]["(delta_m %)"],
        "test_dm": summary["test"]["(delta_m %)"],
        "score": summary["val"]["(mean_score)"],
        "seconds": sum(r["seconds"] for r in runs) / len(runs),
        "n_params": result.n_params,
    }
    if reference is not None and len(reference) == len(runs) and not any("error" in r for r in reference):
        for split in ("val", "test"):
            ours = per_seed_delta_m(experiment, runs, baseline, split)
            theirs = per_seed_delta_m(experiment, reference, baseline, split)
            diffs = [a - b for a, b in zip(ours, theirs)]
            row[f"{split}_vs_equal"] = {
                "mean": statistics.fmean(diffs),
                "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                "wins": sum(d > 0 for d in diffs),
                "n": len(diffs),
            }
    return row


def _pm(stat: dict[str, float]) -> str:
    return f"{stat['mean']:+.2f} ± {stat['std']:.2f}"


def _paired(stat: dict[str, float]) -> str:
    return f"{stat['mean']:+.2f} ± {stat['std']:.2f} ({stat['wins']}/{stat['n']})"


def table(dataset: str, rows: list[dict[str, Any]]) -> str:
    lines = [
        "| data set | design | balancer | params | val Δm % (mean ± std) | test Δm % (mean ± std) | val / test: Δm − hps equal's Δm, paired by seed (mean ± std, seeds better) | val mean score | seconds / seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        d: Design = row["design"]
        params = ", ".join(f"{k}={v}" for k, v in d.params.items()) or "-"
        if "error" in row:
            lines.append(f"| {dataset} | {d.arch} | {d.balancer} | {params} | failed: {row['error'][:80]} | | | | |")
            continue
        score = f"{row['score']['mean']:.4f} ± {row['score']['std']:.4f}"
        vs_equal = " / ".join(_paired(row[f"{split}_vs_equal"]) for split in ("val", "test")) if "val_vs_equal" in row else "-"
        lines.append(
            f"| {dataset} | {d.arch} | {d.balancer} | {params} | {_pm(row['val_dm'])} | {_pm(row['test_dm'])} | {vs_equal} | {score} | {row['seconds']:.1f} |"
        )
    return "\n".join(lines)


def run_dataset(dataset: str, only: set[str] | None, seeds: int, cache: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Train (or read from the cache) every design of ``dataset``; rows sorted by validation Δm."""
    experiment = prepare(DATASETS[dataset]())
    train = default_train_config(experiment.config, 0)
    print(f"{dataset}: {train}; baselines ...", flush=True)
    baseline = single_task_baseline(experiment, BASELINES, ("val", "test"))
    found, _ = designs(only)
    runs = [(d, run_design(experiment, dataset, d, seeds, cache)) for d in found]
    equal = next((r for d, r in runs if d.arch == "hps" and d.balancer == "equal"), None)
    rows = [summarize(experiment, d, r, baseline, equal) for d, r in runs]
    rows.sort(key=lambda r: (r["design"].arch != "single", -r["val_dm"]["mean"] if "val_dm" in r else 1e9))
    setting = (
        f"`{dataset}`: backbone `{experiment.config.backbone}` {experiment.config.backbone_options or '(default widths)'}, "
        f"{train.epochs} epochs, batch {train.batch_size}, {train.optimizer} lr {train.lr:.3g}, "
        f"weight decay {train.weight_decay:g} (the same for every design)"
    )
    return rows, setting


def section(
    tables: list[str],
    settings: list[str],
    skipped: dict[str, str],
    command: str,
    seconds: float,
    training_seconds: float,
    seeds: int,
) -> str:
    skipped_text = "; ".join(f"`{k}` ({v})" for k, v in sorted(skipped.items())) or "none"
    parts = [
        SECTION,
        "",
        (f"Fixed designs against single-task baselines, {seeds} seeds each (0..{seeds - 1}), scored on validation and test. "
        f"{DELTA_M_CONVENTION}. Baselines: the single-task design, seed 0, same training, one per split. "
        "The `single` row is that design over all seeds against its own seed 0: the noise floor of Δm. "
        "Mean score: mean over tasks of the direction-adjusted validation metric (higher is better). "
        "Every design trains seed s from the same initial-weight and batch-order seed, so the paired column "
        "(Δm of the design minus Δm of `hps`/`equal` with the same seed, and in how many seeds the design was "
        "better) removes most seed-to-seed noise; with 3 seeds, read a difference as real only when its mean "
        "clearly exceeds its std and all 3 seeds agree. "
        "Seconds: training wall time per seed (fit, incl. per-epoch validation; lower is better), on a CPU shared "
        "with other jobs: compare them within one table only."),
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}",
        (f"- date: {datetime.date.today().isoformat()}; run time {seconds:.0f} s for this invocation, "
        f"{training_seconds:.0f} s of training in all (summed over the cached designs and seeds, baselines excluded)"),
        *[f"- {s}" for s in settings],
        ("- balancers at their default hyperparameters; gradient aggregators and GradNorm in `representation` mode "
        "where they offer it (`excess_mtl` has only `full`)."),
        f"- skipped: {skipped_text}",
        "",
        *[t + "\n" for t in tables],
        "READING",
    ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: fashion_scenes,star")
    parser.add_argument("--only", default=None, help="comma-separated balancer names (single-task always runs)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    parser.add_argument("--notes", type=Path, default=None, help="a file whose text replaces the READING placeholder")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    only = set(args.only.split(",")) if args.only else None
    start = time.perf_counter()
    cache = load_cache()
    tables, settings = [], []
    for dataset in args.datasets.split(","):
        rows, setting = run_dataset(dataset, only, args.seeds, cache)
        tables.append(table(dataset, rows))
        settings.append(setting)
    _, skipped = designs(only)
    given = list(sys.argv[1:] if argv is None else argv)
    if args.notes is not None:  # the notes are prose written after a run; they change no number
        i = given.index("--notes") if "--notes" in given else -1
        given = given[:i] + given[i + 2 :] if i >= 0 else [a for a in given if not a.startswith("--notes=")]
    command = "python benchmarks/fixed_designs.py " + " ".join(given)
    training = sum(r.get("seconds", 0.0) for k, r in cache.items() if k.split("|")[0] in args.datasets.split(","))
    text = section(tables, settings, skipped, command.strip(), time.perf_counter() - start, training, args.seeds)
    notes = args.notes.read_text().strip() if args.notes else "Reading: (to be written after looking at the numbers.)"
    text = text.replace("READING", notes)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
