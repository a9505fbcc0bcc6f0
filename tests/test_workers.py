"""Many workers, one study: exact totals, no repeated candidates, baselines trained once,
distinct sampler seeds, workers started in the same second, and workers killed at random.

Every test runs against a SQLite file, a journal file and a PostgreSQL database (the session's
private server, :mod:`tests.postgres`). The SQLite and journal files live on a RAM disk where one
exists (``/dev/shm``): the storages behave the same, without a disk sync per commit.
Worker processes are real ``python cli.py search`` processes (or :func:`automtl.run_workers`'
spawned ones) that import this worktree's package (``PYTHONPATH``).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState

from automtl.config import load_config, parse_config
from automtl.errors import StorageError
from automtl.export import export_trial
from automtl.search import MAX_SCREEN_RUNS, run_search
from automtl.study import (
    JOBS_SUFFIX,
    MAX_RETRY,
    TrialRecord,
    counts_toward_total,
    finished_trials,
    load_study,
    open_storage,
)
from automtl.workers import run_workers
from tests.conftest import set_key, tiny_raw

pytestmark = pytest.mark.slow  # every test here runs real searches in several processes

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "cli.py"
STORAGES = ("sqlite", "journal", "postgresql")
#: Short heartbeat settings for the worker processes, so a killed worker's trial is retried in seconds.
HEARTBEAT_ENV = {"AUTOMTL_HEARTBEAT_INTERVAL": "1", "AUTOMTL_GRACE_PERIOD": "3"}


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of a worker process: this worktree's package first, one torch thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh folder on a RAM disk where there is one (else under ``tmp_path``)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        path = Path(tempfile.mkdtemp(prefix="automtl-workers-", dir=shm))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path / "fast"


@pytest.fixture(params=STORAGES)
def storage(request: pytest.FixtureRequest, fast_dir: Path) -> str:
    """A new, empty storage of each kind: SQLite file, journal file, PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{fast_dir / 'study.db'}"
    if request.param == "journal":
        return f"journal:{fast_dir / 'study.log'}"
    return str(request.getfixturevalue("postgres_url"))


def workers_raw(tmp_path: Path, storage: str, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The tiny test search on ``storage``, its weights in ``tmp_path / "artifacts"``."""
    raw = tiny_raw(tmp_path)
    set_key(raw, "search.storage", storage)
    set_key(raw, "search.artifacts", str(tmp_path / "artifacts"))
    set_key(raw, "search.confirm", {"top_k": 1, "seeds": 1})
    for key, value in (changes or {}).items():
        set_key(raw, key, value)
    return raw


def write_config(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------ the checks
def jobs_study(storage: str, study_name: str) -> optuna.Study:
    return optuna.load_study(study_name=study_name + JOBS_SUFFIX, storage=open_storage(storage))


def repeated_pairs(trials: Sequence[FrozenTrial]) -> int:
    """Pairs of trained trials of one design where neither is a declared extra seed (``repeat_of``)."""
    undeclared: dict[str, int] = defaultdict(int)
    for t in trials:
        record = TrialRecord.of(t)
        if record.key and counts_toward_total(t) and record.repeat_of is None:
            undeclared[record.key] += 1
    return sum(n * (n - 1) // 2 for n in undeclared.values())


def check_trained_once(trials: Sequence[FrozenTrial]) -> None:
    """No design trained more than MAX_SCREEN_RUNS times; every extra run names the first
    (``repeat_of``: the first run's number, or the number of the trial it retries)."""
    assert repeated_pairs(trials) == 0
    runs: dict[str, list[FrozenTrial]] = defaultdict(list)
    for t in trials:
        if TrialRecord.of(t).key and counts_toward_total(t):
            runs[TrialRecord.of(t).key].append(t)
    for same in runs.values():
        assert len(same) <= MAX_SCREEN_RUNS
        first = [t for t in same if TrialRecord.of(t).repeat_of is None]
        assert len(first) == 1
        names = {first[0].number, *first[0].system_attrs.get("retry_history", [])}
        assert all(TrialRecord.of(t).repeat_of in names for t in same if t is not first[0])


def check_jobs_once(storage: str, study_name: str) -> dict[str, int]:
    """Every job (baseline tuning, confirmation) completed exactly once; returns ``{key: completions}``."""
    done: dict[str, int] = defaultdict(int)
    submitted = set()
    for t in jobs_study(storage, study_name).get_trials(deepcopy=False):
        if "job" in t.user_attrs:
            submitted.add(t.user_attrs["job"]["key"])
            done[t.user_attrs["job"]["key"]] += t.state == TrialState.COMPLETE
    assert submitted and {key: done[key] for key in submitted} == dict.fromkeys(submitted, 1)
    assert any(key.startswith("baseline-tune/") for key in submitted)
    return dict(done)


def sampler_seeds(storage: str, study_name: str) -> dict[int, int]:
    """``{pid: sampler seed}`` of every worker process that ran the study (its won seed claim)."""
    claims: dict[str, list[FrozenTrial]] = defaultdict(list)
    for t in jobs_study(storage, study_name).get_trials(deepcopy=False):
        name = t.user_attrs.get("claim", "")
        if name.startswith("sampler-seed/"):
            claims[name].append(t)
    seeds: dict[int, int] = {}
    for name, markers in claims.items():
        winner = min(markers, key=lambda t: t.number)
        assert winner.user_attrs["pid"] not in seeds, "a worker holds two sampler seeds"
        seeds[winner.user_attrs["pid"]] = int(name.split("/", 1)[1])
    return seeds


def check_study(storage: str, study_name: str, total: int) -> optuna.Study:
    """The invariants of a study that many workers ran to ``total``."""
    study = load_study(storage, study_name)
    trials = study.get_trials(deepcopy=False)
    assert len(finished_trials(study)) == total
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    check_trained_once(trials)
    check_jobs_once(storage, study_name)
    return study


# ---------------------------------------------------------------------------------------- tests
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask and tell, by hand, on a storage with a heartbeat
def test_runs_of_a_design_are_taken_in_line_whatever_the_interleaving(tmp_path: Path) -> None:
    """The no-repeat rule under the worst interleaving: three trials of one design decide before
    any of them has recorded its design (three workers at the same moment): the first trains,
    the second trains as a declared extra seed of the first, the third is answered from the
    study. A retry copy of the first, after it was stopped, takes its place in the line."""
    from types import SimpleNamespace

    from automtl.jobs import JobQueue
    from automtl.screening import Screen as _Screen
    from automtl.study import retry_trial

    storage = open_storage(f"sqlite:///{tmp_path / 'line.db'}", create=True)
    study = optuna.create_study(storage=storage, study_name="line")
    screen = _Screen(SimpleNamespace(study=study, jobs=JobQueue(storage, "line")))  # type: ignore[arg-type]
    a, b, c = (study.ask() for _ in range(3))
    decisions = [screen._take_run(t.number, "design") for t in (a, b, c)]
    assert [(trains, first) for trains, first, _ in decisions] == [(True, None), (True, a.number), (False, a.number)]
    study.tell(a, state=TrialState.FAIL)  # stopped without a result
    retry_trial(study, study.trials[a.number])
    copy = study.ask()
    assert study.trials[copy.number].system_attrs["retry_history"] == [a.number]
    assert screen._take_run(copy.number, "design")[:2] == (True, None)
    assert screen._take_run(study.ask().number, "design")[:2] == (False, copy.number)


def test_workers_share_one_study_and_another_folder_reads_it(storage: str, tmp_path: Path) -> None:
    """``run_workers`` (spawned processes): the study's total is exact with 3 workers, no design
    is trained twice undeclared, every job ran once, each worker had its own sampler seed; then
    ``export`` and ``show`` in another folder, with only the storage URL and ``--artifacts``,
    reproduce an export made beside the study."""
    config = parse_config(workers_raw(tmp_path, storage), trust_code=True)
    first = run_search(config, n_trials=2, confirm=False, progress=False)  # baselines and the obvious designs
    for _ in range(4):  # the same design proposed 4 more times, to 3 workers at once: trained once more, no more
        first.enqueue_trial(dict(first.trials[0].params))
    lines: list[str] = []
    run_workers(config, 3, n_trials=6, progress=False, echo=lines.append, threads=1)
    study = check_study(storage, "tiny", 6)
    same = [TrialRecord.of(t) for t in study.trials if TrialRecord.of(t).key == TrialRecord.of(study.trials[0]).key]
    assert len([r for r in same if r.epochs_trained]) == MAX_SCREEN_RUNS
    assert len([r for r in same if r.answered_from == "study"]) == 5 - MAX_SCREEN_RUNS
    seeds = sampler_seeds(storage, "tiny")
    assert len(seeds) == 4 and len(set(seeds.values())) == 4  # this process's and the 3 workers'
    assert len([line for line in lines if line.startswith("trial ")]) == len(
        [t for t in study.trials if not TrialRecord.of(t).surplus and t.state != TrialState.FAIL]
    )
    here = export_trial(study, storage, tmp_path / "here", trust_code=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import sys, cli; "
        f"sys.exit(cli.main(['export', '--trust-code', '--storage', {storage!r}, '--artifacts', {str(tmp_path / 'artifacts')!r}, "
        "'--out', 'bundle']) or cli.main(['show', '--storage', "
        f"{storage!r}, '--artifacts', {str(tmp_path / 'artifacts')!r}]) or cli.main(['evaluate', '--trust-code', 'bundle', '--split', 'test']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=elsewhere, env=worker_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    there = yaml.safe_load((elsewhere / "bundle" / "metrics.json").read_text())
    for key in ("design", "trial", "val", "test", "n_params", "selection"):
        assert there[key] == here[key], key
    assert "study 'tiny'" in done.stdout and here["design"] in done.stdout
    for task, value in here["test"].items():
        assert f'"{task}": {value!r}' in done.stdout or f'"{task}": {value}' in done.stdout  # evaluate reproduces it


#: A space of 12 designs (one balancer, one rate, groups and tasks leave only before the heads):
#: 8 workers drawing from it at once propose the same design often.
SMALL_SPACE = {"train.lr": 0.00681, "space.balancers": ["equal"], "space.group_split_points": [3], "space.task_split_points": [3]}


def test_eight_processes_started_in_the_same_second(storage: str, tmp_path: Path) -> None:
    """8 separate ``automtl search`` processes (no --worker-index: the harder race) on a new
    storage and a small space: all exit 0, the total is exact, no design is trained more than
    twice or twice undeclared, every job ran once, 8 distinct sampler seeds."""
    config = write_config(tmp_path, workers_raw(tmp_path, storage, SMALL_SPACE))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    command = [sys.executable, str(CLI), "search", str(config), "--trust-code", "--n-trials", "8", "--no-progress", "--threads", "1"]
    procs = [
        subprocess.Popen(command, cwd=cwd, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=400) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    check_study(storage, "tiny", 8)
    assert len(set(sampler_seeds(storage, "tiny").values())) == 8


# ------------------------------------------------------------------------------------------ chaos
#: SQLite and PostgreSQL with both signals; the journal file with kill -9 (its own heartbeat:
#: the path that differs), to keep the file's time in bounds.
CHAOS_CASES = [
    pytest.param(kind, sig, id=f"{kind}-{name}")
    for kind, sig, name in [
        ("sqlite", signal.SIGKILL, "kill-9"),
        ("sqlite", signal.SIGTERM, "sigterm"),
        ("postgresql", signal.SIGKILL, "kill-9"),
        ("postgresql", signal.SIGTERM, "sigterm"),
        ("journal", signal.SIGKILL, "kill-9"),
    ]
]
CHAOS_ROUNDS = 5
CHAOS_TOTAL = 12


def _start_worker(config: Path, cwd: Path, index: int) -> subprocess.Popen[str]:
    command = [sys.executable, str(CLI), "search", str(config), "--trust-code", "--no-progress", "--threads", "1", "--worker-index", str(index)]
    return subprocess.Popen(
        command, cwd=cwd, env=worker_env(**HEARTBEAT_ENV), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _trials(storage: str) -> list[FrozenTrial]:
    try:
        return optuna.load_study(study_name="tiny", storage=open_storage(storage)).get_trials(deepcopy=False)
    except (KeyError, StorageError):  # not created yet
        return []


def _finished(trials: Sequence[FrozenTrial]) -> dict[int, TrialState]:
    return {t.number: t.state for t in trials if counts_toward_total(t)}


def _stopped(t: FrozenTrial) -> bool:
    """A trial that ended without a result: its worker was stopped (interrupted, or killed and failed by the heartbeat)."""
    record = TrialRecord.of(t)
    return t.state == TrialState.FAIL and record.fail_reason is None and not record.surplus


def _wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


#: Seconds a worker lives before it may be stopped: time to reach ``cli.main``, which turns
#: SIGTERM into an interrupt (before that, Python's default action ends the process silently).
SETTLE_SECONDS = 1.0


def _settled(procs: Sequence[subprocess.Popen[str]], born: dict[int, float]) -> list[subprocess.Popen[str]]:
    """The running workers started at least :data:`SETTLE_SECONDS` ago."""
    now = time.monotonic()
    return [p for p in procs if p.poll() is None and now - born[p.pid] >= SETTLE_SECONDS]


def check_retried(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Every trial that ended without a result failed and was retried once: a WAITING copy naming
    it in ``retry_history`` was enqueued and then run (a copy stopped again is not retried
    again: :data:`automtl.study.MAX_RETRY`). Returns the stopped trials."""
    copies = {t.system_attrs["failed_trial"]: t for t in trials if "failed_trial" in t.system_attrs}
    stopped = [t for t in trials if _stopped(t)]
    for t in stopped:
        history = t.system_attrs.get("retry_history", [])
        if len(history) >= MAX_RETRY:
            continue
        copy = copies.get(t.number)
        assert copy is not None, f"trial {t.number} was not retried"
        assert copy.system_attrs["retry_history"] == [t.number]
        assert t.params.items() <= copy.params.items()  # what it had drawn before it stopped, and the rest
        assert copy.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL), copy.state
    return stopped


@pytest.mark.parametrize(("kind", "sig"), CHAOS_CASES)
def test_workers_killed_at_random_moments(kind: str, sig: signal.Signals, tmp_path: Path, fast_dir: Path,
                                          request: pytest.FixtureRequest) -> None:  # fmt: skip
    """3 workers; 5 times, one of them is stopped at a random (seeded) moment and a new one
    joins. No finished trial is lost; every trial that was running in a stopped worker fails
    (SIGTERM: at once, as ``interrupted``, with one printed line) and is retried; after a rerun
    to the same total, the total is exact and no design was trained twice undeclared."""
    storage = {
        "sqlite": f"sqlite:///{fast_dir / 'study.db'}",
        "journal": f"journal:{fast_dir / 'study.log'}",
    }.get(kind) or request.getfixturevalue("postgres_url")
    raw = workers_raw(tmp_path, storage, {"tasks": {"b": {"loss": "tests.helpers:sleepy_loss"}},
                                          "search.n_trials": CHAOS_TOTAL})  # fmt: skip
    config = write_config(tmp_path, raw)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    rng = random.Random(f"{kind}/{sig.name}")
    procs = [_start_worker(config, cwd, i) for i in range(3)]
    born = {p.pid: time.monotonic() for p in procs}
    stopped: list[subprocess.Popen[str]] = []
    kept: dict[int, TrialState] = {}
    interrupted: list[int] = []  # SIGTERM: the trials failed as interrupted at once
    try:
        _wait_for(lambda: bool(_trials(storage)) or all(p.poll() is not None for p in procs), 120)
        for _ in range(CHAOS_ROUNDS):
            time.sleep(rng.uniform(0.2, 1.5))
            if all(p.poll() is not None for p in procs):
                break
            _wait_for(lambda: bool(_settled(procs, born)) or all(p.poll() is not None for p in procs), 30)
            alive = _settled(procs, born)
            if not alive:
                break
            victim = rng.choice(alive)
            before = _trials(storage)
            kept = _finished(before)
            victim.send_signal(sig)
            out, err = victim.communicate(timeout=30)
            stopped.append(victim)
            after = _trials(storage)
            if sig == signal.SIGTERM and not (victim.returncode == -signal.SIGTERM and "study 'tiny':" in out):
                # (a worker that had finished and was exiting ends as Python does by default)
                assert victim.returncode == 130, (time.monotonic() - born[victim.pid], err, out[-500:])
                assert err.strip() == "automtl search: interrupted; finished trials are kept in the storage", err
                was_running = {t.number for t in before if t.state == TrialState.RUNNING}
                for t in after:
                    if t.number in was_running and _stopped(t):
                        assert TrialRecord.of(t).interrupted == "interrupted", t.number
                        interrupted.append(t.number)
            assert all(_finished(after).get(n) == state for n, state in kept.items()), "a finished trial was lost"
            procs.append(_start_worker(config, cwd, len(procs)))
            born[procs[-1].pid] = time.monotonic()
        for p in procs:
            p.wait(timeout=240)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p in procs:
        if p not in stopped:
            _, err = p.communicate()
            assert p.returncode == 0, err
    assert len(stopped) == CHAOS_ROUNDS, "the search ended before every round ran; raise CHAOS_TOTAL"
    rerun = run_search(load_config(config, trust_code=True), progress=False)
    assert len(finished_trials(rerun)) == CHAOS_TOTAL
    study = check_study(storage, "tiny", CHAOS_TOTAL)
    trials = study.get_trials(deepcopy=False)
    assert all(_finished(trials).get(n) == state for n, state in kept.items())
    failed = check_retried(trials)
    stopped_jobs = [t for t in jobs_study(storage, "tiny").get_trials(deepcopy=False)
                    if "job" in t.user_attrs and t.state == TrialState.FAIL and "error" not in t.user_attrs]  # fmt: skip
    assert failed or stopped_jobs, "no stop hit a running trial or job: the test tested nothing"
    if sig == signal.SIGTERM:
        assert interrupted or stopped_jobs
