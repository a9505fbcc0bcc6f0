"""The evaluation protocol: a search reads training and validation data only.

The test split of the data set below is sealed: touching its inputs, labels or masks raises.
A search (with every objective, including the single-task baselines and the confirmation stage,
and a multi-objective search with every cost and a budget) must complete on it; an export, which does read the test split, must trip the seal, which shows that
the seal works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import optuna
import pytest

import automtl
from automtl.data import MultiTaskData, Split
from tests.conftest import set_key, tiny_raw
from tests.helpers import tiny_data


class TestSplitRead(AssertionError):
    """Raised when anything reads the sealed test split."""

    __test__ = False


class SealedSplit(Split):
    """A split whose every read raises :class:`TestSplitRead`."""

    def __init__(self) -> None:  # no fields: nothing to read
        pass

    def __getattribute__(self, name: str) -> Any:
        if name in {"x", "y", "mask", "to", "subset", "batches"}:
            raise TestSplitRead(f"the test split was read ({name})")
        return object.__getattribute__(self, name)

    def __len__(self) -> NoReturn:
        raise TestSplitRead("the test split was read (len)")


def sealed_data(**options: Any) -> MultiTaskData:
    """``tests.helpers.tiny_data`` with its test split sealed."""
    data = tiny_data(**options)
    data.test = SealedSplit()
    return data


def _config(tmp_path: Path, objective: Any, **search: Any) -> automtl.SearchConfig:
    raw = tiny_raw(tmp_path)
    set_key(raw, "data.name", "tests.test_protocol:sealed_data")
    set_key(raw, "search.objective", objective)
    set_key(raw, "search.n_trials", 3)
    for key, value in search.items():
        set_key(raw, f"search.{key}", value)
    return automtl.parse_config(raw, trust_code=True)


def test_sealed_split_trips_on_every_read() -> None:
    sealed = SealedSplit()
    for read in (lambda: sealed.x, lambda: sealed.y, lambda: sealed.mask, lambda: len(sealed), lambda: sealed.to("cpu")):
        with pytest.raises(TestSplitRead):
            read()


SEARCHES: list[tuple[Any, dict[str, Any]]] = [
    ("mean_score", {}),
    ("delta_m", {}),
    ({"weighted": {"a": 1, "d": 2}}, {}),
    ("per_task", {}),
    ("delta_m", {"cost": ["n_params", "flops", "latency_ms"], "constraints": {"max_params": 100_000}}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("objective", "search"), SEARCHES, ids=[f"{o}-{sorted(s)}" for o, s in SEARCHES])
def test_search_never_reads_test_labels(tmp_path: Path, objective: Any, search: dict[str, Any]) -> None:
    config = _config(tmp_path, objective, **search)
    study = automtl.run_search(config, progress=False)
    states = [t.state for t in study.trials]
    # 3 counted trials, and the single-task design answered from the baselines; then the confirmation
    assert states == [optuna.trial.TrialState.COMPLETE] * 4, [t.user_attrs for t in study.trials]
    assert "confirmation" in study.user_attrs


@pytest.mark.slow
def test_export_reads_test_split_so_the_seal_is_live(tmp_path: Path) -> None:
    config = _config(tmp_path, "mean_score")
    study = automtl.run_search(config, progress=False)
    with pytest.raises(TestSplitRead):
        automtl.export_trial(study, config.storage, tmp_path / "bundle", trust_code=True)
