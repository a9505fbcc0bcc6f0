"""Early stopping only where early and final ranks agree (:mod:`automtl.pruning`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.trial import FrozenTrial, TrialState, create_trial
from scipy.stats import spearmanr

from automtl.pruning import RankAgreementPruner, spearman

optuna.logging.set_verbosity(optuna.logging.WARNING)

EPOCHS = 5


# ---------------------------------------------------------------------------------------- spearman
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=2, max_size=12))
def test_spearman_matches_scipy_ties_included(pairs: list[tuple[int, int]]) -> None:
    x = [float(a) for a, _ in pairs]
    y = [float(b) for _, b in pairs]
    ours = spearman(x, y)
    if len(set(x)) == 1 or len(set(y)) == 1:
        assert math.isnan(ours)  # scipy too (with a warning): a constant side has no ranks
        return
    assert ours == pytest.approx(float(spearmanr(x, y).statistic), abs=1e-12)


def test_spearman_by_hand() -> None:
    # one swapped neighbour pair among 4: 1 - 6 * (1 + 1) / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


# ------------------------------------------------------------------------------------------ pruner
def _curve(final_rank: float, early: float | None = None) -> dict[int, float]:
    """Epoch objectives ending at ``final_rank / 8 + 1/16``; epoch ``e < 4`` at ``early + e/64``
    (``early`` defaults to ``final_rank / 8``, in line with the final rank). Eighths and 64ths
    are exact in binary, so medians below are exact."""
    start = final_rank / 8 if early is None else early
    return {e: start + e / 64 for e in range(EPOCHS - 1)} | {EPOCHS - 1: final_rank / 8 + 1 / 16}


def _study(curves: Sequence[dict[int, float]], pruned: Sequence[dict[int, float]] = ()) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for c in curves:
        study.add_trial(
            create_trial(state=TrialState.COMPLETE, value=c[max(c)], intermediate_values=c, distributions={}, params={})
        )
    for c in pruned:
        study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values=c, distributions={}, params={}))
    return study


def _running(study: optuna.Study, values: dict[int, float]) -> FrozenTrial:
    study.add_trial(create_trial(state=TrialState.RUNNING, intermediate_values=values, distributions={}, params={}))
    return study.get_trials(deepcopy=False)[-1]


AGREEING = [_curve(r) for r in range(8)]  # 8 trials whose ranks never change
MEDIAN_AT_1 = (3 / 8 + 4 / 8) / 2 + 1 / 64  # epoch index 1: r/8 + 1/64 for r = 0..7; median 29/64


def test_a_below_median_trial_is_pruned_when_ranks_agree_and_explained() -> None:
    study = _study(AGREEING)
    pruner = RankAgreementPruner(EPOCHS)
    trial = _running(study, {0: 0.0, 1: 0.0625})
    assert pruner.prune(study, trial) is True
    assert MEDIAN_AT_1 == 0.453125
    assert pruner.explain(trial.number) == (
        "pruned after epoch 2 of 5: objective 0.0625 below the median 0.4531 of 8 completed trials there, "
        "whose ranks at that epoch and at the end agree (Spearman 1.00 >= 0.8)"
    )


@pytest.mark.parametrize("value", [MEDIAN_AT_1, 0.5])
def test_a_trial_at_or_above_the_median_is_not_pruned(value: float) -> None:
    study = _study(AGREEING)
    pruner = RankAgreementPruner(EPOCHS)
    trial = _running(study, {0: 0.0, 1: value})
    assert pruner.prune(study, trial) is False and pruner.explain(trial.number) == ""


def test_never_before_min_trials_complete() -> None:
    # 7 complete trials; the pruned ones (no final epoch) do not count
    study = _study(AGREEING[:7], pruned=[{0: 0.0, 1: 0.0}] * 3)
    trial = _running(study, {0: 0.0, 1: -1.0})
    assert RankAgreementPruner(EPOCHS).prune(study, trial) is False
    assert RankAgreementPruner(EPOCHS, min_trials=7).prune(study, trial) is True


def test_never_on_the_last_epoch() -> None:
    study = _study(AGREEING)
    pruner = RankAgreementPruner(EPOCHS)
    assert pruner.prune(study, _running(study, {e: -1.0 for e in range(EPOCHS)})) is False
    assert pruner.prune(study, _running(study, {e: -1.0 for e in range(EPOCHS - 1)})) is True


def test_never_when_training_is_shorter_than_min_epochs() -> None:
    curves = [{0: r / 10, 1: r / 10 + 0.01, 2: r / 10 + 0.05} for r in range(8)]  # 3 epochs
    study = _study(curves)
    trial = _running(study, {0: -1.0})
    assert RankAgreementPruner(3).prune(study, trial) is False  # min_epochs 4
    assert RankAgreementPruner(3, min_epochs=3).prune(study, trial) is True


def test_never_before_anything_is_reported() -> None:
    study = _study(AGREEING)
    assert RankAgreementPruner(EPOCHS).prune(study, _running(study, {})) is False


def test_never_when_early_ranks_contradict_final_ones() -> None:
    reversed_ = [_curve(r, early=(7 - r) / 8) for r in range(8)]  # Spearman -1 at every early epoch
    study = _study(reversed_)
    assert RankAgreementPruner(EPOCHS).prune(study, _running(study, {0: -1.0, 1: -1.0})) is False


def test_never_when_early_values_are_all_equal() -> None:
    study = _study([_curve(r, early=0.5) for r in range(8)])  # no ranks at all early: Spearman is NaN
    assert RankAgreementPruner(EPOCHS).prune(study, _running(study, {0: -1.0})) is False


# three swapped neighbour pairs among 8: 1 - 6 * 6 / (8 * 63) = 0.9286 (scipy agrees, below)
SWAPPED_EARLY = [1, 0, 3, 2, 5, 4, 6, 7]


@pytest.mark.parametrize(("min_agreement", "prunes"), [(0.9, True), (0.92, True), (0.93, False), (0.99, False)])
def test_the_agreement_threshold_decides(min_agreement: float, prunes: bool) -> None:
    rho = 1 - 6 * 6 / (8 * 63)
    assert float(spearmanr(SWAPPED_EARLY, range(8)).statistic) == pytest.approx(rho)
    study = _study([_curve(r, early=SWAPPED_EARLY[r] / 8) for r in range(8)])
    pruner = RankAgreementPruner(EPOCHS, min_agreement=min_agreement)
    trial = _running(study, {0: -1.0})
    assert pruner.prune(study, trial) is prunes
    if prunes:
        assert f"Spearman {rho:.2f} >= {min_agreement}" in pruner.explain(trial.number)
