"""Runs that belong to a search but are not samples of it: the baselines and the confirmation.

They live in a second Optuna study beside the search's, named ``<study>::jobs``
(:data:`automtl.study.JOBS_SUFFIX`), so that the sampler never sees them, and so that several
workers share them through the storage the same way they share trials:

* :meth:`JobQueue.submit` enqueues each job as a waiting trial whose ``user_attrs`` hold the
  job (a plain mapping with a unique ``"key"``), unless a job with that key is already waiting,
  running or done;
* :meth:`JobQueue.work` lets this worker run waiting jobs one at a time (a waiting trial is
  claimed atomically by the storage, so no job runs twice), with the heartbeat of
  :mod:`automtl.study`: a job whose worker was killed is failed, and the next
  :meth:`JobQueue.wait` submits it again;
* :meth:`JobQueue.wait` blocks until every job of a list of keys is done (running what it
  can meanwhile), and :meth:`JobQueue.results` returns what they recorded.

A job's handler returns a JSON-serializable result, stored in the job's ``user_attrs``. A job
whose handler raises an error automtl knows (:class:`~automtl.errors.AutoMTLError`) fails with
the reason recorded, and :meth:`wait` raises :class:`JobFailed` for it.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from automtl.errors import AutoMTLError
from automtl.study import JOBS_SUFFIX, MAX_RETRY

__all__ = ["JobFailed", "JobQueue"]

Handler = Callable[[Mapping[str, Any]], Mapping[str, Any]]

#: Seconds between two looks at the storage while other workers run the jobs waited for.
POLL_SECONDS = 1.0


class _NoJob(Exception):
    """The storage gave this worker a new trial instead of a waiting job (the queue ran dry)."""


class JobFailed(AutoMTLError):
    """A job failed with a recorded reason (the message names the job and the reason)."""


class JobQueue:
    """The jobs of study ``study_name`` in ``storage``.

    Args:
        storage: An opened storage (:func:`automtl.study.open_storage`).
        study_name: The search study's name; the jobs live in ``study_name + "::jobs"``.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, study_name: str) -> None:
        if optuna.logging.get_verbosity() < optuna.logging.WARNING:
            optuna.logging.set_verbosity(optuna.logging.WARNING)  # no note for loading the job study
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study = optuna.create_study(
                storage=storage, study_name=study_name + JOBS_SUFFIX, direction="minimize", load_if_exists=True
            )

    # --------------------------------------------------------------------------------- reading
    def _jobs(self) -> list[FrozenTrial]:
        return [t for t in self.study.get_trials(deepcopy=False) if "job" in t.user_attrs]

    def _by_key(self) -> dict[str, list[FrozenTrial]]:
        out: dict[str, list[FrozenTrial]] = {}
        for t in self._jobs():
            out.setdefault(t.user_attrs["job"]["key"], []).append(t)
        return out

    def results(self, keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """``{key: result}`` of the done jobs (all, or those of ``keys``)."""
        out = {}
        for key, trials in self._by_key().items():
            if keys is not None and key not in keys:
                continue
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            if done:
                out[key] = dict(done[0].user_attrs["result"])
        return out

    def jobs(self) -> list[dict[str, Any]]:
        """Every job submitted (once per key), in submission order."""
        seen: dict[str, dict[str, Any]] = {}
        for t in sorted(self._jobs(), key=lambda t: t.number):
            seen.setdefault(t.user_attrs["job"]["key"], dict(t.user_attrs["job"]))
        return list(seen.values())

    # --------------------------------------------------------------------------------- writing
    def claim(self, name: str) -> bool:
        """Whether this caller is the first to claim ``name``: one claimant wins, whatever the
        number of workers asking at the same moment (the first of its :meth:`tickets`)."""
        rank, _ = self.tickets(name)
        return rank == 0

    def tickets(self, name: str, **facts: Any) -> tuple[int, list[dict[str, Any]]]:
        """Take a ticket in the line ``name``; returns its rank (0: first) and every ticket of the
        line so far, oldest first, each a mapping of its ``facts`` (JSON values), ``host``,
        ``pid`` and ``time``.

        Each ticket is a finished marker trial (the storage numbers trials atomically); the line
        is in the order of their numbers. A later ticket always sees every earlier one, since
        its own number was given after the earlier ones were stored: workers asking at the same
        moment agree on the order.
        """
        token = uuid.uuid4().hex
        marker = {**facts, "claim": name, "token": token, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        self.study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.0, user_attrs=marker))
        line = self.line(name)
        return next(i for i, ticket in enumerate(line) if ticket["token"] == token), line

    def line(self, name: str) -> list[dict[str, Any]]:
        """The tickets of line ``name`` so far, oldest first (see :meth:`tickets`)."""
        markers = [t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get("claim") == name]
        return [dict(t.user_attrs) for t in sorted(markers, key=lambda t: t.number)]

    def submit(self, jobs: Sequence[Mapping[str, Any]]) -> None:
        """Enqueue each job unless one with its ``key`` is waiting, running, done, or failed with
        a recorded reason (a job that ended without a result, its worker interrupted or killed,
        is submitted again).
        Each key is claimed first (:meth:`claim`), so workers submitting together enqueue it once."""
        present = {
            key
            for key, trials in self._by_key().items()
            if any(t.state != TrialState.FAIL or "error" in t.user_attrs for t in trials)
        }
        for job in jobs:
            if job["key"] not in present and self.claim(f"submit/{job['key']}/{self._attempt(job['key'])}"):
                self.study.enqueue_trial({}, user_attrs={"job": dict(job)})
                present.add(job["key"])

    def _attempt(self, key: str) -> int:
        """How many times job ``key`` ended without a result (interrupted, or its worker killed twice):
        each new submission of it is a new claim."""
        return sum(1 for t in self._by_key().get(key, []) if t.state == TrialState.FAIL and "error" not in t.user_attrs)

    def work(self, handler: Handler) -> int:
        """Run waiting jobs until none is left; returns how many this worker ran.

        Raises:
            KeyboardInterrupt: Passed on after the running job is failed (it is retried later).
        """
        ran = 0

        def run(trial: optuna.Trial) -> float:
            job = trial.user_attrs.get("job")
            if job is None:
                raise _NoJob
            try:
                result = handler(job)
            except AutoMTLError as exc:
                trial.set_user_attr("error", str(exc))
                raise
            trial.set_user_attr("result", dict(result))
            return 0.0

        while any("job" in t.user_attrs for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))):
            self.study.optimize(run, n_trials=1, catch=(_NoJob, AutoMTLError))
            ran += 1
        return ran

    def wait(self, jobs: Sequence[Mapping[str, Any]], handler: Handler) -> dict[str, dict[str, Any]]:
        """Submit ``jobs`` (:meth:`submit`), run waiting jobs, and wait for the others until every
        one of ``jobs`` is done. A job that ended without a result (its worker interrupted) is
        submitted again.

        Returns:
            ``{key: result}`` for ``jobs``.

        Raises:
            JobFailed: A job failed with a recorded reason, or its workers were killed
                :data:`automtl.study.MAX_RETRY` + 1 times.
        """
        wanted = [j["key"] for j in jobs]
        while True:
            self.submit(jobs)
            self.work(handler)
            by_key = self._by_key()
            for key in wanted:
                trials = by_key.get(key, [])
                failed = [t for t in trials if t.state == TrialState.FAIL and "error" in t.user_attrs]
                if failed:
                    raise JobFailed(f"{failed[0].user_attrs['job'].get('what', key)}: {failed[0].user_attrs['error']}")
                ended = [t for t in trials if t.state == TrialState.FAIL and "error" not in t.user_attrs]
                if len(ended) > MAX_RETRY + 1 and not any(t.state != TrialState.FAIL for t in trials):
                    what = trials[0].user_attrs["job"].get("what", key)
                    raise JobFailed(f"{what}: its workers were stopped {len(ended)} times before it finished; run again")
            done = self.results(wanted)
            if len(done) == len(wanted):
                return done
            time.sleep(POLL_SECONDS)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
