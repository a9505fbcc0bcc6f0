"""The study record: storages, the artifact store, and what a trial records (one home).

Everything that reads or writes a study goes through this module: :mod:`automtl.search`
(which runs it), :mod:`automtl.report`, :mod:`automtl.export` and :mod:`automtl.plots` (which
read it). A trial's record is one typed :class:`TrialRecord`, written with
:meth:`TrialRecord.save` and read with :meth:`TrialRecord.of`; the study's own facts (its
configuration, the baselines, the confirmation) are read and written by the functions here.

**Storages** (:func:`open_storage`), by URL:

* ``sqlite:///path.db`` (the default, ``sqlite:///runs/automtl.db``);
* ``postgresql://user:pass@host:port/db`` (psycopg 3: ``pip install 'automtl[postgres]'``;
  ``postgresql+psycopg2://`` also works where psycopg2 is installed);
* ``mysql+DRIVER://...`` through SQLAlchemy, where that driver is installed;
* ``journal:path/to/file.log`` (relative) or ``journal:///abs/path.log``: Optuna's
  :class:`~optuna.storages.JournalStorage` with a file backend, for a shared filesystem.

Every storage has a heartbeat: a worker's running trial records it every
:data:`HEARTBEAT_INTERVAL` seconds, and a trial whose heartbeat is older than
:data:`GRACE_PERIOD` seconds (its worker was killed) is failed by the next worker and retried
once (Optuna's ``RetryHeartbeatStaleTrialCallback``). Optuna's RDB storages have this built in;
for journal files :class:`HeartbeatJournalStorage` adds it, with each worker's wall clock (keep
the clocks of a cluster in sync).

**Artifacts** (trial weights, baseline weights) live in a folder every worker and every later
``show``/``export`` reaches (:func:`artifact_dir`): ``--artifacts DIR`` / ``search.artifacts``,
else next to a SQLite or journal file (``<file>.artifacts/``). A PostgreSQL or MySQL storage
needs one given. The folder is recorded in the study.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import (
    BaseStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from automtl.errors import StorageError

__all__ = [
    "GRACE_PERIOD",
    "HEARTBEAT_INTERVAL",
    "JOBS_SUFFIX",
    "MAX_RETRY",
    "DesignRuns",
    "HeartbeatJournalStorage",
    "TrialRecord",
    "active_runs",
    "artifact_dir",
    "counted_before",
    "counts_toward_total",
    "designs",
    "finished_trials",
    "is_multi_objective",
    "load_study",
    "objective_names",
    "open_storage",
    "pareto_front",
    "read_attr",
    "retry_trial",
    "storage_path",
    "study_config",
    "study_names",
    "write_attr",
]

#: Seconds between two heartbeats of a running trial (environment: ``AUTOMTL_HEARTBEAT_INTERVAL``).
HEARTBEAT_INTERVAL = int(os.environ.get("AUTOMTL_HEARTBEAT_INTERVAL", "5"))
#: Seconds without a heartbeat after which a running trial is taken for dead, failed and retried
#: (environment: ``AUTOMTL_GRACE_PERIOD``).
GRACE_PERIOD = int(os.environ.get("AUTOMTL_GRACE_PERIOD", "20"))
#: How often a trial whose worker died is retried.
MAX_RETRY = 1
#: The suffix of the study that holds a search's baseline and confirmation runs (:mod:`automtl.jobs`).
JOBS_SUFFIX = "::jobs"

_SQLITE = "sqlite:///"


# ----------------------------------------------------------------------------------------- storages
def storage_path(url: str) -> Path | None:
    """The file of a SQLite or journal storage URL; ``None`` for a server or in-memory storage."""
    if url.startswith(_SQLITE) and url != "sqlite:///:memory:":
        return Path(url[len(_SQLITE) :])
    if url.startswith("journal:"):
        rest = url[len("journal:") :]
        return Path(rest[2:] if rest.startswith("///") else rest)
    return None


def _check_sqlite_file(url: str, path: Path) -> None:
    if path.is_dir():
        raise StorageError(f"storage {url}: {path} is a directory, not a SQLite file")
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise StorageError(f"storage {url}: {path} is not a SQLite database")


def _require_driver(url: str, module: str, extra: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise StorageError(f"storage {url}: needs the Python package '{module}' ({extra})") from exc


def _sql_url(url: str) -> str:
    """``url`` with the SQLAlchemy driver automtl uses, after checking that it is installed."""
    scheme = url.split("://", 1)[0]
    if scheme in ("postgresql", "postgres"):
        _require_driver(url, "psycopg", "pip install 'automtl[postgres]'")
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    drivers = {
        "postgresql+psycopg": "psycopg",
        "postgresql+psycopg2": "psycopg2",
        "mysql": "MySQLdb",
        "mysql+mysqldb": "MySQLdb",
        "mysql+pymysql": "pymysql",
        "mysql+mysqlconnector": "mysql.connector",
    }
    if scheme in drivers:
        _require_driver(url, drivers[scheme], f"pip install the driver of '{scheme}'")
        return url
    if scheme == "sqlite":
        return url
    raise StorageError(
        f"storage {url}: unknown URL scheme '{scheme}'; use sqlite:///FILE, postgresql://..., "
        "mysql+DRIVER://... or journal:FILE"
    )


_HEARTBEAT = "automtl:heartbeat"


class _RetryOnce(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial (a WAITING copy with ``retry_history``), for search trials.

    The copy leaves the dead worker's heartbeat behind: a journal storage keeps it among the
    system attributes, and a copied heartbeat would make the copy stale the moment a worker
    takes it. A stale job of a job study (:mod:`automtl.jobs`) is not copied: its queue submits
    it again through a claim, so that it is enqueued once however many workers see it stale.
    """

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if study.study_name.endswith(JOBS_SUFFIX):
            return
        trial = copy.deepcopy(trial)
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != _HEARTBEAT}
        super().__call__(study, trial)


class _SilentTrials:
    """Running trials that never recorded a heartbeat: their worker died after taking the trial
    and before its first heartbeat (Optuna starts the heartbeat thread after ``ask``). Without
    a heartbeat Optuna never takes them for stale, and every worker would wait for them for
    ever; here they are stale once this process has seen them silent for the grace period (its
    own monotonic clock, so no clock is compared with another machine's)."""

    def __init__(self, grace_period: int) -> None:
        self._silent_grace = grace_period
        self._silent_since: dict[int, float] = {}

    def silent_stale(self, silent: Iterable[int]) -> list[int]:
        now = time.monotonic()
        silent = set(silent)
        self._silent_since = {t: self._silent_since.get(t, now) for t in silent}
        return [t for t, since in self._silent_since.items() if now - since > self._silent_grace]


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal-file storage with a heartbeat, so a killed worker's trial is retried.

    A running trial's heartbeat is the wall-clock time (``time.time()``, seconds) in its system
    attribute ``automtl:heartbeat``; a running trial whose heartbeat is older than
    ``grace_period`` is stale, and so is one that this process has seen running without any
    heartbeat for ``grace_period`` seconds. Optuna's optimize loop then fails it and calls the
    retry callback, as for its RDB storages.
    """

    def __init__(self, path: str, heartbeat_interval: int, grace_period: int, retry: Callable[..., None]) -> None:
        super().__init__(JournalFileBackend(path))
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = grace_period
        self._retry = retry
        self._silent = _SilentTrials(grace_period)

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, _HEARTBEAT, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        beating = [t for t in running if _HEARTBEAT in t.system_attrs]
        stale = [t._trial_id for t in beating if now - float(t.system_attrs[_HEARTBEAT]) > self._grace_period]
        return stale + self._silent.silent_stale(t._trial_id for t in running if _HEARTBEAT not in t.system_attrs)

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[..., None] | None:
        return self._retry


class _RDBStorage(RDBStorage):
    """Optuna's RDB storage, with two repairs for many workers.

    * A running trial without a heartbeat is stale after the grace period (:class:`_SilentTrials`).
    * SQLite: every transaction starts with ``BEGIN IMMEDIATE``. Python's ``sqlite3`` otherwise
      begins a transaction only at the first write, so the read in Optuna's check-and-set of a
      waiting trial (``SELECT ... FOR UPDATE``, which SQLite ignores) happens outside it, and two
      workers can both take the same waiting trial (or job) and run it twice.
    """

    def __init__(self, url: str, grace_period: int, **kwargs: Any) -> None:
        super().__init__(url, grace_period=grace_period, **kwargs)
        self._silent = _SilentTrials(grace_period)
        self._immediate_transactions()

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._immediate_transactions()

    def _immediate_transactions(self) -> None:
        import sqlalchemy

        if self.engine.dialect.name != "sqlite":
            return
        self.engine.dispose()  # the connections opened while creating the schema; new ones get the listeners

        def on_connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None  # the driver emits no BEGIN of its own

        def on_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        sqlalchemy.event.listen(self.engine, "connect", on_connect)
        sqlalchemy.event.listen(self.engine, "begin", on_begin)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        stale = super()._get_stale_trial_ids(study_id)
        with _create_scoped_session(self.scoped_session) as session:
            rows = (
                session.query(models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING)
                .filter(~models.TrialModel.heartbeats.any())
                .all()
            )
        return stale + self._silent.silent_stale(trial_id for (trial_id,) in rows)


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue a copy of a search trial that ended without a result (its worker was interrupted),
    as the heartbeat does for a killed worker's trial: a WAITING trial with the same parameters
    and ``retry_history``; at most :data:`MAX_RETRY` times per trial."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _RetryOnce(max_retry=MAX_RETRY)(study, trial)


def _with_retries(make: Callable[[], BaseStorage], url: str, attempts: int = 8) -> BaseStorage:
    """``make()``, retried when workers starting together race to create the schema."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return make()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError) as exc:
            if attempt == attempts - 1:
                raise StorageError(f"storage {url}: cannot open it: {str(exc).splitlines()[0]}") from exc
            time.sleep(0.05 + random.random() * 0.25 * (attempt + 1))
    raise AssertionError("unreachable")


def open_storage(url: str, *, create: bool = False) -> BaseStorage:
    """Open the storage at ``url`` (forms in the module docstring), with a heartbeat.

    Args:
        url: The storage URL.
        create: Create a missing SQLite or journal file (and its folder). Without it a missing
            file is an error, so that reading a study never leaves a new file behind.

    Raises:
        StorageError: A malformed or unsupported URL, a missing driver, a missing file (without
            ``create``), a path that is a folder or not a SQLite database, or a server that
            refuses the connection.
    """
    if not isinstance(url, str) or "://" not in url and not url.startswith("journal:"):
        raise StorageError(
            f"storage {url!r} is not a storage URL; use sqlite:///FILE.db, postgresql://..., or journal:FILE.log"
        )
    path = storage_path(url)
    if path is not None:
        if not create and not path.exists():
            raise StorageError(f"storage {url}: {path} does not exist; run 'automtl search CONFIG' first")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = _RetryOnce(max_retry=MAX_RETRY)
    if url.startswith("journal:"):
        assert path is not None
        if path.is_dir():
            raise StorageError(f"storage {url}: {path} is a directory, not a journal file")
        return HeartbeatJournalStorage(str(path), HEARTBEAT_INTERVAL, GRACE_PERIOD, retry)
    if path is not None:
        _check_sqlite_file(url, path)
    sql_url = _sql_url(url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if sql_url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}

    def make() -> BaseStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _RDBStorage(
                sql_url,
                GRACE_PERIOD,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_INTERVAL,
                heartbeat_stale_trial_callback=retry,
            )

    try:
        return _with_retries(make, url)
    except StorageError:
        raise
    except Exception as exc:  # the drivers raise their own types for refused connections
        raise StorageError(f"storage {url}: cannot open it: {str(exc).splitlines()[0]}") from exc


def artifact_dir(storage_url: str, configured: str | os.PathLike[str] | None = None, study: optuna.Study | None = None) -> Path:
    """Where trial and baseline weights are kept.

    ``configured`` (``--artifacts`` / ``search.artifacts``) wins; else the folder recorded in
    ``study``; else ``<file>.artifacts/`` beside a SQLite or journal file.

    Raises:
        StorageError: A server storage (PostgreSQL, MySQL) without a configured or recorded folder.
    """
    if configured is not None:
        return Path(configured).expanduser().resolve()
    if study is not None and isinstance(study.user_attrs.get("artifacts"), str):
        return Path(study.user_attrs["artifacts"])
    path = storage_path(storage_url)
    if path is None:
        raise StorageError(
            f"storage {storage_url}: a server storage needs an artifact folder that every worker and "
            "every later 'show'/'export' reaches: pass --artifacts DIR (or set search.artifacts)"
        )
    return path.expanduser().resolve().with_name(path.name + ".artifacts")


# ------------------------------------------------------------------------------------------ studies
def study_names(storage: BaseStorage) -> list[str]:
    """The search studies in a storage, oldest first (the job studies of :mod:`automtl.jobs` left out)."""
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    return [s.study_name for s in summaries if not s.study_name.endswith(JOBS_SUFFIX)]


def load_study(storage: str, study_name: str | None = None) -> optuna.Study:
    """Load a study without creating anything; with no name, the newest study that has a
    finished trial (a study that failed before its first trial is never the default).

    Raises:
        StorageError: See :func:`open_storage` (a missing file included).
        LookupError: No study, no study of that name, or no study with a finished trial.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(storage)
    names = study_names(store)
    if not names:
        raise LookupError(f"no study in storage {storage}; run 'automtl search CONFIG' first")
    if study_name is not None:
        if study_name not in names:
            raise LookupError(f"no study '{study_name}' in storage {storage}; studies: {names}")
        return optuna.load_study(study_name=study_name, storage=store)
    for name in reversed(names):
        study = optuna.load_study(study_name=name, storage=store)
        if finished_trials(study):
            return study
    raise LookupError(f"no study in storage {storage} has a finished trial; studies: {names}")


def read_attr(study: optuna.Study, key: str, default: Any = None) -> Any:
    """A study-level fact recorded by automtl (``config``, ``baselines``, ``confirmation``, ...)."""
    return study.user_attrs.get(key, default)


def write_attr(study: optuna.Study, key: str, value: Any) -> None:
    """Record a study-level fact (JSON-serializable)."""
    study.set_user_attr(key, value)


def study_config(study: optuna.Study) -> Any:
    """The :class:`~automtl.config.SearchConfig` a study was created with."""
    from automtl.config import parse_config

    return parse_config(study.user_attrs["config"], study.user_attrs.get("source"))


def is_multi_objective(study: optuna.Study) -> bool:
    """Whether the study has more than one objective (``search.cost`` or ``per_task``)."""
    return len(study.directions) > 1


def objective_names(study: optuna.Study) -> list[str]:
    """The names of the study's objectives in value order (``["value"]`` for a study without them)."""
    return list(study.user_attrs.get("objective_names") or ["value"] * len(study.directions))


# ------------------------------------------------------------------------------------ trial records
@dataclass
class TrialRecord:
    """What one trial of a search records; the only reader and writer of trial attributes.

    Attributes:
        stage: ``"obvious"`` (an obvious design, enqueued before any sampled trial) or
            ``"screen"`` (sampled).
        label: An obvious design's name (``"hard sharing + equal"``), else ``""``.
        candidate: :meth:`automtl.space.Candidate.to_dict` of what was trained.
        key: :meth:`automtl.space.Candidate.key`: the design's identity (same key, same design).
        tree: The tree's one-line shape (:meth:`BranchTree.compact`).
        n_params: Parameter count.
        flops: Forward FLOPs of one sample (training-run equivalents weigh epochs by them).
        cost: The measured cost objectives and budgets (``n_params``, ``flops``, ``latency_ms``).
        val_metrics: Per-task validation metrics of the last epoch trained.
        history: The (first) quality objective after each epoch.
        epochs_trained: Epochs actually trained (fewer when pruned, 0 when not trained).
        train_seconds: Training wall time (s).
        weights_artifact: Artifact id of the weights (safetensors).
        fail_reason: Why training failed (NaN, divergence); such a trial counts as finished.
        interrupted: Why it stopped without a result (``"interrupted"``: Ctrl-C or SIGTERM);
            it does not count and is retried.
        over_budget: Which budget an untrained candidate exceeded.
        pruned_reason: Why training stopped early.
        repeat_of: The first trial of the same design: this trial is a declared extra seed of it.
        answered_from: ``"study"``: a design that already has its runs, answered with their mean
            without training; ``"baselines"``: the single-task design at a learning rate the
            baselines tuned, answered with that tuning run (its metrics and weights). Such a
            trial was not trained here and does not count toward the total.
        surplus: Started after the study's total was reached; not trained, does not count.
        proxy: Scored with the supernet's weights, not trained (the ``supernet`` strategy).
        proxy_tre: Training-run equivalents its proxy evaluation cost.
    """

    stage: str = "screen"
    label: str = ""
    candidate: dict[str, Any] | None = None
    key: str = ""
    tree: str = ""
    n_params: int | None = None
    flops: float | None = None
    cost: dict[str, float] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)
    epochs_trained: int = 0
    train_seconds: float | None = None
    weights_artifact: str | None = None
    fail_reason: str | None = None
    interrupted: str | None = None
    over_budget: str | None = None
    pruned_reason: str | None = None
    repeat_of: int | None = None
    answered_from: str | None = None
    surplus: bool = False
    proxy: bool = False
    proxy_tre: float | None = None

    _ATTR = "automtl"

    @classmethod
    def of(cls, trial: FrozenTrial | optuna.Trial) -> TrialRecord:
        """The record of ``trial`` (empty for a trial that recorded nothing)."""
        raw = trial.user_attrs.get(cls._ATTR) or {}
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    @classmethod
    def fresh(cls, trial: optuna.Trial) -> TrialRecord:
        """A new record for ``trial``, keeping only the stage and label it was enqueued with
        (a retried trial inherits its dead predecessor's attributes, nothing else carries over)."""
        old = cls.of(trial)
        return cls(stage=old.stage, label=old.label)

    @staticmethod
    def enqueued(stage: str, label: str) -> dict[str, Any]:
        """The ``user_attrs`` of an enqueued trial of ``stage`` named ``label``."""
        return {TrialRecord._ATTR: {"stage": stage, "label": label}}

    def save(self, trial: optuna.Trial) -> None:
        """Write this record to the running ``trial``."""
        trial.set_user_attr(self._ATTR, dataclasses.asdict(self))


def counts_toward_total(trial: FrozenTrial) -> bool:
    """Whether a trial counts toward ``n_trials``: complete, pruned, or failed for a recorded
    reason; not an answer from the study, not a surplus trial, not an interrupted one."""
    record = TrialRecord.of(trial)
    if record.answered_from or record.surplus or record.interrupted:
        return False
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and record.fail_reason is not None


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count toward ``n_trials`` (:func:`counts_toward_total`)."""
    return [t for t in study.get_trials(deepcopy=False) if counts_toward_total(t)]


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The feasible complete trials that no other one dominates, sorted by their last objective
    (the first cost objective when there is one); a single-objective study's best trial."""
    if not is_multi_objective(study):
        try:
            return [study.best_trial]
        except ValueError:
            return []
    return sorted(study.best_trials, key=lambda t: (t.values[-1], t.number))


@dataclass
class DesignRuns:
    """Every trained run of one design (trials with the same :attr:`TrialRecord.key`).

    Attributes:
        key: The design's identity.
        label: An obvious design's name, else ``""``.
        first: The number of its first trial.
        trials: Its complete trials that were trained (not answers from the study).
        values: Their objective values, trial by trial.
        pruned: How many of its runs were pruned.
        failed: How many failed for a recorded reason.
    """

    key: str
    label: str
    first: int
    trials: list[FrozenTrial] = field(default_factory=list)
    values: list[Sequence[float]] = field(default_factory=list)
    pruned: int = 0
    failed: int = 0

    @property
    def record(self) -> TrialRecord:
        """The record of its first complete run."""
        return TrialRecord.of(self.trials[0])

    def mean(self, objective: int = 0) -> float:
        """Mean over its complete runs of one objective value."""
        return sum(v[objective] for v in self.values) / len(self.values)


def designs(trials: Iterable[FrozenTrial]) -> list[DesignRuns]:
    """The designs among ``trials`` (obvious and screening stages), in order of first appearance;
    only designs with at least one complete, trained run."""
    by_key: dict[str, DesignRuns] = {}
    for t in sorted(trials, key=lambda t: t.number):
        record = TrialRecord.of(t)
        if not record.key or record.answered_from or record.surplus:
            continue
        runs = by_key.setdefault(record.key, DesignRuns(record.key, record.label, t.number))
        runs.label = runs.label or record.label
        if t.state == TrialState.COMPLETE and t.values is not None:
            runs.trials.append(t)
            runs.values.append(list(t.values))
        elif t.state == TrialState.PRUNED:
            runs.pruned += 1
        elif t.state == TrialState.FAIL and record.fail_reason is not None:
            runs.failed += 1
    return [d for d in by_key.values() if d.trials]


def active_runs(trials: Iterable[FrozenTrial], key: str, exclude: int) -> list[FrozenTrial]:
    """Trials of design ``key`` that are running or were trained (complete, pruned, failed for a
    reason), other than trial ``exclude``."""
    out = []
    for t in trials:
        if t.number == exclude:
            continue
        record = TrialRecord.of(t)
        if record.key != key or record.answered_from or record.surplus:
            continue
        if t.state == TrialState.RUNNING or counts_toward_total(t):
            out.append(t)
    return out


def counted_before(trials: Iterable[FrozenTrial], number: int) -> int:
    """How many trials numbered below ``number`` count toward the total or are running (and may)."""
    n = 0
    for t in trials:
        if t.number >= number:
            continue
        record = TrialRecord.of(t)
        if record.answered_from or record.surplus or record.interrupted:
            continue
        if counts_toward_total(t) or t.state == TrialState.RUNNING:
            n += 1
    return n
