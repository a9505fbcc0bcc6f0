"""The Optuna study: what trials record, resumption, refused spaces, NaN trials."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from automtl.config import SearchConfig, parse_config
from automtl.errors import ConfigError
from automtl.search import (
    artifact_dir,
    finished_trials,
    load_study,
    run_search,
    study_config,
)
from automtl.tree import BranchTree
from tests.conftest import set_key

pytestmark = pytest.mark.slow  # every test here runs (or reads) a real search


def test_trials_record_their_candidate_and_metrics(searched: tuple[SearchConfig, optuna.Study]) -> None:
    config, study = searched
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 and len(finished_trials(study)) == 3
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.user_attrs["config"] == config.raw and study_config(study) == config
    for trial in trials:
        attrs = trial.user_attrs
        tree = BranchTree.from_dict(attrs["candidate"]["tree"])
        assert attrs["tree"] == tree.compact()
        assert attrs["candidate"]["balancer"] == trial.params["balancer"]
        assert attrs["candidate"]["train"]["lr"] == trial.params["train.lr"]
        heads = {"a": 8 + 1, "b": 8 + 1, "c": 8 * 3 + 3, "d": 8 * 2 + 2}
        blocks = [6 * 16 + 16 + 32, 16 * 8 + 8 + 16, 8 * 8 + 8 + 16]  # Linear + LayerNorm
        assert attrs["n_params"] == tree.parameter_count(blocks, heads)
        assert set(attrs["val_metrics"]) == {"a", "b", "c", "d"}
        assert len(attrs["history"]) == 2 and attrs["history"][-1] == trial.value
        assert attrs["train_seconds"] > 0
        assert list(artifact_dir(config.storage).rglob(attrs["weights_artifact"]))
    assert len({t.user_attrs["candidate"]["train"]["seed"] for t in trials}) == 3


def test_second_search_resumes_the_study(make_config: Callable[..., SearchConfig]) -> None:
    config = make_config({"train.epochs": 1})
    study = run_search(config, progress=False)
    assert len(study.trials) == 2
    again = run_search(config, progress=False)  # same storage and name: nothing left to do
    assert [t.number for t in again.trials] == [0, 1]
    more = run_search(config, n_trials=3, progress=False)
    assert [t.number for t in more.trials] == [0, 1, 2] and len(finished_trials(more)) == 3
    assert load_study(config.storage).study_name == "tiny"
    assert len(load_study(config.storage, "tiny").trials) == 3


def test_resumed_search_samples_new_candidates(make_config: Callable[..., SearchConfig]) -> None:
    config = make_config({"train.epochs": 1, "search.n_trials": 1})
    run_search(config, progress=False)
    study = run_search(config, n_trials=2, progress=False)
    assert study.trials[1].params != study.trials[0].params


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_interrupted_trial_does_not_count(make_config: Callable[..., SearchConfig]) -> None:
    config = make_config({"train.epochs": 1, "search.n_trials": 1})
    study = run_search(config, progress=False)
    trial = study.ask()  # as if a process died mid-trial: failed without a recorded reason
    study.tell(trial, state=TrialState.FAIL)
    assert len(finished_trials(study)) == 1
    study = run_search(config, n_trials=2, progress=False)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]


def _changed(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    return set_key(copy.deepcopy(raw), dotted, value)


SPACE_CHANGES = [
    ("train.lr", {"low": 1.0e-4, "high": 1.0e-2, "log": True}, "train"),
    ("backbone.options.hidden", [8, 8, 8], "backbone"),
    ("space.max_groups", 3, "space"),
    ("data.options", {"seed": 1}, "data"),
    ("tasks", {"b": {"metric": "mae"}}, "tasks"),
    ("search.objective", "mean_score", "search.objective"),
    ("search.objective", {"weighted": {"a": 1}}, "search.objective"),
    ("search.cost", ["flops"], "search.cost"),
    ("search.constraints", {"max_params": 10_000}, "search.constraints"),
]


@pytest.mark.parametrize(("dotted", "value", "key"), SPACE_CHANGES, ids=[c[0] for c in SPACE_CHANGES])
def test_study_with_another_space_is_refused(
    searched: tuple[SearchConfig, optuna.Study], dotted: str, value: Any, key: str
) -> None:
    config, _ = searched
    changed = parse_config(_changed(config.raw, dotted, value), trust_code=True)
    with pytest.raises(ConfigError) as exc:
        run_search(changed, progress=False)
    assert exc.value.key == key and f"'{key}'" in str(exc.value) and "tiny" in str(exc.value)
    assert len(load_study(config.storage, "tiny").trials) == 3  # untouched


def test_other_settings_may_change_on_resume(searched: tuple[SearchConfig, optuna.Study]) -> None:
    config, _ = searched
    raw = _changed(config.raw, "search.sampler", "tpe")
    raw = _changed(raw, "search.pruner", "median")
    raw = _changed(raw, "search.seed", 5)
    study = run_search(parse_config(raw, trust_code=True), progress=False)  # 3 trials already: returns at once
    assert len(study.trials) == 3


EQUIVALENT = [
    ("search.objective", "delta_m"),  # the default, now written out
    ("search.cost", []),
    ("search.constraints", {}),
    ("train.optimizer", "adamw"),
    ("space.task_split_points", None),
]


@pytest.mark.parametrize(("dotted", "value"), EQUIVALENT, ids=[e[0] for e in EQUIVALENT])
def test_an_equivalent_config_resumes(searched: tuple[SearchConfig, optuna.Study], dotted: str, value: Any) -> None:
    config, _ = searched
    study = run_search(parse_config(_changed(config.raw, dotted, value), trust_code=True), progress=False)
    assert len(study.trials) == 3


def test_nan_loss_fails_the_trial_and_the_study_goes_on(
    make_config: Callable[..., SearchConfig], nan_loss_calls: dict[str, int]
) -> None:
    config = make_config(
        {
            "tasks": {"b": {"loss": "tests.helpers:nan_loss"}},
            "train.epochs": 1,
            "search.n_trials": 3,
            "search.objective": "mean_score",  # no single-task baselines to train first
        }
    )
    nan_loss_calls["calls_left"] = 1  # the first training step of the first trial
    lines: list[str] = []
    study = run_search(config, progress=False, echo=lines.append)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    reason = study.trials[0].user_attrs["fail_reason"]
    assert "task 'b'" in reason and "nan" in reason
    assert "fail" in lines[0] and "task 'b'" in lines[0] and len(lines) == 3
    assert len(finished_trials(study)) == 3  # a recorded failure counts: not retried
    assert len(run_search(config, progress=False).trials) == 3
    assert study.best_trial.number in (1, 2)


def test_echo_prints_per_task_metrics(searched: tuple[SearchConfig, optuna.Study], tmp_path: Path) -> None:
    config, _ = searched
    lines: list[str] = []
    raw = _changed(config.raw, "search.storage", f"sqlite:///{tmp_path / 'echo.db'}")
    run_search(parse_config(_changed(raw, "train.epochs", 1), trust_code=True), n_trials=1, progress=False, echo=lines.append)
    assert len(lines) == 2
    assert lines[0].startswith("single-task baselines for delta_m: trained once")
    assert lines[1].startswith("trial   0 complete delta_m=")
    assert all(f" {t}=" in lines[1] for t in "abcd")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_unavailable_device_is_a_config_error(tiny_config: SearchConfig) -> None:
    with pytest.raises(ConfigError) as exc:
        run_search(tiny_config, device="cuda", progress=False)
    assert exc.value.key == "device"


def test_load_study_errors(searched: tuple[SearchConfig, optuna.Study], tmp_path: Path) -> None:
    config, _ = searched
    with pytest.raises(LookupError, match="no study 'other'"):
        load_study(config.storage, "other")
    with pytest.raises(LookupError, match="no study in storage"):
        load_study(f"sqlite:///{tmp_path / 'empty.db'}")



@pytest.mark.slow
def test_search_seeded_from_affinity_runs_the_derived_trees_first(
    make_config: Callable[..., SearchConfig], tmp_path: Path
) -> None:
    from automtl.affinity import (
        best_grouping,
        grouping_params,
        load_affinity,
        measure_affinity,
        seed_params,
    )
    from automtl.experiment import prepare
    from automtl.search import run_search
    from automtl.space import SearchSpace

    config = make_config({"search.n_trials": 4})
    measure_affinity(config, measure="cosine", every=1).save(tmp_path / "aff")
    affinity = load_affinity(tmp_path / "aff")
    experiment = prepare(config)
    space = SearchSpace(config, experiment.data.task_names, experiment.backbone.n_blocks)
    seeds = seed_params(affinity, space)
    assert seeds, "the affinity should give at least one tree"

    study = run_search(config, progress=False, seed_from_affinity=tmp_path / "aff")
    first = study.trials[: min(len(seeds), 4)]
    for trial, params in zip(first, seeds):
        assert {k: trial.params[k] for k in params} == params

    restricted = make_config({"search.n_trials": 3, "search.study_name": "restricted"})
    study = run_search(restricted, progress=False, seed_from_affinity=tmp_path / "aff", restrict_to_affinity=True)
    groups, _ = best_grouping(affinity.matrix, affinity.tasks, space.max_groups)
    fixed = grouping_params(groups, space.tasks)
    for trial in study.trials:
        assert {k: trial.params[k] for k in fixed} == fixed


def test_restrict_without_affinity_is_refused(make_config: Callable[..., SearchConfig]) -> None:
    from automtl.search import run_search

    with pytest.raises(ConfigError) as info:
        run_search(make_config(), progress=False, restrict_to_affinity=True)
    assert info.value.key == "--restrict-to-affinity"


@pytest.mark.slow
def test_same_seed_reproduces_a_cpu_search(make_config: Callable[..., SearchConfig], tmp_path: Path) -> None:
    from dataclasses import replace

    from automtl.search import run_search

    config = make_config({"search.n_trials": 3, "search.sampler": "tpe", "search.pruner": "median"})
    first = run_search(config, progress=False)
    second = run_search(replace(config, storage=f"sqlite:///{tmp_path / 'again.db'}"), progress=False)
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert [t.value for t in first.trials] == [t.value for t in second.trials]
    other = run_search(replace(config, storage=f"sqlite:///{tmp_path / 'other.db'}", seed=1), progress=False)
    assert [t.params for t in other.trials] != [t.params for t in first.trials]
