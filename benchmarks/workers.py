"""Many workers on one study: 1, 2 and 4 worker processes, PostgreSQL and a journal file.

Each run is a fresh study, started the way a user starts one, as one command:

    python cli.py search CONFIG --storage URL --artifacts DIR --n-trials 12 --workers N --threads T \\
        --no-progress --no-confirm

``--n-trials`` is the study's total across its workers. The confirmation stage is skipped
(``--no-confirm``): it is not what is measured; the baselines (single-task networks at three
learning rates, jobs that any worker takes) and the screening are. The storages:

* **PostgreSQL**: a private server started by this script (:class:`tests.postgres.PostgresServer`:
  ``initdb``/``pg_ctl`` in a temporary folder, as the ``postgres`` user when run as root, on a
  free port of 127.0.0.1, *without* ``fsync``), one new database per run, stopped at the end
  whatever happens. Skipped, with the reason printed, where no server binary is installed.
* **journal file**: ``journal:runs/benchmarks/workers/<run>/study.log`` on the disk (Optuna's
  file journal, which syncs every write), as on a shared filesystem.

The config (written to ``runs/benchmarks/workers/config.yaml``) is a small version of
``search_spaces/quickstart.yaml``: ``fashion_scenes`` with 5 of its tasks and 2000 training
scenes, ``small_cnn`` with channels 8/8/16, 3 epochs, a searched learning rate (so the baselines
are 3 runs of 5 single-task networks, about 6 s each), 3 balancers, TPE, no pruning: a trial
takes 1.5 to 6 s on one core.

For each run the table reports, read from the storage after the command exited:

* **trials**: trials that count toward the total (:func:`automtl.study.finished_trials`); must be
  exactly ``--n-trials``;
* **repeated**: pairs of counted trials of one design (same :attr:`TrialRecord.key`) where
  neither is a declared extra seed (``repeat_of``): designs trained twice undeclared; must be 0.
  Beside it, the declared extra seeds, and the trials answered without training (from the
  study's earlier runs of their design, or from the baselines' run of the single-task design);
* **baselines once**: every ``baseline-tune/...`` job of the study's ``::jobs`` study completed
  exactly once and no baseline run was stopped and retried;
* **wall**: the command's wall time, from its start to its exit (process start, data, the
  baselines, the screening); **trials/h** = trials / wall; **× 1 worker** = the 1-worker run's
  wall over this run's wall, same storage and threads (higher is faster);
* **screening**: from the first search trial's start to the last one's end (the trials'
  timestamps in the storage), and trials/h over that span; **baselines**: the same span of the
  baseline runs; **start**: from the command's start to its first baseline run's start (process
  start, imports, the data);
* **load**: the machine's 1-minute load average just before the run (other processes).

A second table puts 2 workers × 1 thread against 1 worker × 2 threads (same storage, same total).

Results are cached per run in ``runs/benchmarks/workers.json``; a rerun resumes (``--redo``
runs the selected cases again).

    python benchmarks/workers.py [--write]                          # the full benchmark (about 6-10 min on 2 cores)
    python benchmarks/workers.py --quick --storages journal         # a smoke: 3 trials, 1 and 2 workers
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from automtl.study import (
    JOBS_SUFFIX,
    TrialRecord,
    counts_toward_total,
    finished_trials,
    load_study,
    open_storage,
)
from benchmarks.results_md import machine, write_section

SECTION = "## Many workers"
RUNS = ROOT / "runs" / "benchmarks"
CACHE = RUNS / "workers.json"
WORK = RUNS / "workers"
CLI = ROOT / "cli.py"
STUDY = "workers_bench"
STORAGES = ("postgresql", "journal")
#: Seconds after which a run is stopped and recorded as failed.
RUN_TIMEOUT = 1200

CONFIG: dict[str, Any] = {
    "name": STUDY,
    "data": {
        "name": "fashion_scenes",
        "options": {
            "n_train": 2000,
            "n_val": 500,
            "n_test": 200,
            "missing_label_fraction": 0.2,
            "seed": 0,
            "tasks": ["has_tshirt", "has_trouser", "has_sneaker", "has_bag", "count"],
        },
    },
    "backbone": {"name": "small_cnn", "options": {"channels": [8, 8, 16], "hidden": 16}},
    "space": {
        "max_groups": 2,
        "group_split_points": [1, 2, 3, 4],
        "task_split_points": [3, 4],
        "balancers": ["equal", "dwa", "uncertainty"],
    },
    "train": {"epochs": 3, "batch_size": 64, "lr": {"low": 3.0e-3, "high": 2.0e-2, "log": True}, "weight_decay": 0.0},
    "search": {"sampler": "tpe", "pruner": "none", "seed": 0, "confirm": {"top_k": 1, "seeds": 1}},
    "device": "cpu",
}


@dataclass(frozen=True)
class Case:
    """One run: a storage kind, a number of workers and torch threads per worker, a study total."""

    storage: str
    workers: int
    threads: int
    trials: int

    @property
    def key(self) -> str:
        return f"{self.storage}/{self.workers}w{self.threads}t/{self.trials}"

    @property
    def folder(self) -> Path:
        return WORK / f"{self.storage}_{self.workers}w{self.threads}t_n{self.trials}"


# ------------------------------------------------------------------------------------ PostgreSQL
class Postgres:
    """The private server, started on first use and stopped by :meth:`stop` (or at exit)."""

    def __init__(self) -> None:
        from tests.postgres import NO_SERVER, PostgresServer, find_server

        self.bin_dir = find_server()
        self.missing = None if self.bin_dir is not None else NO_SERVER
        self._make = PostgresServer
        self.server: Any = None

    def database(self) -> str:
        """A new, empty database's URL."""
        if self.server is None:
            assert self.bin_dir is not None
            self.server = self._make(self.bin_dir)
            self.server.start()
        return str(self.server.create_database())

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@contextmanager
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    try:
        yield pg
    finally:
        pg.stop()


# -------------------------------------------------------------------------------------- one run
def _span(trials: Sequence[FrozenTrial]) -> float | None:
    """Seconds from the first start to the last end among ``trials`` (``None`` without any)."""
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    if not starts or not ends:
        return None
    return (max(ends) - min(starts)).total_seconds()


def repeated_pairs(trials: Sequence[FrozenTrial]) -> int:
    """Pairs of counted trials of one design where neither is a declared extra seed (``repeat_of``)."""
    undeclared: dict[str, int] = defaultdict(int)
    for t in trials:
        record = TrialRecord.of(t)
        if record.key and counts_toward_total(t) and record.repeat_of is None:
            undeclared[record.key] += 1
    return sum(n * (n - 1) // 2 for n in undeclared.values())


def baseline_jobs(storage: str) -> dict[str, Any]:
    """The baseline tuning jobs: ``{"keys", "completions" per key, "stopped" runs, "span" seconds, "once"}``."""
    jobs = optuna.load_study(study_name=STUDY + JOBS_SUFFIX, storage=open_storage(storage)).get_trials(deepcopy=False)
    runs = [t for t in jobs if str(t.user_attrs.get("job", {}).get("key", "")).startswith("baseline-tune/")]
    done: dict[str, int] = defaultdict(int)
    stopped = 0
    for t in runs:
        done[t.user_attrs["job"]["key"]] += t.state == TrialState.COMPLETE
        stopped += t.state == TrialState.FAIL
    once = bool(done) and all(n == 1 for n in done.values()) and stopped == 0
    starts = [t.datetime_start.timestamp() for t in runs if t.datetime_start is not None]  # naive local time, as Optuna writes it
    return {"keys": sorted(done), "completions": dict(done), "stopped": stopped, "span": _span(runs), "once": once,
            "first_start": min(starts) if starts else None}  # fmt: skip


def analyse(storage: str) -> dict[str, Any]:
    """What the study recorded: counts, repeats, baselines, stage spans."""
    study = load_study(storage, STUDY)
    trials = study.get_trials(deepcopy=False)
    records = [TrialRecord.of(t) for t in trials]
    counted = finished_trials(study)
    return {
        "completed": len(counted),
        "repeated": repeated_pairs(trials),
        "declared_seeds": sum(1 for t, r in zip(trials, records) if counts_toward_total(t) and r.repeat_of is not None),
        "answered": sum(1 for r in records if r.answered_from),
        "trained": sum(1 for r in records if r.epochs_trained > 0),
        "surplus": sum(1 for r in records if r.surplus),
        "left_running": sum(1 for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)),
        "failed_unrecorded": sum(1 for t, r in zip(trials, records) if t.state == TrialState.FAIL and r.fail_reason is None and not r.surplus),
        "screening_seconds": _span([t for t in trials if TrialRecord.of(t).key]),
        "baselines": baseline_jobs(storage),
        "designs": len({r.key for r in records if r.key}),
    }


def run_case(case: Case, config: Path, pg: Postgres) -> dict[str, Any]:
    """One fresh study run by one ``cli.py search`` command; returns what :func:`analyse` reads, with timings."""
    if case.folder.exists():
        shutil.rmtree(case.folder)
    case.folder.mkdir(parents=True)
    storage = pg.database() if case.storage == "postgresql" else f"journal:{case.folder / 'study.log'}"
    command = [
        sys.executable, str(CLI), "search", str(config), "--storage", storage, "--artifacts", str(case.folder / "artifacts"),
        "--n-trials", str(case.trials), "--workers", str(case.workers), "--threads", str(case.threads),
        "--no-progress", "--no-confirm",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    load = os.getloadavg()[0]
    log = case.folder / "search.log"
    started, started_at = time.perf_counter(), time.time()
    with log.open("w") as fh:
        try:
            rc = subprocess.run(command, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT, check=False).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    wall = time.perf_counter() - started
    shown = " ".join(command[1:]).replace(str(ROOT) + "/", "")
    result: dict[str, Any] = {"key": case.key, "config": config_hash(), "command": shown, "rc": rc, "wall_seconds": round(wall, 1),
                              "load_before": round(load, 2), "date": datetime.datetime.now().isoformat(timespec="seconds")}  # fmt: skip
    if rc != 0:
        result["error"] = log.read_text(errors="replace")[-2000:]
        return result
    result.update(analyse(storage))
    first = result["baselines"]["first_start"]
    result["start_seconds"] = round(first - started_at, 1) if first is not None else None
    return result


def config_hash() -> str:
    """A short hash of :data:`CONFIG`: cached runs of another config are not reused."""
    return hashlib.sha256(json.dumps(CONFIG, sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------ table
def _hours(trials: int, seconds: float | None) -> str:
    return f"{3600 * trials / seconds:.0f}" if seconds else "-"


def _sec(seconds: float | None) -> str:
    return f"{seconds:.0f}" if seconds is not None else "-"


def row(r: Mapping[str, Any], case: Case, reference: Mapping[str, Any] | None) -> str:
    """One table row (columns of the module docstring)."""
    name = f"{case.storage} | {case.workers} × {case.threads}"
    if r.get("rc") != 0:
        return f"| {name} | failed (exit {r.get('rc')}) | | | | {_sec(r.get('wall_seconds'))} | | | | | | {r.get('load_before', '-')} |"
    b = r["baselines"]
    once = f"yes ({len(b['keys'])} runs)" if b["once"] else f"**no** ({b['completions']}, {b['stopped']} stopped)"
    ok = r["completed"] == case.trials and r["left_running"] == 0
    completed = f"{r['completed']}" if ok else f"**{r['completed']}** (left running {r['left_running']})"
    repeated = f"{r['repeated']}" if r["repeated"] == 0 else f"**{r['repeated']}**"
    ratio = f"{reference['wall_seconds'] / r['wall_seconds']:.2f}" if reference and reference.get("rc") == 0 else "-"
    return (
        f"| {name} | {completed} | {repeated} ({r['declared_seeds']} / {r['answered']}) | {once} | {r['wall_seconds']:.0f} | "
        f"{_hours(r['completed'], r['wall_seconds'])} | {ratio} | {_sec(r['screening_seconds'])} | "
        f"{_hours(r['completed'], r['screening_seconds'])} | {_sec(b['span'])} | {_sec(r.get('start_seconds'))} | {r['load_before']:.1f} |"
    )


HEADER = [
    (
        "| storage | workers × threads | trials | repeated (declared seeds / answered) | baselines once | wall (s) | trials/h | "
        "× 1 worker | screening (s) | trials/h (screening) | baselines (s) | start (s) | load |"
    ),
    "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
]


def problems(results: Mapping[str, Mapping[str, Any]], cases: Sequence[Case]) -> list[str]:
    """Broken invariants, one line each."""
    out = []
    for case in cases:
        r = results.get(case.key)
        if r is None:
            continue
        if r.get("rc") != 0:
            out.append(f"{case.key}: the command failed (exit {r.get('rc')}); log {case.folder / 'search.log'}:\n{r.get('error', '')}")
            continue
        if r["completed"] != case.trials:
            out.append(f"{case.key}: {r['completed']} trials counted, not {case.trials}")
        if r["left_running"]:
            out.append(f"{case.key}: {r['left_running']} trial(s) left running or waiting")
        if r["repeated"]:
            out.append(f"{case.key}: {r['repeated']} undeclared repeated pair(s)")
        if not r["baselines"]["once"]:
            out.append(f"{case.key}: baselines not trained once: {r['baselines']}")
        if r["failed_unrecorded"]:
            out.append(f"{case.key}: {r['failed_unrecorded']} trial(s) failed without a recorded reason")
    return out


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12, help="the study's total across workers (--n-trials)")
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker in the worker table")
    parser.add_argument("--storages", default=",".join(STORAGES), help="comma-separated: postgresql, journal")
    parser.add_argument("--pair-storage", default="postgresql",
                        help="storage of the 2 × 1 against 1 × 2 comparison (journal where PostgreSQL is skipped)")  # fmt: skip
    parser.add_argument("--no-pair", action="store_true", help="skip the 2 workers × 1 thread against 1 worker × 2 threads runs")
    parser.add_argument("--quick", action="store_true", help="a smoke: --trials 3 --workers 1,2 --no-pair")
    parser.add_argument("--redo", action="store_true", help="run the selected cases again instead of reading the cache")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.workers, args.no_pair = 3, "1,2", True
        if args.write:
            parser.error("--quick is a smoke; it does not --write")
    kinds = [s.strip() for s in args.storages.split(",") if s.strip()]
    if unknown := [k for k in kinds if k not in STORAGES]:
        parser.error(f"unknown storage(s) {unknown}; choose from {list(STORAGES)}")
    counts = [int(w) for w in args.workers.split(",")]
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    RUNS.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    config = WORK / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    cache: dict[str, Any] = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    cache = {k: v for k, v in cache.items() if v.get("config") == config_hash()}  # runs of another config are redone
    notes: list[str] = []
    with postgres() as pg:
        if pg.missing and "postgresql" in kinds:
            notes.append(f"PostgreSQL skipped: {pg.missing}")
            print(notes[-1], flush=True)
            kinds.remove("postgresql")
        cases = [Case(kind, n, args.threads, args.trials) for kind in kinds for n in counts]
        pair: list[Case] = []
        if not args.no_pair:
            kind = args.pair_storage if args.pair_storage in kinds else "journal"
            pair = [Case(kind, 1, 1, args.trials), Case(kind, 2, 1, args.trials), Case(kind, 1, 2, args.trials)]
        for case in [*cases, *[c for c in pair if c not in cases]]:
            if case.key in cache and not args.redo:
                continue
            print(f"{case.key}: running ...", flush=True)
            cache[case.key] = run_case(case, config, pg)
            CACHE.write_text(json.dumps(cache, indent=1))
            r = cache[case.key]
            print(f"{case.key}: exit {r['rc']}, {r['wall_seconds']:.0f} s, {r.get('completed', '-')} trials", flush=True)
    ran = [c for c in cases if c.key in cache]
    rows = [row(cache[c.key], c, cache.get(Case(c.storage, 1, c.threads, c.trials).key)) for c in ran]
    pair_rows = [row(cache[c.key], c, cache.get(pair[0].key)) for c in pair if c.key in cache]
    first = next((cache[c.key] for c in ran + pair if c.key in cache), None)
    flags = ["--quick"] if args.quick else []
    flags += [f"--trials {args.trials}"] if args.trials != 12 and not args.quick else []
    flags += [f"--workers {args.workers}"] if args.workers != "1,2,4" and not args.quick else []
    flags += [f"--threads {args.threads}"] if args.threads != 1 else []
    flags += [f"--storages {args.storages}"] if args.storages != ",".join(STORAGES) else []
    flags += [f"--pair-storage {args.pair_storage}"] if args.pair_storage != "postgresql" else []
    flags += ["--no-pair"] if args.no_pair and not args.quick else []
    text = "\n".join(
        [
            SECTION,
            "",
            (f"Fresh studies of a small search (`runs/benchmarks/workers/config.yaml`: `fashion_scenes`, 5 tasks, 2000 training "
             f"scenes, `small_cnn` 8/8/16, 3 epochs, TPE, no pruning) run to a total of {args.trials} trials by one command each "
             "that starts N local workers: "
             f"`{first['command'] if first else 'python cli.py search ...'}` (storage, folder and N, T per run). "
             "`--no-confirm`: the confirmation stage is not measured; wall time is the whole command (process start, data, "
             "the baselines, the screening); the screening column is the span of the search trials' own timestamps. "
             "PostgreSQL: a private local server without fsync, a new database per run; journal: a file on the local disk."),
            "",
            f"- command: `python benchmarks/workers.py{' ' + ' '.join(flags) if flags else ''}{'' if args.quick else ' --write'}`",
            f"- machine: {machine()}; load average before this invocation {load_before:.1f}; the load column is before each run",
            f"- date: {datetime.date.today().isoformat()}; this invocation {time.perf_counter() - started:.0f} s",
            *[f"- {note}" for note in notes],
            "",
            ("Columns: trials = trials counted toward the total (must equal the total); repeated = pairs of counted trials of "
             "one design, neither a declared extra seed (must be 0), then the declared extra seeds and the trials answered without "
             "training (from the study's runs of their design or from the baselines); baselines once = each baseline tuning job completed exactly once, none stopped; "
             "wall = the command's wall time; trials/h = trials over wall; × 1 worker = the 1-worker wall over this wall "
             "(same storage, higher is faster); screening = first search trial's start to the last one's end; baselines = "
             "first baseline run's start to the last one's end; start = the command's start to its first baseline run's start; "
                "load = 1-minute load average before the run."),
            "",
            "### Workers",
            "",
            *HEADER,
            *rows,
            *(
                [
                    "",
                    f"### {pair[0].storage}: 2 workers × 1 thread against 1 worker × 2 threads",
                    "",
                    "Same storage and total; × 1 worker is against 1 worker × 1 thread.",
                    "",
                    *HEADER,
                    *pair_rows,
                ]
                if pair_rows
                else []
            ),
        ]
    )
    print(text)
    broken = problems(cache, [*cases, *pair])
    if broken:
        print("\nBROKEN:\n" + "\n".join(broken))
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
