"""The confirmation stage: the answer, paired comparisons, the noise rule and the verdict
(:mod:`automtl.confirm`)."""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import ttest_rel

from automtl.confirm import (
    SINGLE_TASK,
    Confirmation,
    ConfirmedDesign,
    _beyond_noise,
    analyse,
    compare,
    pareto_indices,
)

SINGLE = [0.50, 0.60, 0.55, 0.52]  # the single-task networks' objective on four confirmation seeds


def _design(key: str, values: Sequence[float], n_params: int = 300, *, over_budget: str = "") -> ConfirmedDesign:
    """A design whose objective on seed i is ``values[i]`` (both tasks' metric, under :func:`_mean`)."""
    kind = "single-task" if key == SINGLE_TASK else "sampled"
    return ConfirmedDesign(
        key=key,
        label="single-task networks" if key == SINGLE_TASK else key,
        kind=kind,
        trial=None if key == SINGLE_TASK else 3,
        candidate=None,
        tree="0/1" if key == SINGLE_TASK else "0-1",
        balancer="equal",
        n_params=n_params,
        flops=1.0,
        screen_mean=None if key == SINGLE_TASK else 0.0,
        screen_runs=0 if key == SINGLE_TASK else 1,
        val_metrics=[{"a": v, "b": v} for v in values],
        over_budget=over_budget,
    )


def _mean(metrics: Mapping[str, float], baseline: Mapping[str, float]) -> float:
    return statistics.fmean(metrics.values())


def _analyse(others: Sequence[ConfirmedDesign], single: Sequence[float] = SINGLE, unit: str = "mean score") -> Confirmation:
    st_design = _design(SINGLE_TASK, single, 400)
    return analyse("mean_score", unit, list(range(len(single))), st_design.val_metrics, list(others), st_design, _mean)


def _plus(base: Sequence[float], diffs: Sequence[float]) -> list[float]:
    return [b + d for b, d in zip(base, diffs)]


# ------------------------------------------------------------------------------------ the answer
def test_the_answer_has_the_best_mean_and_values_are_the_quality_per_seed() -> None:
    good, better = _design("good", _plus(SINGLE, [0.01] * 4)), _design("better", _plus(SINGLE, [0.02, 0.03, 0.02, 0.01]))
    conf = _analyse([good, better])
    assert conf.answer == "better" and conf.best is better
    assert better.values == pytest.approx([0.52, 0.63, 0.57, 0.53])
    assert conf.design(SINGLE_TASK).values == pytest.approx(SINGLE)
    assert [c.other for c in conf.comparisons] == [SINGLE_TASK, "good"]


@pytest.mark.parametrize("order", [0, 1])
def test_a_tie_goes_to_fewer_parameters(order: int) -> None:
    big, small = _design("big", _plus(SINGLE, [0.05] * 4), 900), _design("small", _plus(SINGLE, [0.05] * 4), 200)
    conf = _analyse([big, small] if order == 0 else [small, big])
    assert conf.answer == "small"


def test_quality_sees_the_mean_of_the_baseline_runs() -> None:
    seen: list[dict[str, float]] = []

    def quality(metrics: Mapping[str, float], baseline: Mapping[str, float]) -> float:
        seen.append(dict(baseline))
        return metrics["a"]

    runs = [{"a": 0.5, "b": float("nan")}, {"a": 0.7, "b": 2.0}]
    single = _design(SINGLE_TASK, [0.0, 0.0])
    single.val_metrics = runs
    conf = analyse("delta_m", "Δm", [11, 22], runs, [_design("x", [0.1, 0.2])], single, quality)
    assert conf.baseline_val == pytest.approx({"a": 0.6, "b": 2.0})  # NaN left out of the mean
    assert all(b == conf.baseline_val for b in seen) and len(seen) == 4


def test_a_missing_seed_is_an_error() -> None:
    with pytest.raises(ValueError, match="1 confirmation runs for 4 seeds"):
        _analyse([_design("short", [0.9])])


def test_compare_gives_paired_differences() -> None:
    a, b = _design("a", [1.0, 2.0, 3.0], 300), _design("b", [0.5, 2.5, 1.0], 600)
    a.values, b.values = [1.0, 2.0, 3.0], [0.5, 2.5, 1.0]
    c = compare(a, b)
    assert c.other == "b" and c.label == "b"
    assert c.diffs == [0.5, -0.5, 2.0] and c.agree == 2
    assert c.mean == pytest.approx(2.0 / 3) and c.std == pytest.approx(statistics.stdev([0.5, -0.5, 2.0]))
    assert c.params_ratio == 0.5
    zero = _design("z", [0.0, 0.0, 0.0], 0)
    zero.values = [0.0, 0.0, 0.0]
    assert compare(a, zero).params_ratio == 300  # no division by zero parameters


# --------------------------------------------------------------------------------- the noise rule
def _scipy_says(diffs: Sequence[float]) -> bool:
    p = ttest_rel(np.asarray(diffs, dtype=float), np.zeros(len(diffs)), alternative="greater").pvalue
    return bool(p < 0.10)  # NaN (no spread, no difference) is not beyond noise


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")  # scipy, on equal differences
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-40, 40), min_size=2, max_size=8), st.lists(st.integers(-40, 40), min_size=8, max_size=8))
def test_beyond_noise_agrees_with_scipy_one_sided_paired_t_test(a: list[int], b: list[int]) -> None:
    x = [v / 8 for v in a]  # eighths: exact in binary, so both sides see the same differences
    y = [v / 8 for v in b[: len(x)]]
    diffs = [p - q for p, q in zip(x, y)]
    p = ttest_rel(x, y, alternative="greater").pvalue
    assume(math.isnan(p) or abs(p - 0.10) > 1e-9)  # not on the boundary itself
    assert _beyond_noise(diffs) is _scipy_says(diffs) is bool(p < 0.10)


def test_beyond_noise_agrees_with_scipy_on_seeded_normal_draws() -> None:
    rng = random.Random(20261202)
    agreed = {True: 0, False: 0}
    for _ in range(400):
        n = rng.randint(2, 8)
        shift = rng.choice([0.0, 0.3, 1.0])
        x = [rng.gauss(shift, 1.0) for _ in range(n)]
        y = [rng.gauss(0.0, 1.0) for _ in range(n)]
        expected = bool(ttest_rel(x, y, alternative="greater").pvalue < 0.10)
        assert _beyond_noise([p - q for p, q in zip(x, y)]) is expected
        agreed[expected] += 1
    assert min(agreed.values()) > 50  # both outcomes were exercised


@pytest.mark.parametrize("diff", [-1.0, 0.0, 0.01, 100.0])
def test_one_seed_is_never_beyond_noise(diff: float) -> None:
    assert _beyond_noise([diff]) is False


def test_identical_positive_differences_are_beyond_noise() -> None:
    assert _beyond_noise([0.1, 0.1, 0.1]) is True and _beyond_noise([0.0, 0.0]) is False


# ---------------------------------------------------------------------------------------- verdicts
@pytest.mark.parametrize(
    ("unit", "scale", "expected"),
    [
        ("mean score", 1.0, "+0.1025 mean score ± 0.0171 (4/4 seeds better) with 75 % of their parameters"),
        ("Δm", 100.0, "+10.25 Δm ± 1.71 (4/4 seeds better) with 75 % of their parameters"),
    ],
)
def test_verdict_when_the_answer_beats_single_task_networks(unit: str, scale: float, expected: str) -> None:
    # diffs 0.10, 0.12, 0.08, 0.11: mean 0.1025, sample std sqrt(8.75e-4 / 3) = 0.01708
    single = [scale * v for v in SINGLE]
    x = _design("x", _plus(single, [scale * d for d in (0.10, 0.12, 0.08, 0.11)]), 300)
    hps = _design("hard sharing + equal", _plus(single, [scale * d for d in (0.01, 0.02, -0.01, 0.0)]), 100)
    conf = _analyse([x, hps], single, unit)
    assert conf.answer == "x"
    first = conf.verdict.splitlines()[0]
    assert first.startswith("answer: x (0-1, equal) beats single-task networks by ") and expected in first
    assert "it beats hard sharing + equal:" in conf.verdict
    assert "beyond seed noise" not in first and "no candidate" not in conf.verdict


def test_verdict_when_nothing_beats_single_task_networks_beyond_noise() -> None:
    diffs = [0.2, -0.15, 0.1, -0.1]  # a better mean, but not beyond noise (t = 0.15)
    x = _design("x", _plus(SINGLE, diffs), 300)
    conf = _analyse([x])
    assert conf.answer == "x"
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    assert f"is within seed noise of single-task networks ({mean:+.4f} mean score ± {std:.4f} (2/4 seeds better)" in conf.verdict
    assert "no candidate beats single-task networks beyond seed noise." in conf.verdict
    assert "beats single-task networks by" not in conf.verdict


def test_verdict_when_single_task_networks_have_the_best_mean() -> None:
    x = _design("x", _plus(SINGLE, [-0.05, -0.06, -0.04, -0.05]), 300)
    conf = _analyse([x])
    assert conf.answer == SINGLE_TASK
    assert conf.verdict.startswith("no candidate beats single-task networks: they have the best mean over 4 fresh seeds.")
    assert "closest: x, -0.0500 mean score against them (0/4 seeds better, 75 % of their parameters)." in conf.verdict


def test_with_one_seed_nothing_beats_anything() -> None:
    x = _design("x", [0.99], 300)
    conf = _analyse([x], single=[0.10])
    assert conf.answer == "x" and not any(c.beats for c in conf.comparisons)
    assert "no candidate beats single-task networks beyond seed noise." in conf.verdict


def test_the_smallest_design_within_noise_of_the_answer_is_named() -> None:
    best = _design("big", _plus(SINGLE, [0.10, 0.12, 0.08, 0.11]), 1000)
    close = _design("small", _plus(SINGLE, [0.09, 0.13, 0.06, 0.12]), 200)  # diffs to best: noise
    conf = _analyse([best, close])
    assert conf.answer == "big" and conf.within_noise == ["small"] and conf.smallest == "small"
    mean = statistics.fmean(_plus(SINGLE, [0.09, 0.13, 0.06, 0.12]))
    assert (
        "the smallest design within seed noise of the best is small (0-1, equal): "
        f"200 parameters, 20 % of the answer's; mean {mean:+.4f} mean score."
    ) in conf.verdict


def test_no_smallest_line_when_the_answer_is_the_smallest() -> None:
    conf = _analyse([_design("x", _plus(SINGLE, [0.0, 0.01, -0.01, 0.02]), 50)])
    assert conf.smallest == "x" and "smallest design" not in conf.verdict


def test_an_over_budget_design_is_compared_but_never_the_answer() -> None:
    over = _design("huge", _plus(SINGLE, [0.30, 0.31, 0.29, 0.30]), 20, over_budget="n_params 5000 > 1000")
    fine = _design("fine", _plus(SINGLE, [0.29, 0.32, 0.28, 0.30]), 300)  # within noise of huge, more parameters
    conf = _analyse([over, fine])
    assert conf.answer == "fine" and conf.smallest == "fine"
    assert "huge" in [c.other for c in conf.comparisons]
    assert "huge exceed(s) a budget (n_params 5000 > 1000): compared, never the answer." in conf.verdict


# ------------------------------------------------------------------------------------------- pareto
def _brute_force_front(points: list[list[float]], maximize: list[bool]) -> list[int]:
    up = np.array([[v if m else -v for v, m in zip(p, maximize)] for p in points])
    front = []
    for i in range(len(points)):
        dominated = np.any(np.all(up >= up[i], axis=1) & np.any(up > up[i], axis=1))
        if not dominated:
            front.append(i)
    return front


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 3).flatmap(lambda k: st.tuples(
    st.lists(st.lists(st.integers(0, 4).map(float), min_size=k, max_size=k), min_size=1, max_size=9),
    st.lists(st.booleans(), min_size=k, max_size=k),
)))
def test_pareto_indices_match_a_brute_force_dominance_check(case: tuple[list[list[float]], list[bool]]) -> None:
    points, maximize = case
    assert pareto_indices(points, maximize) == _brute_force_front(points, maximize)


def test_pareto_indices_by_hand() -> None:
    # quality up, parameters down: (0.9, 100) and (0.8, 10) trade off; (0.7, 50) is dominated by (0.8, 10)
    assert pareto_indices([[0.9, 100], [0.7, 50], [0.8, 10], [0.8, 10]], [True, False]) == [0, 2, 3]


# ---------------------------------------------------------------------------------------- recording
def test_confirmation_round_trips_through_json() -> None:
    x = _design("x", _plus(SINGLE, [0.10, 0.12, 0.08, 0.11]), 300, over_budget="")
    x.weights, x.costs = ["w0", "w1", "w2", "w3"], {"n_params": 300.0}
    conf = _analyse([x, _design("y", _plus(SINGLE, [0.0, 0.01, 0.0, 0.0]), 100, over_budget="flops 9 > 1")])
    again = Confirmation.from_dict(json.loads(json.dumps(conf.to_dict())))
    assert again == conf and again.verdict == conf.verdict and again.best.weights == ["w0", "w1", "w2", "w3"]


# ------------------------------------------------------------------------- choosing among several
def test_the_test_is_corrected_for_the_number_of_designs_the_answer_was_chosen_from() -> None:
    """Diffs whose one-sided paired t-test p-value lies between 0.10 / 3 and 0.10 beat the
    single-task networks when the answer was the only candidate, and not when it was the best
    of three (Bonferroni; scipy's p-value as the reference)."""
    diffs = [0.30, 0.10, 0.55]  # mean 0.3167, std 0.225, t = 2.44 with 2 degrees of freedom
    p = float(ttest_rel(_plus(SINGLE[:3], diffs), SINGLE[:3], alternative="greater").pvalue)
    assert 0.10 / 3 < p < 0.10
    alone = _analyse([_design("x", _plus(SINGLE[:3], diffs))], SINGLE[:3])
    assert next(c for c in alone.comparisons if c.other == SINGLE_TASK).beats
    worse = [_design(k, _plus(SINGLE[:3], [d - 0.2 for d in diffs])) for k in ("y", "z")]
    chosen = _analyse([_design("x", _plus(SINGLE[:3], diffs)), *worse], SINGLE[:3])
    versus_single = next(c for c in chosen.comparisons if c.other == SINGLE_TASK)
    assert chosen.answer == "x" and not versus_single.beats
    assert versus_single.level == pytest.approx(0.10 / 3)
    assert "is within seed noise of single-task networks" in chosen.verdict
    assert "Bonferroni-corrected for choosing the answer among 3 designs" in chosen.verdict


def test_the_best_of_several_equal_designs_rarely_beats_the_baseline() -> None:
    """Family-wise error: 4 designs drawn from the baselines' own distribution (no design is
    better), 3 paired seeds, the seed effect shared; the answer "beats" the single-task networks
    in at most about 10 % of 2,000 simulated confirmations (binomial bound at 4 standard errors)."""
    rng = random.Random(0)
    claims = 0
    n = 2000
    for _ in range(n):
        seed_effect = [rng.gauss(0, 1) for _ in range(3)]
        single = [0.5 + e for e in seed_effect]
        others = [_design(f"d{i}", [s + rng.gauss(0, 0.3) for s in single]) for i in range(4)]
        single_noisy = [s + rng.gauss(0, 0.3) for s in single]
        conf = _analyse(others, single_noisy)
        claims += any(c.other == SINGLE_TASK and c.beats for c in conf.comparisons)
    assert claims / n <= 0.10 + 4 * math.sqrt(0.1 * 0.9 / n)


def test_recheck_judges_recorded_runs_by_the_current_rules() -> None:
    """A recorded confirmation whose comparisons were judged without the correction is judged
    again from its recorded values; rechecking a current one changes nothing."""
    from automtl.confirm import recheck

    diffs = [0.30, 0.10, 0.55]
    worse = [_design(k, _plus(SINGLE[:3], [d - 0.2 for d in diffs])) for k in ("y", "z")]
    conf = _analyse([_design("x", _plus(SINGLE[:3], diffs)), *worse], SINGLE[:3])
    old = Confirmation.from_dict(json.loads(json.dumps(conf.to_dict())))
    for c in old.comparisons:  # as an older automtl recorded it: uncorrected level, "beats"
        c.level, c.beats = 0.10, c.other == SINGLE_TASK or c.beats
    old.verdict = "answer: x beats single-task networks"
    again = recheck(old)
    assert again.verdict == conf.verdict and again.to_dict() == conf.to_dict()
    assert recheck(conf).to_dict() == conf.to_dict()


def test_closest_names_the_design_nearest_to_single_task_networks() -> None:
    near = _design("near", _plus(SINGLE, [-0.01, -0.02, 0.0, -0.01]), 300)
    far = _design("far", _plus(SINGLE, [-0.20, -0.25, -0.22, -0.21]), 100)
    conf = _analyse([far, near])
    assert conf.answer == SINGLE_TASK
    assert "closest: near, -0.0100 mean score against them" in conf.verdict
