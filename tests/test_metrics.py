"""Per-task metrics against hand-computed cases, and the aggregate score's sign handling."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from automtl.metrics import (
    DELTA_M_CONVENTION,
    METRICS,
    aggregate_score,
    compute_metric,
    delta_m,
    direction_of,
)
from automtl.tasks import TaskSpec

BINARY = TaskSpec("a", "binary")
MULTICLASS = TaskSpec("c", "multiclass", num_classes=3)
MULTILABEL = TaskSpec("d", "multilabel", num_classes=2)


def _metric(name: str, output: list, target: list, task: TaskSpec = BINARY) -> float:
    out, tgt = torch.tensor(output, dtype=torch.float32), torch.tensor(target)
    return METRICS.get(name).fn(out, tgt, task)


def _pairwise_auroc(score: list[float], target: list[int]) -> float:
    pos = [s for s, t in zip(score, target) if t == 1]
    neg = [s for s, t in zip(score, target) if t == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_hand_computed_with_ties() -> None:
    # positive 0.4 beats negative 0.1 (1) and ties negative 0.4 (1/2); positive 0.8 beats both (2)
    assert _metric("auroc", [0.1, 0.4, 0.4, 0.8], [0.0, 0.0, 1.0, 1.0]) == 3.5 / 4
    assert _metric("auroc", [0.3, 0.3, 0.3, 0.3], [0.0, 1.0, 0.0, 1.0]) == 0.5
    assert _metric("auroc", [2.0, 1.0, -1.0], [0.0, 1.0, 1.0]) == 0.0
    assert _metric("auroc", [-3.0, 1.0, 2.0, 2.0, 2.0], [0.0, 1.0, 0.0, 1.0, 1.0]) == (1 + 0 + 1 + 0.5 + 1 + 0.5) / 6
    assert math.isnan(_metric("auroc", [0.1, 0.2], [1.0, 1.0]))  # one class only


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(0, 1)), min_size=2, max_size=30))
def test_auroc_equals_the_pairwise_definition(pairs: list[tuple[int, int]]) -> None:
    scores, targets = [float(s) for s, _ in pairs], [t for _, t in pairs]
    value = _metric("auroc", scores, [float(t) for t in targets])
    if len(set(targets)) < 2:
        assert math.isnan(value)
    else:
        assert value == pytest.approx(_pairwise_auroc(scores, targets), abs=1e-12)
        # monotone transforms of the scores (logits vs probabilities) do not change it
        probs = torch.sigmoid(torch.tensor(scores, dtype=torch.float64)).tolist()
        assert _metric("auroc", probs, [float(t) for t in targets]) == pytest.approx(value, abs=1e-12)


def test_multilabel_auroc_is_the_mean_over_labels_skipping_undefined() -> None:
    output = [[0.1, 0.5], [0.4, 0.2], [0.4, 0.9], [0.8, 0.3]]
    assert _metric("auroc", output, [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], MULTILABEL) == pytest.approx(
        (3.5 / 4 + 0.0) / 2  # label 1: both positives (0.2, 0.3) score below both negatives
    )
    # label 1 has no positive: left out, not counted as 0 or NaN
    assert _metric("auroc", output, [[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]], MULTILABEL) == 3.5 / 4


def test_r2_hand_computed() -> None:
    reg = TaskSpec("r", "regression", target_mean=50.0, target_std=10.0)
    # ss_res = 1, ss_tot = 5
    assert _metric("r2", [1.0, 2.0, 3.0, 5.0], [1.0, 2.0, 3.0, 4.0], reg) == pytest.approx(0.8)
    assert _metric("r2", [2.5, 2.5, 2.5, 2.5], [1.0, 2.0, 3.0, 4.0], reg) == pytest.approx(0.0)
    assert math.isnan(_metric("r2", [1.0, 2.0], [3.0, 3.0], reg))  # constant target


def test_mae_and_rmse_are_in_original_units() -> None:
    reg = TaskSpec("r", "regression", target_mean=100.0, target_std=10.0)
    # standardized errors 0.5 and -1.5 are 5 and -15 in the target's unit; the mean does not matter
    assert _metric("mae", [0.0, 1.0], [0.5, -0.5], reg) == pytest.approx(10.0)
    assert _metric("rmse", [0.0, 1.0], [0.5, -0.5], reg) == pytest.approx(math.sqrt((25 + 225) / 2))
    assert _metric("mae", [0.0, 1.0], [0.5, -0.5], TaskSpec("r", "regression")) == pytest.approx(1.0)


def test_accuracies() -> None:
    logits = [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]]
    assert _metric("accuracy", logits, [0, 1, 0, 0], MULTICLASS) == 0.75
    # recalls: class 0: 2/3, class 1: 1/1 (class 2 absent, left out)
    assert _metric("balanced_accuracy", logits, [0, 1, 0, 0], MULTICLASS) == pytest.approx((2 / 3 + 1) / 2)
    assert _metric("accuracy", [1.0, -1.0, 0.5, -0.2], [1.0, 1.0, 1.0, 0.0]) == 0.75  # logits > 0 mean positive
    assert _metric("balanced_accuracy", [1.0, -1.0, 0.5, -0.2], [1.0, 1.0, 1.0, 0.0]) == pytest.approx((2 / 3 + 1) / 2)
    assert _metric("accuracy", [[1.0, -1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], MULTILABEL) == 0.75


def test_compute_metric_reads_labelled_samples_only() -> None:
    output = torch.tensor([0.1, 0.4, 0.4, 0.8, 9.0, -9.0])
    target = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 1.0])  # the last two would make it worse
    mask = torch.tensor([True, True, True, True, False, False])
    assert compute_metric(BINARY, output, target, mask) == 3.5 / 4
    assert math.isnan(compute_metric(BINARY, output, target, torch.zeros(6, dtype=torch.bool)))


def test_directions() -> None:
    assert {n: direction_of(n) for n in METRICS} == {
        "auroc": "maximize",
        "accuracy": "maximize",
        "balanced_accuracy": "maximize",
        "r2": "maximize",
        "mae": "minimize",
        "rmse": "minimize",
    }
    assert all(METRICS.get(n).unit for n in METRICS)


def test_aggregate_score_counts_minimized_metrics_negatively() -> None:
    tasks = [TaskSpec("a", "binary"), TaskSpec("r", "regression", metric="mae")]
    assert aggregate_score({"a": 0.8, "r": 2.0}, tasks) == pytest.approx((0.8 - 2.0) / 2)
    # a smaller error is a higher score
    assert aggregate_score({"a": 0.8, "r": 1.0}, tasks) > aggregate_score({"a": 0.8, "r": 2.0}, tasks)
    assert aggregate_score({"a": 0.8, "r": 0.5}, [TaskSpec("a", "binary"), TaskSpec("r", "regression")]) == pytest.approx(0.65)


def test_aggregate_score_skips_nan_metrics() -> None:
    tasks = [TaskSpec("a", "binary"), TaskSpec("r", "regression", metric="mae"), TaskSpec("c", "multiclass", num_classes=3)]
    assert aggregate_score({"a": 0.8, "r": float("nan"), "c": 0.6}, tasks) == pytest.approx(0.7)
    assert aggregate_score({"a": float("nan"), "r": 3.0, "c": float("nan")}, tasks) == -3.0
    with pytest.raises(ValueError, match="no task has a finite metric"):
        aggregate_score({"a": float("nan"), "r": float("nan"), "c": float("nan")}, tasks)


def test_delta_m_sign_and_percent() -> None:
    tasks = [TaskSpec("a", "binary"), TaskSpec("r", "regression", metric="mae")]
    # a: 0.9 vs 0.8 is +12.5 %; r: error 1.5 vs 2.0 is 25 % lower, so +25 %
    assert delta_m({"a": 0.9, "r": 1.5}, {"a": 0.8, "r": 2.0}, tasks) == pytest.approx((12.5 + 25.0) / 2)
    # worse on both: negative
    assert delta_m({"a": 0.7, "r": 3.0}, {"a": 0.8, "r": 2.0}, tasks) == pytest.approx((-12.5 - 50.0) / 2)
    assert delta_m({"a": 0.8, "r": 2.0}, {"a": 0.8, "r": 2.0}, tasks) == 0.0
    # the baseline's magnitude, not its sign, scales the change (R² may be negative)
    r2 = [TaskSpec("r", "regression")]
    assert delta_m({"r": -0.1}, {"r": -0.2}, r2) == pytest.approx(50.0)


def test_delta_m_leaves_out_what_cannot_be_compared() -> None:
    tasks = [TaskSpec("a", "binary"), TaskSpec("b", "binary"), TaskSpec("c", "binary")]
    nan = float("nan")
    assert delta_m({"a": 0.9, "b": nan, "c": 0.5}, {"a": 0.8, "b": 0.5, "c": 0.0}, tasks) == pytest.approx(12.5)
    assert delta_m({"a": 0.9, "b": 0.6, "c": 0.5}, {"a": 0.8, "b": nan}, tasks) == pytest.approx(12.5)
    with pytest.raises(ValueError, match="no task"):
        delta_m({"a": nan}, {"a": 0.8}, tasks)
    assert "positive is better" in DELTA_M_CONVENTION
