"""Single-task baselines: the learning-rate grid, the trivial predictor, the choice per task and
the sanity check (:mod:`automtl.baselines`)."""

from __future__ import annotations

import math

import pytest
import torch

from automtl.baselines import (
    BaselineChoice,
    check_sane,
    choose,
    lr_grid,
    trivial_metrics,
)
from automtl.config import ParamSpec
from automtl.data import MultiTaskData, Split
from automtl.errors import BaselineError
from automtl.tasks import TaskSpec


# ----------------------------------------------------------------------------------------- lr_grid
def test_lr_grid_of_a_fixed_rate() -> None:
    assert lr_grid(ParamSpec("fixed", value=0.003)) == [0.003]


def test_lr_grid_of_choices_keeps_their_order() -> None:
    assert lr_grid(ParamSpec("choice", choices=(0.01, 0.001, 0.1))) == [0.01, 0.001, 0.1]


def test_lr_grid_of_a_log_range_is_at_one_sixth_half_and_five_sixths_of_its_log() -> None:
    # 1e-4 * 100 ** q for q = 1/6, 1/2, 5/6: 2.1544e-4, 1e-3, 4.6416e-3, to 3 significant digits
    grid = lr_grid(ParamSpec("range", low=1e-4, high=1e-2, log=True))
    assert grid == [0.000215, 0.001, 0.00464]
    for value, q in zip(grid, (1 / 6, 1 / 2, 5 / 6)):
        exact = math.exp(math.log(1e-4) + q * (math.log(1e-2) - math.log(1e-4)))
        assert abs(value - exact) <= 0.005 * exact


def test_lr_grid_of_a_linear_range() -> None:
    # 0.001 + q * 0.006 for q = 1/6, 1/2, 5/6
    assert lr_grid(ParamSpec("range", low=0.001, high=0.007)) == [0.002, 0.004, 0.006]


def test_lr_grid_of_an_empty_range_is_one_rate() -> None:
    assert lr_grid(ParamSpec("range", low=0.01, high=0.01, log=True)) == [0.01]


# ------------------------------------------------------------------------------- trivial_metrics
T, F = True, False
REG_TRAIN = [1.0, 2.0, 3.0, 6.0, 100.0]  # the last one is not labelled
REG_VAL = [2.0, 5.0, 4.0, 0.0, -50.0]  # the last one is not labelled
REG_MEAN = 3.0  # mean of the labelled 1, 2, 3, 6
REG_STD = math.sqrt(3.5)  # ddof 0: (4 + 1 + 0 + 9) / 4


def _hand_data(*, hide_val: tuple[str, ...] = ()) -> MultiTaskData:
    """Five training and five validation rows; masked entries hold the placeholder 0 (or a
    value that would change the answer if it were read)."""
    tasks = [
        TaskSpec("bin", "binary"),
        TaskSpec("mc", "multiclass", num_classes=3),
        TaskSpec("reg", "regression", target_mean=REG_MEAN, target_std=REG_STD),
        TaskSpec("ml", "multilabel", num_classes=2),
    ]

    def split(y: dict[str, torch.Tensor], mask: dict[str, list[bool]]) -> Split:
        return Split(torch.zeros(5, 2), y, {t: torch.tensor(m) for t, m in mask.items()})

    train = split(
        {
            "bin": torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]),
            # labelled 2, 2, 1: majority 2; reading the two masked 0s too would tie 0 with 2
            "mc": torch.tensor([2, 2, 0, 0, 1]),
            "reg": (torch.tensor(REG_TRAIN) - REG_MEAN) / REG_STD,
            "ml": torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
        },
        {"bin": [T, T, T, T, F], "mc": [T, T, F, F, T], "reg": [T, T, T, T, F], "ml": [T] * 5},
    )
    val_mask = {"bin": [T, T, T, T, F], "mc": [T, T, T, T, F], "reg": [T, T, T, T, F], "ml": [T] * 5}
    for task in hide_val:
        val_mask[task] = [F] * 5
    val = split(
        {
            "bin": torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0]),
            "mc": torch.tensor([2, 0, 2, 2, 0]),  # labelled 2, 0, 2, 2: predicting 2 is right 3 of 4
            "reg": (torch.tensor(REG_VAL) - REG_MEAN) / REG_STD,
            "ml": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]),
        },
        val_mask,
    )
    return MultiTaskData("hand", tasks, train, val, val, (2,), {})


def test_trivial_metrics_by_hand() -> None:
    got = trivial_metrics(_hand_data())
    # R² of predicting the training mean 3 for 2, 5, 4, 0 (in the original unit; R² is unit-free):
    # 1 - ((2-3)² + (5-3)² + (4-3)² + (0-3)²) / Σ (y - 2.75)² = 1 - 15 / 14.75 = -1/59
    expected = {"bin": 0.5, "mc": 0.75, "reg": -1 / 59, "ml": 0.5}
    assert got == pytest.approx(expected, abs=1e-6)  # the labels are float32


def test_trivial_metrics_of_a_task_without_labels_is_nan() -> None:
    got = trivial_metrics(_hand_data(hide_val=("reg", "bin")))
    assert math.isnan(got["reg"]) and math.isnan(got["bin"]) and got["mc"] == pytest.approx(0.75)


# ------------------------------------------------------------------------------------------- choose
AUROC = TaskSpec("a", "binary")
MAE = TaskSpec("m", "regression", metric="mae")
GRID = [1e-3, 3e-3, 1e-2]


def test_choose_takes_each_task_s_best_rate_direction_aware() -> None:
    results = {1e-3: {"a": 0.70, "m": 4.0}, 3e-3: {"a": 0.85, "m": 5.0}, 1e-2: {"a": 0.80, "m": 3.5}}
    choice = choose([AUROC, MAE], GRID, 7, results)
    assert choice.lr_by_task == {"a": 3e-3, "m": 1e-2}  # highest AUROC, lowest MAE
    assert choice.val == {"a": 0.85, "m": 3.5}
    assert choice.grid == GRID and choice.seed == 7
    assert choice.val_by_lr == {"0.001": results[1e-3], "0.003": results[3e-3], "0.01": results[1e-2]}


@pytest.mark.parametrize("grid", [[1e-3, 3e-3, 1e-2], [1e-2, 3e-3, 1e-3]])
def test_choose_breaks_ties_by_grid_order(grid: list[float]) -> None:
    results = {1e-3: {"a": 0.8, "m": 3.0}, 3e-3: {"a": 0.7, "m": 4.0}, 1e-2: {"a": 0.8, "m": 3.0}}
    choice = choose([AUROC, MAE], grid, 0, results)
    assert choice.lr_by_task == {"a": grid[0], "m": grid[0]}


def test_choose_skips_nan_and_takes_the_middle_rate_when_all_are_nan() -> None:
    nan = float("nan")
    results = {1e-3: {"a": nan, "m": nan}, 3e-3: {"a": 0.6, "m": nan}, 1e-2: {"a": nan, "m": nan}}
    choice = choose([AUROC, MAE], GRID, 0, results)
    assert choice.lr_by_task == {"a": 3e-3, "m": 3e-3} and choice.val["a"] == 0.6 and math.isnan(choice.val["m"])
    results[1e-3]["a"] = 0.5  # a NaN at a better-looking position does not hide a finite value
    assert choose([AUROC, MAE], GRID, 0, results).lr_by_task["a"] == 3e-3


# --------------------------------------------------------------------------------------- check_sane
def _choice(val: dict[str, float], trivial: dict[str, float]) -> BaselineChoice:
    return BaselineChoice(GRID, 0, {}, dict.fromkeys(val, 1e-3), val, trivial)


@pytest.mark.parametrize(
    ("task", "value", "trivial"),
    [(AUROC, 0.5, 0.5), (AUROC, 0.45, 0.5), (MAE, 2.0, 2.0), (MAE, 3.25, 2.5)],
)
def test_check_sane_refuses_a_baseline_no_better_than_trivial(task: TaskSpec, value: float, trivial: float) -> None:
    with pytest.raises(BaselineError) as info:
        check_sane(_choice({task.name: value}, {task.name: trivial}), [task])
    message = str(info.value)
    assert f"task '{task.name}'" in message and f"{task.metric} {value:g} against {trivial:g}" in message
    assert "0.001, 0.003, 0.01" in message


@pytest.mark.parametrize(("task", "value", "trivial"), [(AUROC, 0.51, 0.5), (MAE, 1.9, 2.0)])
def test_check_sane_passes_a_strictly_better_baseline(task: TaskSpec, value: float, trivial: float) -> None:
    check_sane(_choice({task.name: value}, {task.name: trivial}), [task])


@pytest.mark.parametrize(("value", "trivial"), [(float("nan"), 0.5), (0.4, float("nan"))])
def test_check_sane_ignores_nan(value: float, trivial: float) -> None:
    check_sane(_choice({"a": value}, {"a": trivial}), [AUROC])
    check_sane(_choice({"a": 0.4}, {}), [AUROC])  # no trivial value recorded: nothing to check


def test_check_sane_names_the_failing_task_among_several() -> None:
    choice = _choice({"a": 0.9, "m": 5.0}, {"a": 0.5, "m": 4.0})
    with pytest.raises(BaselineError, match="task 'm'"):
        check_sane(choice, [AUROC, MAE])
