"""The job queue beside a search's study (:mod:`automtl.jobs`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from automtl.errors import BaselineError
from automtl.jobs import JobFailed, JobQueue
from automtl.study import JOBS_SUFFIX, open_storage, study_names

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture
def storage(tmp_path: Path) -> optuna.storages.BaseStorage:
    return open_storage(f"sqlite:///{tmp_path / 'jobs.db'}", create=True)


def _job(key: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "what": f"the job {key}", **extra}


class Recorder:
    """A handler that records its calls and returns ``{"twice": 2 * x}``; raises for ``fail``."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, job: Mapping[str, Any]) -> Mapping[str, Any]:
        self.calls.append(job["key"])
        if job.get("fail"):
            raise BaselineError(f"task 'a' of {job['key']} is no better than a constant")
        return {"twice": 2 * job["x"]}


def test_submit_enqueues_each_key_once(storage: optuna.storages.BaseStorage) -> None:
    queue = JobQueue(storage, "s")
    queue.submit([_job("a", x=1), _job("b", x=2), _job("a", x=99)])
    queue.submit([_job("a", x=1)])
    waiting = queue.study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["job"]["key"] for t in waiting] == ["a", "b"]
    assert queue.jobs() == [_job("a", x=1), _job("b", x=2)]
    # another worker's queue of the same study sees them: still nothing new to enqueue
    JobQueue(storage, "s").submit([_job("b", x=2)])
    assert len(queue.study.get_trials(states=(TrialState.WAITING,))) == 2


def test_claims_have_one_winner(storage: optuna.storages.BaseStorage) -> None:
    """The first claimant by trial number wins, whoever asks later and however often."""
    first, second = JobQueue(storage, "s"), JobQueue(storage, "s")
    assert first.claim("setup") is True
    assert second.claim("setup") is False and first.claim("setup") is False
    assert second.claim("other") is True  # claims are per name
    markers = [t for t in first.study.get_trials() if "claim" in t.user_attrs]
    assert [t.user_attrs["claim"] for t in markers] == ["setup", "setup", "setup", "other"]
    assert first.jobs() == [] and first.results() == {}  # markers are not jobs


def test_work_runs_each_waiting_job_once_and_stores_its_result(storage: optuna.storages.BaseStorage) -> None:
    queue, handler = JobQueue(storage, "s"), Recorder()
    queue.submit([_job("a", x=1), _job("b", x=2)])
    assert queue.work(handler) == 2
    assert sorted(handler.calls) == ["a", "b"]
    assert queue.results() == {"a": {"twice": 2}, "b": {"twice": 4}}
    assert queue.work(handler) == 0 and len(handler.calls) == 2
    queue.submit([_job("a", x=1)])  # done: not enqueued again
    assert queue.work(handler) == 0 and len(handler.calls) == 2
    assert JobQueue(storage, "s").results(["b"]) == {"b": {"twice": 4}}


def test_wait_returns_the_results_of_its_keys(storage: optuna.storages.BaseStorage) -> None:
    queue, handler = JobQueue(storage, "s"), Recorder()
    queue.submit([_job("b", x=2)])
    assert queue.wait([_job("c", x=3), _job("a", x=1)], handler) == {"a": {"twice": 2}, "c": {"twice": 6}}
    assert sorted(handler.calls) == ["a", "b", "c"]  # it submitted its own and ran whatever was waiting


def test_a_failing_job_fails_alone_and_wait_names_it(storage: optuna.storages.BaseStorage) -> None:
    queue, handler = JobQueue(storage, "s"), Recorder()
    queue.submit([_job("bad", fail=True), _job("good", x=5)])
    assert queue.work(handler) == 2
    states = {t.user_attrs["job"]["key"]: t.state for t in queue.study.get_trials() if "job" in t.user_attrs}
    assert states == {"bad": TrialState.FAIL, "good": TrialState.COMPLETE}
    assert queue.results() == {"good": {"twice": 10}}
    with pytest.raises(JobFailed) as info:
        queue.wait([_job("good", x=5), _job("bad", fail=True)], handler)
    assert "the job bad" in str(info.value) and "no better than a constant" in str(info.value)
    queue.submit([_job("bad", fail=True)])  # failed with a recorded reason: not retried
    assert queue.work(handler) == 0 and handler.calls.count("bad") == 1


def test_a_job_interrupted_is_submitted_again_by_the_next_wait(storage: optuna.storages.BaseStorage) -> None:
    queue = JobQueue(storage, "s")
    calls = {"n": 0}

    def interrupted_once(job: Mapping[str, Any]) -> Mapping[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return {"twice": 2 * job["x"]}

    with pytest.raises(KeyboardInterrupt):
        queue.wait([_job("a", x=1)], interrupted_once)
    assert [t.state for t in queue.study.get_trials() if "job" in t.user_attrs] == [TrialState.FAIL]
    assert queue.wait([_job("a", x=1)], interrupted_once) == {"a": {"twice": 2}}
    assert calls["n"] == 2


def test_a_handler_bug_is_not_swallowed(storage: optuna.storages.BaseStorage) -> None:
    def broken(job: Mapping[str, Any]) -> Mapping[str, Any]:
        raise ZeroDivisionError("a bug, not a bad input")

    queue = JobQueue(storage, "s")
    queue.submit([_job("a")])
    with pytest.raises(ZeroDivisionError):
        queue.work(broken)


def test_jobs_live_in_their_own_study(storage: optuna.storages.BaseStorage) -> None:
    search = optuna.create_study(storage=storage, study_name="s")
    queue = JobQueue(storage, "s")
    queue.submit([_job("a", x=1)])
    queue.work(Recorder())
    assert queue.study.study_name == "s" + JOBS_SUFFIX
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(storage)) == ["s", "s::jobs"]
    assert search.get_trials() == [] and len([t for t in queue.study.get_trials() if "job" in t.user_attrs]) == 1
    assert study_names(storage) == ["s"]
    other = JobQueue(storage, "t")  # another search's jobs are apart
    assert other.jobs() == [] and other.results() == {}
