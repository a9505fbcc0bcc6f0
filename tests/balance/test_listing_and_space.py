"""Listing, search-space integration and aggregator properties."""

from __future__ import annotations

import dataclasses
import warnings

import optuna
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from automtl.balance import BALANCERS, StepContext, create_balancer, describe_balancers
from automtl.config import load_config
from automtl.errors import ConfigError
from automtl.space import SearchSpace
from automtl.train import task_losses

from .conftest import BRANCHED, TASKS, make_batch, make_net


def test_describe_balancers_lists_every_registered_name() -> None:
    rows = describe_balancers()
    assert [r["name"] for r in rows] == BALANCERS.list()
    for r in rows:
        assert r["family"] in ("loss_weighting", "gradient_aggregation")
        assert r["paper"] and r["summary"] and ":" in r["class"]
        for hp in r["hyperparameters"].values():
            assert set(hp) == {"default", "low", "high", "log", "choices", "doc"}
        if r["family"] == "gradient_aggregation":
            assert "mode" in r["hyperparameters"]
    assert {r["name"] for r in describe_balancers("grad*")} == {"graddrop", "gradnorm", "gradvac"}
    by_name = {r["name"]: r for r in rows}
    assert by_name["upgrad"]["requires"] and "quadprog" in by_name["upgrad"]["install"]
    assert by_name["nash_mtl"]["requires"] == [] and by_name["nash_mtl"]["install"] == ""


def _space(names: list[str]) -> SearchSpace:
    config = load_config("search_spaces/quickstart.yaml")
    config = dataclasses.replace(config, space=dataclasses.replace(config.space, balancers={n: {} for n in names}))
    return SearchSpace(config, [f"t{i}" for i in range(11)], 4)


def _installed() -> list[str]:
    return [n for n in BALANCERS.list() if not getattr(BALANCERS.get(n), "missing_requirements", list)()]


def test_search_space_samples_every_strategy_and_its_hyperparameters() -> None:
    names = _installed()
    space = _space(names)
    assert set(space.balancers) == set(names)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for name in names:
        study.enqueue_trial({"balancer": name})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seen = {}
    for _ in names:
        trial = study.ask()
        candidate = space.sample(trial)
        seen[candidate.balancer] = candidate.balancer_params
        cls = BALANCERS.get(candidate.balancer)
        assert set(candidate.balancer_params) == set(cls.hyperparameters)
        create_balancer(candidate.balancer, space.tasks, **candidate.balancer_params)
        study.tell(trial, 0.0)
    assert set(seen) == set(names)
    assert seen["upgrad"]["mode"] in ("full", "representation")


def test_a_strategy_whose_solver_is_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    cls = BALANCERS.get("upgrad")
    monkeypatch.setattr(cls, "missing_requirements", classmethod(lambda c: ["quadprog"]))
    with pytest.raises(ConfigError) as info:
        _space(["equal", "upgrad"])
    assert info.value.key == "space.balancers.upgrad" and "quadprog" in str(info.value)
    assert "upgrad" not in _space(["all"]).balancers  # 'all' skips what is not installed


def test_search_space_can_restrict_the_set() -> None:
    space = _space(["equal", "upgrad"])
    trial = optuna.trial.FixedTrial(
        {**{f"tree.group.t{i}": 0 for i in range(11)}, "tree.group_split.0": 4, "tree.group_split.1": 4,
         **{f"tree.task_split.t{i}": 4 for i in range(11)}, "balancer": "upgrad", "balancer.upgrad.mode": "representation",
         "train.lr": 1e-3}
    )
    candidate = space.sample(trial)
    assert candidate.balancer == "upgrad" and candidate.balancer_params == {"mode": "representation"}


# Aggregators whose result does not depend on the order of the tasks (the others draw a random
# order or random signs per step).
ORDER_INVARIANT = ["upgrad", "mgda", "dualproj", "imtl_g", "aligned_mtl", "config", "cagrad", "fairgrad", "excess_mtl"]


@settings(max_examples=6, deadline=None)
@given(perm=st.permutations(list(TASKS)), mode=st.sampled_from(["full", "representation"]))
@pytest.mark.parametrize("name", ORDER_INVARIANT)
def test_aggregation_is_invariant_to_task_order(name: str, perm, mode: str) -> None:
    cls = BALANCERS.get(name)
    if cls.missing_requirements():
        pytest.skip(f"{name} needs {cls.missing_requirements()}")
    if mode not in cls.hyperparameters["mode"].choices:
        mode = "full"

    def run(order):
        net = make_net(BRANCHED)
        batch = make_batch()
        features = net.features(batch.x)
        losses = task_losses(net, batch, net.heads_forward(features))
        weights = create_balancer(name, TASKS, mode=mode).backward(
            {t: losses[t] for t in order}, StepContext(net.param_groups(), extra={"features": features})
        )
        return weights, {n: p.grad for n, p in net.named_parameters()}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (wa, ga), (wb, gb) = run(list(TASKS)), run(list(perm))
    assert wa == pytest.approx(wb, rel=1e-3, abs=1e-5)
    for key in ga:
        torch.testing.assert_close(ga[key], gb[key], rtol=1e-3, atol=1e-5)
