"""The search space: a stable encoding, and the trees and balancers it can reach."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from automtl.balance import create_balancer
from automtl.config import ParamSpec, SearchConfig
from automtl.experiment import prepare
from automtl.space import Candidate, SearchSpace
from automtl.train import TrainConfig
from automtl.tree import BranchTree

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(config: SearchConfig) -> SearchSpace:
    experiment = prepare(config)
    return SearchSpace(config, experiment.data.task_names, experiment.backbone.n_blocks)


def _sample(space: SearchSpace, n: int, seed: int = 0) -> tuple[optuna.Study, list[Candidate]]:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    candidates = []
    for _ in range(n):
        trial = study.ask()
        candidates.append(space.sample(trial))
        study.tell(trial, 0.0)
    return study, candidates


def test_encoding_names_and_ranges_are_the_same_in_every_trial(make_config: Callable[..., SearchConfig]) -> None:
    config = make_config({"train.batch_size": [16, 32], "space.task_split_points": [1, 3]})
    study, _ = _sample(_space(config), 12)
    distributions: dict[str, optuna.distributions.BaseDistribution] = {}
    for trial in study.trials:
        for name, dist in trial.distributions.items():
            assert distributions.setdefault(name, dist) == dist, f"{name} changed its range"
    tasks = ["a", "b", "c", "d"]
    always = {
        *(f"tree.group.{t}" for t in tasks),
        "tree.group_split.0",
        "tree.group_split.1",
        *(f"tree.task_split.{t}" for t in tasks),
        "balancer",
        "train.lr",
        "train.batch_size",
    }
    for trial in study.trials:
        names = set(trial.params)
        # only the chosen balancer's own hyperparameters come and go
        assert names - {n for n in names if n.startswith("balancer.")} == always
        assert {n for n in names if n.startswith("balancer.")} <= {f"balancer.{trial.params['balancer']}.temperature"}
    assert distributions["tree.group.a"] == optuna.distributions.IntDistribution(0, 1)
    assert distributions["tree.group_split.1"] == optuna.distributions.IntDistribution(0, 3)
    # 0 (single-task networks) is always added to the task points, 3 (= never) to both
    assert distributions["tree.task_split.a"] == optuna.distributions.CategoricalDistribution([0, 1, 3])
    assert distributions["balancer"] == optuna.distributions.CategoricalDistribution(["equal", "dwa", "uncertainty"])
    assert distributions["train.lr"] == optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)


def test_one_group_and_no_split_point_is_hard_sharing(make_config: Callable[..., SearchConfig]) -> None:
    config = make_config({"space.max_groups": 1, "space.group_split_points": [3], "space.task_split_points": [3]})
    space = _space(config)
    assert space.task_points == (0, 3) and space.added_points == {"group_split_points": [], "task_split_points": [0]}
    study = optuna.create_study(direction="maximize")
    for split in (3, 0):
        study.enqueue_trial({f"tree.task_split.{t}": split for t in "abcd"})
    trial = study.ask()
    assert space.sample(trial).tree == BranchTree.hard_sharing(["a", "b", "c", "d"], 3)
    study.tell(trial, 0.0)
    assert space.sample(study.ask()).tree == BranchTree.single_task(["a", "b", "c", "d"], 3)


def test_every_space_can_express_the_obvious_designs(make_config: Callable[..., SearchConfig]) -> None:
    config = make_config({"space.group_split_points": [1], "space.task_split_points": [2], "space.balancers": ["dwa", "mgda"]})
    space = _space(config)
    assert space.group_points == (1, 3) and space.task_points == (0, 2, 3)
    obvious = space.obvious_designs()
    # dwa is the space's only loss weighting, mgda its only aggregator (upgrad is not offered)
    assert [d.label for d in obvious] == ["hard sharing + dwa", "hard sharing + mgda", "single-task networks + dwa"]
    study = optuna.create_study(direction="maximize")
    for d in obvious:
        study.enqueue_trial(d.params)
    got = []
    for _ in obvious:
        trial = study.ask()
        got.append(space.sample(trial))
        study.tell(trial, 0.0)
    hps, single = BranchTree.hard_sharing(["a", "b", "c", "d"], 3), BranchTree.single_task(["a", "b", "c", "d"], 3)
    assert [(c.tree, c.balancer) for c in got] == [(hps, "dwa"), (hps, "mgda"), (single, "dwa")]
    assert all(c.train.lr == pytest.approx(3.16e-3) for c in got)  # the middle of the lr range, rounded
    assert got[0].balancer_params == {"temperature": 2.0}  # dwa's own default, inside its range
    assert got[1].balancer_params == {"mode": "full"}


def test_family_defaults_are_preferred(make_config: Callable[..., SearchConfig]) -> None:
    space = _space(make_config({"space.balancers": ["dwa", "equal", "mgda", "upgrad"]}))
    assert [d.label for d in space.obvious_designs()] == [
        "hard sharing + equal",
        "hard sharing + upgrad",
        "single-task networks + equal",
    ]


def test_sampled_floats_are_rounded_and_keys_identify_designs(make_config: Callable[..., SearchConfig]) -> None:
    _, candidates = _sample(_space(make_config()), 6)
    for c in candidates:
        assert c.train.lr == float(f"{c.train.lr:.3g}")
        assert c.key() == c.with_seed(c.train.seed + 1).key()  # the seed is not part of the design
    keys = {c.key() for c in candidates}
    assert len(keys) == len({(c.tree, c.balancer, c.train.lr, str(c.balancer_params)) for c in candidates})


def test_canonical_rounding() -> None:
    from automtl.space import canonical

    assert canonical(0.0031623) == 0.00316 and canonical(123456.0) == 123000.0
    assert canonical({"a": [1.23456, 2]}) == {"a": [1.23, 2]} and canonical(3) == 3 and canonical("x") == "x"
    assert canonical(0.0) == 0.0


def test_random_trials_reach_several_trees_and_balancers(make_config: Callable[..., SearchConfig]) -> None:
    _, candidates = _sample(_space(make_config()), 10, seed=1)
    assert len({c.tree for c in candidates}) >= 2
    assert len({c.balancer for c in candidates}) >= 2
    for c in candidates:
        assert c.tree.tasks == ("a", "b", "c", "d") and c.tree.n_blocks == 3
        assert 1e-3 <= c.train.lr <= 1e-2 and c.train.epochs == 2 and c.train.batch_size == 32
        assert (c.balancer == "dwa") == ("temperature" in c.balancer_params)
    assert len({c.train.seed for c in candidates}) == len(candidates)  # each trial its own training seed


def test_max_groups_is_capped_by_the_number_of_tasks(make_config: Callable[..., SearchConfig]) -> None:
    # prepare() refuses a written max_groups above the task count (tests/test_config.py); the
    # space itself still caps one, e.g. the default 3 for a two-task data set
    space = SearchSpace(make_config({"space.max_groups": 9}), ["a", "b", "c", "d"], 3)
    assert space.max_groups == 4
    study, _ = _sample(space, 2)
    assert study.trials[0].distributions["tree.group.a"] == optuna.distributions.IntDistribution(0, 3)


def test_balancer_overrides(make_config: Callable[..., SearchConfig]) -> None:
    config = make_config({"space.balancers": {"dwa": {"temperature": 3.0}, "fixed": {"weights": {"a": 2.0}}}})
    _, candidates = _sample(_space(config), 8)
    for c in candidates:
        expected = {"temperature": 3.0} if c.balancer == "dwa" else {"weights": {"a": 2.0}}
        assert c.balancer_params == expected
        balancer = create_balancer(c.balancer, ["a", "b", "c", "d"], **c.balancer_params)
        if c.balancer == "fixed":
            assert balancer.weights == {"a": 2.0, "b": 1.0, "c": 1.0, "d": 1.0}
    assert {c.balancer for c in candidates} == {"dwa", "fixed"}


def test_candidate_round_trip(make_config: Callable[..., SearchConfig]) -> None:
    _, candidates = _sample(_space(make_config()), 3)
    for c in candidates:
        again = Candidate.from_dict(c.to_dict())
        assert again == c and isinstance(again.train, TrainConfig)


def test_describe(make_config: Callable[..., SearchConfig]) -> None:
    described = _space(make_config({"space.group_split_points": [1, 3]})).describe()
    assert described["tasks"] == ["a", "b", "c", "d"] and described["n_blocks"] == 3
    assert described["group_split_points"] == [1, 3] and described["task_split_points"] == [0, 1, 2, 3]
    assert described["balancers"]["dwa"] == {"temperature": {"low": 0.5, "high": 5.0, "log": True}}
    assert described["train"]["lr"] == {"low": 1e-3, "high": 1e-2, "log": True}


@pytest.mark.parametrize("optimizer", ["adamw", ["adam", "sgd"]])
def test_known_optimizers_are_accepted(make_config: Callable[..., SearchConfig], optimizer: object) -> None:
    _, candidates = _sample(_space(make_config({"train.optimizer": optimizer})), 2)
    assert all(c.train.optimizer in ("adamw", "adam", "sgd") for c in candidates)


def test_all_narrows_shared_choices_to_each_strategy(make_config) -> None:  # type: ignore[no-untyped-def]
    from automtl.balance import BALANCERS
    from automtl.config import parse_param
    from automtl.space import SearchSpace

    config = make_config()
    space_cfg = dataclasses.replace(config.space, balancers={"all": {"mode": parse_param(["representation"], "mode")}})
    space = SearchSpace(dataclasses.replace(config, space=space_cfg), ["a", "b", "c", "d"], 3)
    for name, specs in space.balancers.items():
        choices = BALANCERS.get(name).hyperparameters.get("mode")
        if choices is None:
            assert "mode" not in specs
        elif "representation" in (choices.choices or ()):
            assert specs["mode"].choices == ("representation",), name
        else:  # a method without the cheap mode keeps its own choices
            assert "representation" not in (specs["mode"].choices or ()), name


def test_an_override_outside_a_strategy_s_choices_is_a_config_error(make_config) -> None:  # type: ignore[no-untyped-def]
    from automtl.config import parse_param
    from automtl.errors import ConfigError
    from automtl.space import SearchSpace

    config = make_config()
    bad = {"excess_mtl": {"mode": parse_param(["representation"], "mode")}}
    with pytest.raises(ConfigError) as info:
        SearchSpace(dataclasses.replace(config, space=dataclasses.replace(config.space, balancers=bad)), ["a", "b", "c", "d"], 3)
    assert info.value.key == "space.balancers.excess_mtl.mode"


# ------------------------------------------------------------------- canonical, keys and defaults
@settings(max_examples=200, deadline=None)
@given(st.floats(-1e300, 1e300, allow_subnormal=False).filter(lambda v: v != 0.0))  # (near 1.8e308, 3 digits overflow)
def test_canonical_keeps_three_significant_digits(value: float) -> None:
    from decimal import Decimal

    from automtl.space import canonical

    rounded = canonical(value)
    assert isinstance(rounded, float) and canonical(rounded) == rounded  # idempotent
    assert len(Decimal(repr(rounded)).normalize().as_tuple().digits) <= 3
    assert abs(rounded - value) <= 0.005 * abs(value) * (1 + 1e-12)  # half a unit in the third digit


def test_canonical_leaves_non_floats_and_non_finite_values_alone() -> None:
    import math

    from automtl.space import canonical

    assert canonical(True) is True and canonical(7) == 7 and isinstance(canonical(7), int)
    assert canonical(-0.0012345) == -0.00123 and canonical((1.23456, "x")) == [1.23, "x"]
    assert canonical({"w": {"a": 2.0001, "b": [0.33333]}}) == {"w": {"a": 2.0, "b": [0.333]}}
    assert math.isnan(canonical(float("nan"))) and canonical(float("inf")) == float("inf") and canonical(None) is None


def _candidate(**changes: object) -> Candidate:
    base: dict[str, object] = {
        "tree": BranchTree.hard_sharing(["a", "b"], 2),
        "balancer": "dwa",
        "balancer_params": {"temperature": 2.0},
        "train": TrainConfig(epochs=3, batch_size=32, lr=1e-3, weight_decay=0.0, seed=5),
    }
    base.update(changes)
    return Candidate(**base)  # type: ignore[arg-type]


def test_candidate_key_ignores_the_seed_and_sub_rounding_differences() -> None:
    c = _candidate()
    assert len(c.key()) == 16 and int(c.key(), 16) >= 0
    assert c.with_seed(999).key() == c.key()
    nearly = _candidate(train=TrainConfig(epochs=3, batch_size=32, lr=1.0004e-3, weight_decay=0.0, seed=1))
    assert nearly.key() == c.key()  # the same design once canonically rounded
    assert _candidate(balancer_params={"temperature": 2.0001}).key() == c.key()


@pytest.mark.parametrize(
    "change",
    [
        {"tree": BranchTree.single_task(["a", "b"], 2)},
        {"tree": BranchTree.hard_sharing(["a", "b"], 3)},
        {"balancer": "uncertainty", "balancer_params": {"temperature": 2.0}},
        {"balancer_params": {"temperature": 3.0}},
        {"balancer_params": {}},
        {"train": TrainConfig(epochs=4, batch_size=32, lr=1e-3, weight_decay=0.0, seed=5)},
        {"train": TrainConfig(epochs=3, batch_size=64, lr=1e-3, weight_decay=0.0, seed=5)},
        {"train": TrainConfig(epochs=3, batch_size=32, lr=1.01e-3, weight_decay=0.0, seed=5)},
        {"train": TrainConfig(epochs=3, batch_size=32, lr=1e-3, weight_decay=1e-4, seed=5)},
        {"train": TrainConfig(epochs=3, batch_size=32, lr=1e-3, weight_decay=0.0, optimizer="sgd", seed=5)},
        {"train": TrainConfig(epochs=3, batch_size=32, lr=1e-3, weight_decay=0.0, seed=5, lr_by_task={"a": 1e-3, "b": 1e-2})},
    ],
)
def test_candidate_key_changes_with_any_part_of_the_design(change: dict[str, object]) -> None:
    assert _candidate(**change).key() != _candidate().key()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (ParamSpec("fixed", value=0.123456), 0.123),  # rounded to 3 digits, as sample() rounds it
        (ParamSpec("choice", choices=(64, 32)), 64),
        (ParamSpec("range", low=1e-4, high=1e-2, log=True), 1e-3),  # geometric middle
        (ParamSpec("range", low=1e-3, high=1e-2, log=True), 0.00316),  # sqrt(1e-5), rounded
        (ParamSpec("range", low=0.0, high=0.3), 0.15),
        (ParamSpec("range", low=1, high=7), 4),
        (ParamSpec("range", low=2, high=32, log=True), 8),
    ],
)
def test_default_value(spec: ParamSpec, expected: object) -> None:
    from automtl.space import default_value

    got = default_value(spec)
    assert got == expected and type(got) is type(expected)
