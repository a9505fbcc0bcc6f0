"""measure_affinity: the Python twin of ``automtl affinity CONFIG``, on a tiny configuration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from automtl.affinity import (
    DEFAULT_EVERY,
    format_affinity,
    load_affinity,
    measure_affinity,
    train_config_for,
)
from automtl.config import SearchConfig
from automtl.tree import BranchTree

OPPOSING = "tests.affinity._toy:opposing_data"


def test_lookahead_on_a_config(make_config: Callable[..., SearchConfig], tmp_path: Path) -> None:
    config = make_config({"train.epochs": 3})
    result = measure_affinity(config, every=2)
    n = len(result.tasks)
    assert result.measure == "lookahead" and result.every == 2 and result.matrix.shape == (n, n)
    assert result.tree == BranchTree.hard_sharing(result.tasks, 3)
    assert result.info["warmup_epochs"] == 1 and result.history_epochs == [1, 2]  # the first epoch is a warm-up
    per_epoch = int(result.cost["steps"]) // 3
    assert result.cost["measurements"] == len(range(per_epoch + per_epoch % 2, 3 * per_epoch, 2))
    assert "from epoch 1" in format_affinity(result)
    assert result.baseline is not None and result.baseline.shape == (n,)
    assert result.cost["overhead"] >= 1.0 and result.cost["measure_seconds"] > 0
    assert result.info["split"] == "train" and result.info["train"]["lr"] == pytest.approx((1e-3 * 1e-2) ** 0.5)
    result.save(tmp_path)
    np.testing.assert_array_equal(load_affinity(tmp_path).matrix, result.matrix)


def test_cosine_through_the_config_path(make_config: Callable[..., SearchConfig]) -> None:
    config = make_config({"data": {"name": OPPOSING}, "backbone.options.hidden": [16, 16], "train.epochs": 1})
    result = measure_affinity(config, measure="cosine", every=1, warmup_epochs=0)
    assert result.symmetric and result.tasks == ["a", "b", "c"]
    np.testing.assert_allclose(np.diag(result.matrix), 1.0)
    np.testing.assert_allclose(result.matrix, result.matrix.T)
    assert result.cost["measurements"] == result.cost["steps"] == 8  # 256 samples, batches of 32


@pytest.mark.parametrize("measure", ["rsa", "cka"])
def test_representation_measures(make_config: Callable[..., SearchConfig], measure: str) -> None:
    result = measure_affinity(make_config({"train.epochs": 1}), measure=measure, samples=40)
    n = len(result.tasks)
    assert result.symmetric and result.every is None and len(result.per_block) == 3
    np.testing.assert_allclose(result.matrix, result.matrix.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(result.matrix), 1.0, atol=1e-9)
    assert np.all(result.matrix <= 1 + 1e-9) and np.all(result.matrix >= -1 - 1e-9)
    assert result.tree == BranchTree.single_task(result.tasks, 3) and result.counts.shape == (n, n)


def test_argument_errors(tiny_config: SearchConfig) -> None:
    with pytest.raises(ValueError, match="unknown affinity measure"):
        measure_affinity(tiny_config, measure="vibes")
    with pytest.raises(ValueError, match="every"):
        measure_affinity(tiny_config, every=0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        measure_affinity(tiny_config, warmup_epochs=2)  # the tiny config trains 2 epochs
    with pytest.raises(ValueError, match="shares no parameter"):
        measure_affinity(tiny_config, tree=BranchTree.single_task(["a", "b", "c", "d"], 3))
    with pytest.raises(ValueError, match="tasks"):
        measure_affinity(tiny_config, tree=BranchTree.hard_sharing(["a", "b"], 3))
    with pytest.raises(ValueError, match="single-task"):
        measure_affinity(tiny_config, measure="rsa", tree=BranchTree.hard_sharing(["a", "b", "c", "d"], 3))


def test_train_config_takes_the_middle_of_the_space(tiny_config: SearchConfig) -> None:
    train = train_config_for(tiny_config)
    assert train.epochs == 2 and train.batch_size == 32 and train.seed == tiny_config.seed
    assert train.lr == pytest.approx(10**-2.5)
    assert DEFAULT_EVERY >= 1
