"""Several local worker processes on one study (``automtl search --workers N``).

Each worker is :func:`automtl.search.run_search` in its own process, with its index (its sampler
seed, :func:`automtl.seeds.sampler_seed`), its device (``devices[i % len(devices)]``) and its
torch thread count (``threads``, else the machine's cores divided by the workers). They share
the study through its storage: ``n_trials`` is the study's total, baselines and confirmation
runs are jobs any worker takes (:mod:`automtl.jobs`), and a worker that dies leaves its trial
to the heartbeat (:mod:`automtl.study`). This process draws one progress bar over the study's
total and prints a line per finished trial, read from the storage.

Workers on other machines join the same study with ``automtl search CONFIG --storage URL
--artifacts DIR --worker-index I`` (a distinct ``I`` per machine keeps their samplers apart).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from automtl.config import SearchConfig
from automtl.errors import AutoMTLError, ConfigError
from automtl.study import TrialRecord, counts_toward_total, load_study, open_storage

__all__ = ["WorkerFailed", "default_threads", "run_workers"]

#: Seconds between two looks at the storage for the progress bar.
POLL_SECONDS = 1.0


class WorkerFailed(AutoMTLError):
    """A worker process stopped with an error (the message is that error's, one line)."""


def default_threads(workers: int) -> int:
    """Torch intra-op threads per worker: the cores this process may use, divided by the workers (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def _worker(config: SearchConfig, index: int, kwargs: dict[str, Any], errors: Any) -> None:
    """One worker process: run the search silently; report an error as one line."""
    from automtl.search import run_search

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards Ctrl-C as SIGTERM
    try:
        run_search(config, worker=index, progress=False, echo=None, **kwargs)
    except KeyboardInterrupt:
        errors.put((index, "interrupted"))
    except (AutoMTLError, ValueError, LookupError, FileNotFoundError, ImportError) as exc:
        errors.put((index, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
    except Exception as exc:  # noqa: BLE001  # an unexpected error in a child: reported as one line, not lost
        where = traceback.extract_tb(exc.__traceback__)[-1]
        errors.put((index, f"{type(exc).__name__}: {exc} ({os.path.basename(where.filename)}:{where.lineno})"))


def run_workers(
    config: SearchConfig,
    workers: int,
    *,
    devices: Sequence[str] | None = None,
    threads: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    **search: Any,
) -> optuna.Study:
    """Run the search with ``workers`` local processes on one study; returns the study.

    Args:
        config: The search configuration (its storage must be a file or a server every worker
            reaches: SQLite, a journal file, PostgreSQL, MySQL).
        workers: How many processes.
        devices: One device per worker, cycled (``["cuda:0", "cuda:1"]``); default the config's.
        threads: Torch threads per worker (default ``config.threads``, else :func:`default_threads`).
        progress: Draw one progress bar over the study's total.
        echo: Where to print a line per finished trial (default: above the bar).
        **search: Passed to :func:`automtl.search.run_search` (``n_trials``, ``storage``,
            ``study_name``, ``seed``, ``confirm``, ``artifacts``, ``timeout``...).

    Raises:
        ConfigError: ``workers < 1``, or an in-memory storage.
        WorkerFailed: A worker stopped with an error (the first one's message).
        KeyboardInterrupt: Ctrl-C or SIGTERM here: every worker is stopped with SIGTERM first
            (its running trial fails as interrupted and is retried by the next run).
    """
    if workers < 1:
        raise ConfigError("--workers", f"must be an integer >= 1, got {workers}")
    overrides = {k: search.pop(k) for k in ("storage", "study_name", "seed", "device") if search.get(k) is not None}
    config = replace(config, **overrides)
    if config.storage == "sqlite:///:memory:":
        raise ConfigError("search.storage", "several workers need a storage they all reach, not sqlite:///:memory:")
    per_worker = threads or config.threads or default_threads(workers)
    devices = list(devices) if devices else [config.device]
    _check(config, devices, echo if echo is not None else (print if progress else None))
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(config, i, {**search, "threads": per_worker, "device": devices[i % len(devices)]}, errors),
            name=f"automtl-worker-{i}",
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    target = search.get("n_trials") or config.n_trials
    try:
        _follow(config, procs, target, progress, echo)
    except KeyboardInterrupt:
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker fails its running trial as interrupted
        for p in procs:
            p.join()
        raise
    for p in procs:
        p.join()
    failed = []
    while not errors.empty():
        failed.append(errors.get())
    failed += [(i, f"exit code {p.exitcode}") for i, p in enumerate(procs) if p.exitcode and i not in dict(failed)]
    if failed:
        index, message = min(failed)
        raise WorkerFailed(f"worker {index}: {message}")
    return load_study(config.storage, config.study_name)


def _check(config: SearchConfig, devices: Sequence[str], say: Callable[[str], None] | None) -> None:
    """Fail here, once, on what every worker would fail on (config, data, devices); show the data."""
    from automtl.build import resolve_device
    from automtl.data import describe_data
    from automtl.experiment import prepare
    from automtl.space import SearchSpace

    for device in devices:
        try:
            resolve_device(device)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError("--devices", str(exc)) from exc
    experiment = prepare(config)
    SearchSpace(config, experiment.data.task_names, experiment.backbone.n_blocks)
    if say is not None:
        say(describe_data(experiment.data, ("train", "val")))


def _follow(config: SearchConfig, procs: Sequence[Any], target: int, progress: bool, echo: Callable[[str], None] | None) -> None:
    """Until every worker exits: the progress bar over the study's total and a line per finished trial."""
    from automtl.report import trial_line

    bar = tqdm(total=target, desc=f"search {config.study_name}", unit="trial", disable=not progress)
    write = echo or (bar.write if progress else None)
    shown: set[int] = set()
    study: optuna.Study | None = None
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(POLL_SECONDS)
            if study is None:
                try:
                    study = optuna.load_study(study_name=config.study_name, storage=open_storage(config.storage))
                except (KeyError, AutoMTLError):
                    continue  # not created yet
            names = list(study.user_attrs.get("objective_names") or ["value"])
            trials = study.get_trials(deepcopy=False)
            bar.n = min(target, sum(counts_toward_total(t) for t in trials))
            bar.refresh()
            for t in trials:
                if t.number in shown or t.state in (TrialState.RUNNING, TrialState.WAITING) or TrialRecord.of(t).surplus:
                    continue
                shown.add(t.number)
                if write is not None:
                    write(trial_line(t, names))
    finally:
        bar.close()
