"""The search protocol: baselines, obvious designs first, exact totals, no repeated trainings,
the paired confirmation stage, interruption, resumption and refused spaces."""

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
from automtl.confirm import SINGLE_TASK, Confirmation
from automtl.errors import BaselineError, ConfigError
from automtl.jobs import JobQueue
from automtl.search import MAX_SCREEN_RUNS, run_search
from automtl.seeds import baseline_tuning_seed, confirmation_seeds
from automtl.study import (
    TrialRecord,
    artifact_dir,
    designs,
    finished_trials,
    load_study,
    study_config,
)
from automtl.tree import BranchTree
from tests.conftest import set_key

pytestmark = pytest.mark.slow  # every test here runs (or reads) a real search

TASKS = ["a", "b", "c", "d"]


def _jobs(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """Every job of the study's job queue, by key, with its result merged in."""
    queue = JobQueue(study._storage, study.study_name)
    results = queue.results()
    return {j["key"]: {**j, **results.get(j["key"], {})} for j in queue.jobs()}


def test_trials_record_their_candidate_and_metrics(searched: tuple[SearchConfig, optuna.Study]) -> None:
    config, study = searched
    trials = study.trials
    # 5 counted: hard sharing, then 4 sampled; the single-task design (trial 1) is answered from the baselines
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6 and len(finished_trials(study)) == 5
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.user_attrs["config"] == config.raw and study_config(study) == config
    heads = {"a": 8 + 1, "b": 8 + 1, "c": 8 * 3 + 3, "d": 8 * 2 + 2}
    blocks = [6 * 16 + 16 + 32, 16 * 8 + 8 + 16, 8 * 8 + 8 + 16]  # Linear + LayerNorm
    for trial in trials:
        record = TrialRecord.of(trial)
        assert record.candidate is not None
        tree = BranchTree.from_dict(record.candidate["tree"])
        assert record.tree == tree.compact() and record.key
        assert record.candidate["balancer"] == trial.params["balancer"]
        assert record.candidate["train"]["lr"] == pytest.approx(trial.params["train.lr"], rel=5e-3)  # rounded to 3 digits
        assert record.n_params == tree.parameter_count(blocks, heads)
        assert set(record.val_metrics) == set(TASKS) and record.flops and record.flops > 0
        assert list(artifact_dir(config.storage).rglob(record.weights_artifact or "-"))
        if trial.number == 1:
            continue
        assert len(record.history) == record.epochs_trained == 2 and record.history[-1] == trial.value
        assert record.train_seconds is not None and record.train_seconds > 0
    assert len({TrialRecord.of(t).candidate["train"]["seed"] for t in trials}) == 6  # type: ignore[index]


def test_the_single_task_design_is_answered_from_the_baselines(searched: tuple[SearchConfig, optuna.Study]) -> None:
    _, study = searched
    trial = study.trials[1]
    record = TrialRecord.of(trial)
    assert record.label == "single-task networks + equal" and record.answered_from == "baselines"
    assert record.epochs_trained == 0 and not record.history  # not trained again
    middle = study.user_attrs["baselines"]["grid"][1]
    assert record.candidate["train"]["lr"] == middle  # type: ignore[index]
    tuning = _jobs(study)[f"baseline-tune/{middle!r}"]
    assert record.val_metrics == tuning["val"] and record.weights_artifact == tuning["weights_artifact"]


def test_obvious_designs_come_first(searched: tuple[SearchConfig, optuna.Study]) -> None:
    _, study = searched
    records = [TrialRecord.of(t) for t in study.trials]
    # the tiny space offers loss weighting only (equal, dwa, uncertainty): no aggregator default
    assert [r.stage for r in records] == ["obvious"] * 2 + ["screen"] * 4
    assert [r.label for r in records[:2]] == ["hard sharing + equal", "single-task networks + equal"]
    hps, single = BranchTree.hard_sharing(TASKS, 3), BranchTree.single_task(TASKS, 3)
    trees = [BranchTree.from_dict(r.candidate["tree"]) for r in records[:2]]  # type: ignore[index]
    assert trees == [hps, single]


def test_baselines_choose_a_rate_per_task_and_are_recorded(searched: tuple[SearchConfig, optuna.Study]) -> None:
    _, study = searched
    raw = study.user_attrs["baselines"]
    assert raw["grid"] == [0.00147, 0.00316, 0.00681]  # 1/6, 1/2, 5/6 of the log range [1e-3, 1e-2]
    assert set(raw["lr_by_task"]) == set(TASKS) and all(lr in raw["grid"] for lr in raw["lr_by_task"].values())
    for task in TASKS:
        by_lr = {float(k): v[task] for k, v in raw["val_by_lr"].items()}
        higher_better = task != "z"  # every tiny task's metric is maximized
        best = max(by_lr.values()) if higher_better else min(by_lr.values())
        assert raw["val"][task] == best and by_lr[raw["lr_by_task"][task]] == best
        assert raw["val"][task] > raw["trivial"][task]
    jobs = _jobs(study)
    tuning = [j for k, j in jobs.items() if k.startswith("baseline-tune/")]
    assert len(tuning) == 3 and {j["seed"] for j in tuning} == {baseline_tuning_seed(0)}


def test_confirmation_is_paired_on_fresh_seeds(searched: tuple[SearchConfig, optuna.Study]) -> None:
    config, study = searched
    conf = Confirmation.from_dict(study.user_attrs["confirmation"])
    seeds = confirmation_seeds(config.seed, 2)
    assert conf.seeds == seeds
    jobs = _jobs(study)
    for i, seed in enumerate(seeds):
        same_index = [j for j in jobs.values() if j.get("seed_index") == i]
        # every confirmed design and the single-task networks: seed i is the same seed
        assert len(same_index) == len(conf.designs) and {j["seed"] for j in same_index} == {seed}
    screening_seeds = {TrialRecord.of(t).candidate["train"]["seed"] for t in study.trials}  # type: ignore[index]
    assert not set(seeds) & (screening_seeds | {baseline_tuning_seed(config.seed)})  # fresh
    # the top 2 designs by screening value and the best obvious hard-sharing design (if not among them)
    ranked = sorted((d for d in designs(study.trials) if d.label != "single-task networks + equal"), key=lambda d: -d.mean())
    expected = {d.key for d in ranked[:2]}
    hps = [d for d in ranked if d.label.startswith("hard sharing")]
    if not expected & {d.key for d in hps}:
        expected.add(hps[0].key)
    assert {d.key for d in conf.designs} == expected | {SINGLE_TASK}
    single = conf.design(SINGLE_TASK)
    assert single.mean == pytest.approx(0.0, abs=1e-9)  # Δm against the mean of its own runs
    for d in conf.designs:
        assert len(d.values) == len(d.weights) == 2
    # the answer is the best mean: never worse on validation than any obvious design measured the same way
    assert conf.best.mean == max(d.mean for d in conf.designs)
    assert conf.verdict and conf.verdict.splitlines()[-1].startswith("(Δm differences are mean ± std over 2 paired")


def test_a_design_is_trained_at_most_twice(make_config: Callable[..., SearchConfig]) -> None:
    """The no-repeat rule: the same design proposed four times trains once, then once more as a
    declared extra seed, then is answered from the study without training and is not counted."""
    config = make_config({"search.n_trials": 5, "search.confirm": False})
    study = run_search(config, n_trials=3, progress=False)  # the obvious designs
    twin = dict(study.trials[0].params)  # hard sharing + equal
    for _ in range(3):
        study.enqueue_trial(twin)
    study = run_search(config, progress=False)
    same = [t for t in study.trials if TrialRecord.of(t).key == TrialRecord.of(study.trials[0]).key]
    records = [TrialRecord.of(t) for t in same]
    trained = [r for r in records if r.epochs_trained > 0]
    assert len(trained) == MAX_SCREEN_RUNS == 2
    assert records[1].repeat_of == same[0].number and records[1].answered_from is None
    answered = [(t, r) for t, r in zip(same, records) if r.answered_from == "study"]
    assert len(answered) == 2
    mean = (same[0].value + same[1].value) / 2  # type: ignore[operator]
    for t, r in answered:
        assert t.value == pytest.approx(mean) and r.epochs_trained == 0 and r.weights_artifact is None
    assert len(finished_trials(study)) == 5  # the two answers do not count toward the total
    assert len([d for d in designs(study.trials) if d.key == records[0].key]) == 1  # one design, two runs


def test_total_is_exact_and_a_rerun_trains_nothing(make_config: Callable[..., SearchConfig]) -> None:
    config = make_config({"search.n_trials": 4, "search.confirm": {"top_k": 1, "seeds": 1}})
    study = run_search(config, progress=False)
    assert len(finished_trials(study)) == 4
    n_jobs = len(_jobs(study))
    again = run_search(config, progress=False)
    assert len(again.trials) == len(study.trials) and len(_jobs(again)) == n_jobs
    more = run_search(config, n_trials=6, progress=False)
    assert len(finished_trials(more)) == 6


def test_too_few_trials_still_measure_the_obvious_designs(make_config: Callable[..., SearchConfig]) -> None:
    lines: list[str] = []
    study = run_search(make_config({"search.confirm": False}), n_trials=1, progress=False, echo=lines.append)
    assert len(finished_trials(study)) == 2
    assert any("less than the 2 designs every search measures first" in line for line in lines)


def test_baselines_no_better_than_a_constant_fail_the_search(make_config: Callable[..., SearchConfig]) -> None:
    """One epoch is too short for the tiny data's multilabel task: its tuned single-task AUROC stays
    below a constant predictor's 0.5 (deterministic on a CPU), so Δm against it would mean nothing."""
    config = make_config({"train.epochs": 1})
    pattern = r"task '\w' is no better than a constant predictor on validation: (auroc|r2|accuracy) [-\d.]+ against [-\d.]+"
    with pytest.raises(BaselineError, match=pattern):
        run_search(config, progress=False)
    study = optuna.load_study(study_name="tiny", storage=config.storage)
    assert not study.trials and "baselines" in study.user_attrs  # no trial ran on a meaningless Δm
    with pytest.raises(LookupError, match="no study in storage .* has a finished trial"):
        load_study(config.storage)  # a study that failed before its first trial is never the default


def test_interrupted_trial_does_not_count_and_is_retried(
    make_config: Callable[..., SearchConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    import automtl.screening as search_module  # the screening trials train through it

    config = make_config({"search.n_trials": 4, "search.confirm": False})
    first = len(run_search(config, n_trials=3, progress=False).trials)
    real = search_module.train_candidate
    calls = {"n": 0}

    def interrupt_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(search_module, "train_candidate", interrupt_once)
    with pytest.raises(KeyboardInterrupt):
        run_search(config, progress=False)
    study = load_study(config.storage)
    stopped = study.trials[first]
    assert stopped.state == TrialState.FAIL and TrialRecord.of(stopped).interrupted == "interrupted"
    assert len(finished_trials(study)) == 3
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].params == stopped.params  # retried by the next run
    study = run_search(config, progress=False)
    assert len(finished_trials(study)) == 4 and study.trials[first + 1].params == stopped.params


def test_nan_loss_fails_the_trial_and_the_study_goes_on(
    make_config: Callable[..., SearchConfig], nan_loss_calls: dict[str, int]
) -> None:
    config = make_config(
        {
            "tasks": {"b": {"loss": "tests.helpers:nan_loss"}},
            "search.n_trials": 4,
            "search.confirm": False,
        }
    )
    lines: list[str] = []
    first = len(run_search(config, n_trials=3, progress=False).trials)  # baselines and first trials: no NaN yet
    nan_loss_calls["calls_left"] = 1  # the first training step of the next trial
    study = run_search(config, progress=False, echo=lines.append)
    trial = study.trials[first]
    assert trial.state == TrialState.FAIL
    reason = TrialRecord.of(trial).fail_reason or ""
    assert "task 'b'" in reason and "nan" in reason
    assert any(line.startswith(f"trial {first:>3}     fail") and "task 'b'" in line for line in lines)
    assert len(finished_trials(study)) == 4  # a recorded failure counts: not retried
    assert len(run_search(config, progress=False).trials) == first + 1


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
    assert len(load_study(config.storage, "tiny").trials) == 6  # untouched


EQUIVALENT = [
    ("search.objective", "delta_m"),  # the default, now written out
    ("search.cost", []),
    ("search.constraints", {}),
    ("train.optimizer", "adamw"),
    ("space.task_split_points", None),
    ("search.sampler", "tpe"),
    ("search.pruner", "median"),
]


@pytest.mark.parametrize(("dotted", "value"), EQUIVALENT, ids=[e[0] for e in EQUIVALENT])
def test_an_equivalent_config_resumes(searched: tuple[SearchConfig, optuna.Study], dotted: str, value: Any) -> None:
    config, study = searched
    before = len(_jobs(study))
    study = run_search(parse_config(_changed(config.raw, dotted, value), trust_code=True), progress=False)
    assert len(study.trials) == 6 and len(_jobs(study)) == before  # nothing trained again


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_unavailable_device_is_a_config_error(tiny_config: SearchConfig) -> None:
    with pytest.raises(ConfigError) as exc:
        run_search(tiny_config, device="cuda", progress=False)
    assert exc.value.key == "device"


def test_same_seed_reproduces_a_cpu_search(make_config: Callable[..., SearchConfig], tmp_path: Path) -> None:
    from dataclasses import replace

    config = make_config({"search.n_trials": 5, "search.sampler": "tpe", "search.confirm": {"top_k": 1, "seeds": 1}})
    first = run_search(config, progress=False)
    second = run_search(replace(config, storage=f"sqlite:///{tmp_path / 'again.db'}"), progress=False)
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert [t.value for t in first.trials] == [t.value for t in second.trials]
    conf = [Confirmation.from_dict(s.user_attrs["confirmation"]) for s in (first, second)]
    assert [(d.key, d.values) for d in conf[0].designs] == [(d.key, d.values) for d in conf[1].designs]
    assert conf[0].verdict == conf[1].verdict
    # study seed 1 trains baselines that only tie a constant on the tiny data's task c: seed 2
    other = run_search(replace(config, storage=f"sqlite:///{tmp_path / 'other.db'}", seed=2), progress=False)
    assert [t.params for t in other.trials][3:] != [t.params for t in first.trials][3:]


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
    from automtl.space import SearchSpace

    config = make_config({"search.n_trials": 6, "search.confirm": False})
    measure_affinity(config, measure="cosine", every=1).save(tmp_path / "aff")
    affinity = load_affinity(tmp_path / "aff")
    experiment = prepare(config)
    space = SearchSpace(config, experiment.data.task_names, experiment.backbone.n_blocks)
    seeds = seed_params(affinity, space)
    assert seeds, "the affinity should give at least one tree"

    study = run_search(config, progress=False, seed_from_affinity=tmp_path / "aff")
    derived = [t for t in study.trials if TrialRecord.of(t).label == "from affinity"]
    assert derived and [t.number for t in derived] == list(range(2, 2 + len(derived)))  # right after the obvious ones
    for trial, params in zip(derived, seeds):
        assert {k: trial.params[k] for k in params} == params

    restricted = make_config({"search.n_trials": 3, "search.study_name": "restricted", "search.confirm": False})
    study = run_search(restricted, progress=False, seed_from_affinity=tmp_path / "aff", restrict_to_affinity=True)
    groups, _ = best_grouping(affinity.matrix, affinity.tasks, space.max_groups)
    fixed = grouping_params(groups, space.tasks)
    for trial in study.trials:
        if TrialRecord.of(trial).stage == "screen":
            assert {k: trial.params[k] for k in fixed} == fixed


def test_restrict_without_affinity_is_refused(make_config: Callable[..., SearchConfig]) -> None:
    with pytest.raises(ConfigError) as info:
        run_search(make_config(), progress=False, restrict_to_affinity=True)
    assert info.value.key == "restrict_to_affinity"
