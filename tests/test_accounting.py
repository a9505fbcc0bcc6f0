"""What a search cost in training-run equivalents (:mod:`automtl.accounting`)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from automtl.accounting import RULE, StageCost, cost_by_stage, format_costs, run_tre
from automtl.jobs import JobQueue

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize(
    ("epochs_trained", "epochs", "flops", "hps_flops", "tre"),
    [
        (5, 5, 70.0, 70.0, 1.0),  # one full training of hard sharing
        (3, 5, 600.0, 300.0, 1.2),  # 3/5 of the epochs of a network twice as costly
        (1, 4, 50.0, 200.0, 0.0625),
        (0, 5, 100.0, 100.0, 0.0),  # untrained: over budget or answered
        (5, 5, 100.0, 0.0, 0.0),  # hard sharing's FLOPs unknown
    ],
)
def test_run_tre_by_hand(epochs_trained: int, epochs: int, flops: float, hps_flops: float, tre: float) -> None:
    assert run_tre(epochs_trained, epochs, flops, hps_flops) == pytest.approx(tre)


def test_stage_cost_adds_runs() -> None:
    stage = StageCost("screening")
    stage.add(0.5, 2.0)
    stage.add(1.25, 3.5)
    assert (stage.runs, stage.tre, stage.seconds) == (2, 1.75, 5.5)


def test_format_costs_text() -> None:
    stages = [StageCost("screening", 3, 2.5, 10.4), StageCost("baselines", 2, 1.0, 5.0), StageCost("confirmation", 4, 4.3, 20.0)]
    assert format_costs(stages) == (
        "cost: screening 2.5 TRE (3 runs, 10 s); baselines 1.0 TRE (2 runs, 5 s); "
        "confirmation 4.3 TRE (4 runs, 20 s); total 7.8 TRE, 35 s of training\n"
        f"  ({RULE})"
    )
    assert format_costs(stages, wall_seconds=61.6).splitlines()[0].endswith("; wall time of this run 62 s")


def test_cost_by_stage_of_a_hand_built_study() -> None:
    study = optuna.create_study(study_name="s", direction="maximize")
    study.set_user_attr("config", {"train": {"epochs": 4}})
    study.set_user_attr("hps_flops", 100.0)
    records = [
        {"epochs_trained": 4, "flops": 100.0, "train_seconds": 3.0},  # 1 TRE
        {"epochs_trained": 2, "flops": 300.0, "train_seconds": 2.0},  # pruned after half: 1.5 TRE
        {"epochs_trained": 0, "flops": 900.0, "answered_from": "study"},  # not trained
        {"epochs_trained": 0, "flops": 900.0, "over_budget": "n_params"},  # not trained
    ]
    for r in records:
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.0, user_attrs={"automtl": r}))
    jobs = JobQueue(study._storage, "s").study
    for key, result in [
        ("baseline-tune/0.001", {"flops": 50.0, "epochs": 4, "seconds": 1.0}),  # 0.5 TRE
        ("baseline-confirm/0", {"flops": 50.0, "epochs": 4, "seconds": 1.5}),  # 0.5 TRE
        ("confirm/abc/0", {"flops": 200.0, "epochs": 4, "seconds": 4.0}),  # 2 TRE
        ("confirm/abc/1", {"fail_reason": "NaN"}),  # no cost recorded
    ]:
        jobs.add_trial(create_trial(state=TrialState.COMPLETE, value=0.0, user_attrs={"job": {"key": key}, "result": result}))
    screening, baselines, confirmation = cost_by_stage(study)
    assert (screening.runs, screening.tre, screening.seconds) == (2, pytest.approx(2.5), 5.0)
    assert (baselines.runs, baselines.tre, baselines.seconds) == (1, pytest.approx(0.5), 1.0)  # tuning only
    # the single-task networks' confirmation-seed runs count with the confirmation stage, as its line says
    assert (confirmation.runs, confirmation.tre, confirmation.seconds) == (2, pytest.approx(2.5), 5.5)
