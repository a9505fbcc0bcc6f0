"""The study record: storage URLs, the journal heartbeat, artifact folders, loading a study, and
what a trial records (:mod:`automtl.study`)."""

from __future__ import annotations

import datetime
import itertools
import random
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState, create_trial

from automtl.errors import AutoMTLError, StorageError
from automtl.study import (
    HEARTBEAT_INTERVAL,
    JOBS_SUFFIX,
    HeartbeatJournalStorage,
    TrialRecord,
    _RetryOnce,
    artifact_dir,
    counted_before,
    counts_toward_total,
    designs,
    load_study,
    open_storage,
    storage_path,
    study_names,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
]

SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


# ------------------------------------------------------------------------------------ open_storage
def _bad_url(kind: str, tmp_path: Path) -> tuple[str, str]:
    """A bad storage URL of ``kind`` and a phrase its error must contain."""
    if kind == "plain path":
        return "foo.db", "not a storage URL"
    if kind == "file scheme":
        return "file:///x.db", "unknown URL scheme 'file'"
    if kind == "unknown scheme":
        return "foo://bar", "unknown URL scheme 'foo'"
    if kind == "sqlite directory":
        (tmp_path / "adir").mkdir()
        return f"sqlite:///{tmp_path / 'adir'}", "is a directory"
    if kind == "sqlite text file":
        (tmp_path / "notes.db").write_text("these are notes, not a database\n")
        return f"sqlite:///{tmp_path / 'notes.db'}", "not a SQLite database"
    if kind == "journal directory":
        (tmp_path / "jdir").mkdir()
        return f"journal:{tmp_path / 'jdir'}", "is a directory"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["plain path", "file scheme", "unknown scheme", "sqlite directory", "sqlite text file", "journal directory"]
)
@pytest.mark.parametrize("create", [False, True])
def test_a_bad_url_is_a_storage_error_naming_url_and_cause(kind: str, create: bool, tmp_path: Path) -> None:
    url, cause = _bad_url(kind, tmp_path)
    with pytest.raises(StorageError) as info:
        open_storage(url, create=create)
    assert isinstance(info.value, AutoMTLError) and isinstance(info.value, ValueError)
    assert url in str(info.value) and cause in str(info.value)


@pytest.mark.parametrize("scheme", ["sqlite:///", "journal:"])
def test_a_missing_file_without_create_is_an_error_and_creates_nothing(scheme: str, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "missing.db"
    url = f"{scheme}{path}"
    with pytest.raises(StorageError) as info:
        open_storage(url)
    assert url in str(info.value) and "does not exist" in str(info.value)
    assert not path.exists() and not path.parent.exists()
    assert list(tmp_path.iterdir()) == []


def test_postgresql_without_its_driver_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # psycopg may be installed; a None entry in sys.modules makes its import fail either way
    monkeypatch.setitem(sys.modules, "psycopg", None)
    url = "postgresql://u@127.0.0.1:1/db"
    with pytest.raises(StorageError) as info:
        open_storage(url)
    assert url in str(info.value) and "'psycopg'" in str(info.value) and "automtl[postgres]" in str(info.value)


def test_sqlite_with_create_makes_its_folder_and_a_database(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "study.db"
    storage = open_storage(f"sqlite:///{path}", create=True)
    assert isinstance(storage, RDBStorage)
    assert path.parent.is_dir()
    optuna.create_study(storage=storage, study_name="s")
    assert path.read_bytes()[:16] == SQLITE_HEADER
    # now it exists, reading it needs no create, and the study is there
    assert study_names(open_storage(f"sqlite:///{path}")) == ["s"]


def test_an_empty_file_is_an_empty_sqlite_database(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    assert study_names(open_storage(f"sqlite:///{path}")) == []


def test_journal_urls_open_a_heartbeat_journal_relative_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_storage("journal:rel/relative.log", create=True)
    absolute_path = tmp_path / "abs" / "absolute.log"
    assert str(absolute_path).startswith("/")
    absolute = open_storage(f"journal://{absolute_path}", create=True)  # journal:///tmp/...
    for storage in (relative, absolute):
        assert isinstance(storage, HeartbeatJournalStorage)
        assert storage.get_heartbeat_interval() == HEARTBEAT_INTERVAL
        assert isinstance(storage.get_heartbeat_stale_trial_callback(), RetryHeartbeatStaleTrialCallback)
        optuna.create_study(storage=storage, study_name="s")
    assert (tmp_path / "rel" / "relative.log").is_file()
    assert absolute_path.is_file()
    assert storage_path(f"journal://{absolute_path}") == absolute_path
    assert storage_path("journal:rel/relative.log") == Path("rel/relative.log")


# --------------------------------------------------------------------------------------- heartbeat
def _journal(tmp_path: Path, grace: int = 1) -> tuple[HeartbeatJournalStorage, optuna.Study]:
    storage = HeartbeatJournalStorage(
        str(tmp_path / "hb.log"), heartbeat_interval=1, grace_period=grace, retry=_RetryOnce(max_retry=1)
    )
    return storage, optuna.create_study(storage=storage, study_name="hb")


def _running_since(study: optuna.Study, seconds_ago: float) -> FrozenTrial:
    """A RUNNING trial added to ``study``, started ``seconds_ago``."""
    trial = create_trial(state=TrialState.RUNNING)
    trial.datetime_start = datetime.datetime.now() - datetime.timedelta(seconds=seconds_ago)
    study.add_trial(trial)
    return study.get_trials(deepcopy=False)[-1]


def test_a_running_trial_with_an_old_heartbeat_is_stale_a_fresh_one_is_not(tmp_path: Path) -> None:
    storage, study = _journal(tmp_path)
    dead, alive = _running_since(study, 30), _running_since(study, 30)
    storage.set_trial_system_attr(dead._trial_id, "automtl:heartbeat", time.time() - 10)
    storage.record_heartbeat(alive._trial_id)
    assert storage._get_stale_trial_ids(study._study_id) == [dead._trial_id]


def test_fail_stale_trials_fails_a_dead_trial_and_enqueues_one_retry(tmp_path: Path) -> None:
    storage, study = _journal(tmp_path, grace=5)  # a heartbeat 10 s old is stale; a fresh one stays fresh under load
    dead, alive = _running_since(study, 30), _running_since(study, 30)
    storage.set_trial_system_attr(dead._trial_id, "automtl:heartbeat", time.time() - 10)
    storage.record_heartbeat(alive._trial_id)
    optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[dead.number] == TrialState.FAIL and states[alive.number] == TrialState.RUNNING
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].system_attrs["failed_trial"] == dead.number
    optuna.storages.fail_stale_trials(study)  # nothing else is stale: no second retry
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1


def test_a_retried_trial_is_not_stale_when_it_starts(tmp_path: Path) -> None:
    # The retry copies the dead trial's system attributes, its old heartbeat included; until
    # its own heartbeat thread writes, that copy must not make it look dead to other workers
    # (it would be failed and, having used its one retry, lost).
    storage, study = _journal(tmp_path)
    dead = _running_since(study, 30)
    storage.set_trial_system_attr(dead._trial_id, "automtl:heartbeat", time.time() - 10)
    optuna.storages.fail_stale_trials(study)
    retry = study.ask()  # pops the waiting retry: RUNNING, no heartbeat of its own yet
    assert retry.number != dead.number
    assert storage.get_trial(retry._trial_id).system_attrs.get("failed_trial") == dead.number
    assert storage._get_stale_trial_ids(study._study_id) == []


def test_a_retried_trial_whose_worker_never_beats_goes_stale_after_the_grace(tmp_path: Path) -> None:
    storage, study = _journal(tmp_path, grace=0)
    dead = _running_since(study, 30)
    storage.set_trial_system_attr(dead._trial_id, "automtl:heartbeat", time.time() - 10)
    optuna.storages.fail_stale_trials(study)
    retry = study.ask()
    # silent since this process first saw it running (no heartbeat of its own): stale once the
    # grace has passed since that first look
    assert storage._get_stale_trial_ids(study._study_id) == []
    time.sleep(0.01)
    assert storage._get_stale_trial_ids(study._study_id) == [retry._trial_id]


# ------------------------------------------------------------------------------------ artifact_dir
def test_artifact_dir_configured_then_recorded_then_beside_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    study = optuna.create_study()
    study.set_user_attr("artifacts", "/recorded/artifacts")
    url = f"sqlite:///{tmp_path / 'runs' / 'a.db'}"
    assert artifact_dir(url, "given", study) == tmp_path / "given"  # configured wins, resolved
    assert artifact_dir(url, None, study) == Path("/recorded/artifacts")
    assert artifact_dir(url) == tmp_path / "runs" / "a.db.artifacts"
    assert artifact_dir("sqlite:///rel.db") == tmp_path / "rel.db.artifacts"
    assert artifact_dir(f"journal:{tmp_path / 'j.log'}") == tmp_path / "j.log.artifacts"
    assert artifact_dir("journal:j.log", None, optuna.create_study()) == tmp_path / "j.log.artifacts"


@pytest.mark.parametrize("url", ["postgresql://u@host/db", "mysql+pymysql://u@host/db", "sqlite:///:memory:"])
def test_artifact_dir_of_a_server_storage_needs_one_given(url: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        artifact_dir(url)
    assert url in str(info.value) and "--artifacts" in str(info.value)
    assert artifact_dir(url, tmp_path / "art") == tmp_path / "art"
    study = optuna.create_study()
    study.set_user_attr("artifacts", str(tmp_path / "recorded"))
    assert artifact_dir(url, None, study) == tmp_path / "recorded"


# -------------------------------------------------------------------------------------- load_study
def _complete(study: optuna.Study, value: float = 1.0, **record: Any) -> None:
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, user_attrs={"automtl": record}))


def test_load_study_with_no_study_is_a_lookup_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    open_storage(url, create=True)
    with pytest.raises(LookupError, match="no study"):
        load_study(url)


def test_load_study_by_a_missing_name_lists_the_names(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    storage = open_storage(url, create=True)
    for name in ("first", "second", "second" + JOBS_SUFFIX):
        optuna.create_study(storage=storage, study_name=name)
    with pytest.raises(LookupError) as info:
        load_study(url, "third")
    assert "'third'" in str(info.value) and "['first', 'second']" in str(info.value)
    with pytest.raises(LookupError):
        load_study(url, "second" + JOBS_SUFFIX)  # a job study is never a search's
    assert load_study(url, "first").study_name == "first"


def test_load_study_without_a_name_takes_the_newest_with_a_finished_trial(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    storage = open_storage(url, create=True)
    _complete(optuna.create_study(storage=storage, study_name="old"))
    optuna.create_study(storage=storage, study_name="empty")
    never = optuna.create_study(storage=storage, study_name="failed before its first trial")
    never.add_trial(create_trial(state=TrialState.FAIL))  # failed without a reason: not finished
    answered = optuna.create_study(storage=storage, study_name="only answers")
    _complete(answered, answered_from="study")
    _complete(optuna.create_study(storage=storage, study_name="old" + JOBS_SUFFIX))
    assert study_names(storage) == ["old", "empty", "failed before its first trial", "only answers"]
    assert load_study(url).study_name == "old"
    newest = optuna.create_study(storage=storage, study_name="newest")
    newest.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"automtl": {"fail_reason": "NaN loss"}}))
    assert load_study(url).study_name == "newest"


def test_load_study_when_no_study_has_a_finished_trial(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    optuna.create_study(storage=open_storage(url, create=True), study_name="empty")
    with pytest.raises(LookupError, match="finished trial") as info:
        load_study(url)
    assert "['empty']" in str(info.value)


# ------------------------------------------------------------------------------------- TrialRecord
def _full_record() -> TrialRecord:
    return TrialRecord(
        stage="obvious",
        label="hard sharing + equal",
        candidate={"balancer": "equal", "train": {"lr": 0.001}},
        key="0123456789abcdef",
        tree="0-3 | 0-3 | 0/1/2/3",
        n_params=1234,
        flops=5678.5,
        cost={"n_params": 1234.0, "latency_ms": 0.25},
        val_metrics={"a": 0.75, "b": -0.5},
        history=[0.1, 0.2, 0.3],
        epochs_trained=3,
        train_seconds=1.5,
        weights_artifact="artifact-id",
        fail_reason="loss is nan",
        interrupted="interrupted",
        over_budget="n_params 2e6 > 1e6",
        pruned_reason="pruned after epoch 1",
        repeat_of=4,
        answered_from="study",
        surplus=True,
    )


def test_trial_record_round_trips_through_a_stored_trial(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'x.db'}", create=True)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    record = _full_record()
    record.save(trial)
    assert TrialRecord.of(trial) == record
    study.tell(trial, 0.0)
    reloaded = optuna.load_study(study_name="s", storage=open_storage(f"sqlite:///{tmp_path / 'x.db'}"))
    assert TrialRecord.of(reloaded.trials[0]) == record


def test_trial_record_ignores_unknown_keys_and_defaults_missing_ones() -> None:
    trial = create_trial(state=TrialState.COMPLETE, value=0.0, user_attrs={"automtl": {"key": "k", "from_the_future": 1}})
    assert TrialRecord.of(trial) == TrialRecord(key="k")
    assert TrialRecord.of(create_trial(state=TrialState.COMPLETE, value=0.0)) == TrialRecord()


def test_fresh_keeps_only_stage_and_label() -> None:
    study = optuna.create_study()
    inherited = dict(TrialRecord.enqueued("obvious", "single-task networks + equal")["automtl"])
    inherited.update(key="k", interrupted="interrupted", epochs_trained=2, history=[0.5])  # a dead predecessor's
    study.enqueue_trial({}, user_attrs={"automtl": inherited})
    trial = study.ask()
    assert TrialRecord.fresh(trial) == TrialRecord(stage="obvious", label="single-task networks + equal")


STATES = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]


def _trial(state: TrialState, **record: Any) -> FrozenTrial:
    return create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None, user_attrs={"automtl": record})


@pytest.mark.parametrize(
    ("state", "answered_from", "surplus", "interrupted", "fail_reason"),
    list(itertools.product(STATES, [None, "study", "baselines"], [False, True], [None, "interrupted"], [None, "NaN loss"])),
)
def test_counts_toward_total_truth_table(
    state: TrialState, answered_from: str | None, surplus: bool, interrupted: str | None, fail_reason: str | None
) -> None:
    trial = _trial(state, answered_from=answered_from, surplus=surplus, interrupted=interrupted, fail_reason=fail_reason)
    # the docstring: complete, pruned, or failed for a recorded reason; not an answer from the
    # study, not a surplus trial, not an interrupted one
    trained = {TrialState.COMPLETE: True, TrialState.PRUNED: True, TrialState.FAIL: fail_reason is not None}.get(state, False)
    excluded = answered_from is not None or surplus or interrupted is not None
    assert counts_toward_total(trial) is (trained and not excluded)


def _numbered(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """``trials`` added in order to an in-memory study (numbers 0, 1, ...), in shuffled order."""
    study = optuna.create_study()
    for t in trials:
        study.add_trial(t)
    out = study.get_trials()
    random.Random(0).shuffle(out)
    return out


def test_designs_group_runs_by_key() -> None:
    trials = _numbered(
        [
            _trial(TrialState.COMPLETE, key="A", label="hard sharing + equal"),  # 0
            _trial(TrialState.COMPLETE, key="B"),  # 1
            _trial(TrialState.COMPLETE, key="A", repeat_of=0),  # 2: a second run of A
            _trial(TrialState.COMPLETE, key="A", answered_from="study"),  # 3: answered, not a run
            _trial(TrialState.COMPLETE, key="B", surplus=True),  # 4: surplus, not a run
            _trial(TrialState.PRUNED, key="C"),  # 5: C has no complete run
            _trial(TrialState.PRUNED, key="B"),  # 6
            _trial(TrialState.FAIL, key="B", fail_reason="NaN"),  # 7
            _trial(TrialState.FAIL, key="B"),  # 8: no reason (killed): not counted
            _trial(TrialState.COMPLETE),  # 9: no design
            _trial(TrialState.COMPLETE, key="D", answered_from="baselines"),  # 10: not trained here
        ]
    )
    got = designs(trials)
    assert [(d.key, d.label, d.first) for d in got] == [("A", "hard sharing + equal", 0), ("B", "", 1)]
    a, b = got
    assert [t.number for t in a.trials] == [0, 2] and a.values == [[0.5], [0.5]] and (a.pruned, a.failed) == (0, 0)
    assert [t.number for t in b.trials] == [1] and (b.pruned, b.failed) == (1, 1)
    assert a.record.label == "hard sharing + equal"


def test_designs_mean_is_over_complete_runs() -> None:
    study = optuna.create_study()
    for v in (1.0, 4.0):
        _complete(study, v, key="A")
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"automtl": {"key": "A"}}))
    (design,) = designs(study.get_trials())
    assert design.mean() == 2.5 and design.pruned == 1


def test_counted_before_counts_lower_numbers_that_count_or_run() -> None:
    trials = _numbered(
        [
            _trial(TrialState.COMPLETE, key="A"),  # 0: counts
            _trial(TrialState.RUNNING, key="B"),  # 1: running, may count
            _trial(TrialState.RUNNING, key="C", interrupted="interrupted"),  # 2: no
            _trial(TrialState.COMPLETE, key="A", answered_from="study"),  # 3: no
            _trial(TrialState.FAIL, key="D"),  # 4: no reason: no
            _trial(TrialState.PRUNED, key="E"),  # 5: counts
            _trial(TrialState.WAITING),  # 6: no
            _trial(TrialState.COMPLETE, key="F", surplus=True),  # 7: no
            _trial(TrialState.FAIL, key="G", fail_reason="NaN"),  # 8: counts
            _trial(TrialState.RUNNING, key="H", answered_from="baselines"),  # 9: no
        ]
    )
    expected = {0: 0, 1: 1, 2: 2, 5: 2, 6: 3, 8: 3, 9: 4, 10: 4, 100: 4}
    assert {n: counted_before(trials, n) for n in expected} == expected
