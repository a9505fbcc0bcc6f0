"""Objective values by hand: weighted score, per-task, Δm, costs; names and directions."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from automtl.config import SearchConfig
from automtl.errors import ConfigError
from automtl.objectives import ObjectiveSpec, weighted_score
from automtl.tasks import TaskSpec

TASKS = (
    TaskSpec("up", "binary", metric="accuracy"),
    TaskSpec("down", "regression", metric="mae"),
)


def test_weighted_score_by_hand() -> None:
    metrics = {"up": 0.8, "down": 0.5}
    assert weighted_score(metrics, TASKS, {"up": 3.0, "down": 1.0}) == pytest.approx((3 * 0.8 - 0.5) / 4)
    assert weighted_score(metrics, TASKS, {"up": 1.0}) == pytest.approx(0.8)  # unnamed task: weight 0
    assert weighted_score({"up": math.nan, "down": 0.5}, TASKS, {"up": 1, "down": 1}) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="positive weight"):
        weighted_score({"up": math.nan, "down": 0.5}, TASKS, {"up": 1.0})


def test_values_in_name_order() -> None:
    metrics, baseline = {"up": 0.9, "down": 0.4}, {"up": 0.6, "down": 0.5}
    spec = ObjectiveSpec("delta_m", TASKS, cost=("n_params", "flops"))
    assert spec.names == ["delta_m", "n_params", "flops"]
    assert spec.directions == ["maximize", "minimize", "minimize"] and spec.is_multi
    # Δm = 100/2 * ((0.9-0.6)/0.6 - (0.4-0.5)/0.5) = 50 * (0.5 + 0.2) = 35
    assert spec.values(metrics, baseline, {"n_params": 10.0, "flops": 20.0}) == pytest.approx([35.0, 10.0, 20.0])
    per_task = ObjectiveSpec("per_task", TASKS)
    assert per_task.names == ["val up", "val down"] and per_task.is_multi
    assert per_task.values(metrics, None, {}) == pytest.approx([0.9, -0.4])
    single = ObjectiveSpec("mean_score", TASKS)
    assert not single.is_multi and single.values(metrics, None, {}) == pytest.approx([0.25])
    with pytest.raises(ValueError, match="baseline"):
        ObjectiveSpec("delta_m", TASKS).values(metrics, None, {})


def test_describe_says_which_way_is_better() -> None:
    text = ObjectiveSpec("delta_m", TASKS, cost=("latency_ms",)).describe()
    assert "Δm" in text and "higher is better" in text and "latency_ms (ms per forward pass (median), lower is better)" in text


def test_weighted_objective_must_name_known_tasks(make_config: Callable[..., SearchConfig]) -> None:
    config = make_config({"search.objective": {"weighted": {"up": 1, "zzz": 2}}})
    with pytest.raises(ConfigError) as err:
        ObjectiveSpec.from_config(config, TASKS)
    assert err.value.key == "search.objective.weighted.zzz" and "['up', 'down']" in str(err.value)
    ok = ObjectiveSpec.from_config(make_config({"search.objective": {"weighted": {"down": 2}}}), TASKS)
    assert ok.quality == "weighted" and ok.weights == {"down": 2.0}
