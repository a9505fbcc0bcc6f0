"""Fixed designs over seeds, and the cached single-task baselines of Δm."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from automtl import fixed
from automtl.config import SearchConfig
from automtl.experiment import Experiment, prepare
from automtl.fixed import (
    baseline_key,
    default_train_config,
    resolve_arch,
    single_task_baseline,
    train_fixed,
)
from automtl.metrics import delta_m
from automtl.tree import BranchTree
from tests.test_cli import run

TASKS = ["a", "b", "c", "d"]


@pytest.fixture
def experiment(make_config: Callable[..., SearchConfig]) -> Experiment:
    return prepare(make_config({"train.epochs": 1}))


def test_resolve_arch(tmp_path: Path) -> None:
    assert resolve_arch("hps", TASKS, 3) == BranchTree.hard_sharing(TASKS, 3)
    assert resolve_arch("single", TASKS, 3) == BranchTree.single_task(TASKS, 3)
    tree = BranchTree(TASKS, [[TASKS], [["a", "b"], ["c", "d"]], [["a"], ["b"], ["c", "d"]]])
    path = tmp_path / "tree.yaml"
    path.write_text(tree.to_yaml())
    assert resolve_arch(str(path), TASKS, 3) == tree
    with pytest.raises(ValueError, match="expected hps, single or a tree YAML"):
        resolve_arch("deep", TASKS, 3)
    with pytest.raises(ValueError, match="the backbone 4 blocks"):
        resolve_arch(tree, TASKS, 4)


def test_default_train_config_takes_the_middle_of_ranges(make_config: Callable[..., SearchConfig]) -> None:
    config = make_config({"train.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}, "train.batch_size": [16, 32]})
    train = default_train_config(config, seed=3, epochs=7)
    assert train.lr == pytest.approx(1.0e-3) and train.batch_size == 16 and train.seed == 3 and train.epochs == 7


def test_train_fixed_over_seeds(experiment: Experiment) -> None:
    result = train_fixed(experiment, "hps", "equal", seeds=2)
    assert len(result.val) == len(result.test) == len(result.seconds) == 2
    assert all(s > 0 for s in result.seconds) and result.n_params > 0
    # a later seed alone is the same run as in a longer series (CPU, seeded)
    again = train_fixed(experiment, "hps", "equal", seeds=1, first_seed=1)
    assert again.val == result.val[1:] and again.test == result.test[1:] and again.train.seed == 1
    summary = result.summary(experiment.data.tasks)
    a = [r["a"] for r in result.val]
    assert summary["seeds"] == 2
    assert summary["val"]["a"] == pytest.approx({"mean": statistics.fmean(a), "std": statistics.stdev(a)})
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        train_fixed(experiment, "hps", seeds=0)


def test_train_fixed_uses_given_training_settings(experiment: Experiment) -> None:
    searched = replace(default_train_config(experiment.config), lr=5.0e-3, seed=9)
    result = train_fixed(experiment, "single", "dwa", seeds=1, train=searched)
    assert result.train == replace(searched, seed=0)  # the given settings, seeded per run
    assert result.tree == BranchTree.single_task(TASKS, 3) and result.balancer == "dwa"


def test_single_task_baseline_is_cached(experiment: Experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = single_task_baseline(experiment, tmp_path, ("val",))
    train = default_train_config(experiment.config)
    assert (tmp_path / f"{baseline_key(experiment.config, train)}.json").is_file()
    assert delta_m(first["val"], first["val"], experiment.data.tasks) == 0.0

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached baseline was trained again")

    monkeypatch.setattr(fixed, "fit", no_training)
    assert single_task_baseline(experiment, tmp_path, ("val",)) == first
    monkeypatch.undo()
    # a split not yet cached retrains the same (seeded) network; val is unchanged
    both = single_task_baseline(experiment, tmp_path, ("val", "test"))
    assert both["val"] == first["val"] and set(both["test"]) == set(TASKS)
    # another training budget is another baseline
    assert baseline_key(experiment.config, replace(train, epochs=2)) != baseline_key(experiment.config, train)


def test_cli_train(config_file: Path, tmp_path: Path) -> None:
    code, out, err = run("train", str(config_file), "--arch", "hps", "--seeds", "2", "--delta-m", "--trust-code")
    assert code == 0, err
    assert "2 seed(s); mean ± std over seeds" in out and "(delta_m %)" in out and "Δm = (100/T)" in out
    # against the tuned single-task networks trained with the same seeds: a paired difference per split
    assert "B = the mean of the single-task networks over the same seeds" in out
    assert "val: this design minus single-task networks, paired by seed: " in out and "/2 seeds better)" in out
    # one epoch is too short for the tiny data's task d: the baselines do not beat a constant
    code, _, err = run("train", str(config_file), "--arch", "hps", "--epochs", "1", "--delta-m", "--trust-code")
    assert code == 2 and "task 'd' is no better than a constant predictor" in err
    code, _, err = run("train", str(config_file), "--arch", "nowhere.yaml", "--trust-code")
    assert code == 2 and "expected hps, single or a tree YAML" in err
