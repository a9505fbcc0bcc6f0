"""Cost measures: parameter count, forward FLOPs by hand, latency; the config's names agree."""

from __future__ import annotations

import pytest
import torch

from automtl.backbones import Backbone
from automtl.build import build_model
from automtl.config import BUDGET_NAMES, COST_NAMES
from automtl.cost import BUDGETS, COSTS, count_flops, measure_costs, measure_latency_ms
from automtl.data import MultiTaskData
from automtl.tree import BranchTree


def test_config_names_match_the_registry() -> None:
    assert COST_NAMES == tuple(COSTS)
    assert set(BUDGET_NAMES) == set(BUDGETS) and set(BUDGETS.values()) == set(COSTS)


def _linear_flops(net: torch.nn.Module) -> int:
    """2 × in × out per Linear layer, each module run once per sample."""
    return sum(2 * m.in_features * m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("arch", ["hps", "single"])
def test_flops_count_every_linear_layer_once_per_sample(data: MultiTaskData, backbone: Backbone, arch: str) -> None:
    tasks = data.task_names
    tree = BranchTree.hard_sharing(tasks, 3) if arch == "hps" else BranchTree.single_task(tasks, 3)
    net = build_model(tree, backbone, data.tasks, "cpu")
    assert count_flops(net, data.input_shape) == _linear_flops(net)
    assert net.training  # restored


def test_shared_prefix_is_counted_once(data: MultiTaskData, backbone: Backbone) -> None:
    tasks = data.task_names
    hps = build_model(BranchTree.hard_sharing(tasks, 3), backbone, data.tasks, "cpu")
    single = build_model(BranchTree.single_task(tasks, 3), backbone, data.tasks, "cpu")
    assert count_flops(single, data.input_shape) > 3 * count_flops(hps, data.input_shape)


def test_measure_costs(data: MultiTaskData, backbone: Backbone) -> None:
    net = build_model(BranchTree.hard_sharing(data.task_names, 3), backbone, data.tasks, "cpu")
    costs = measure_costs(net, data.input_shape, ["flops", "latency_ms"])
    assert costs["n_params"] == net.num_parameters()
    assert costs["flops"] == _linear_flops(net)
    assert 0 < costs["latency_ms"] < 1000
    assert set(measure_costs(net, data.input_shape, [])) == {"n_params"}
    with pytest.raises(KeyError, match="unknown cost 'watts'"):
        measure_costs(net, data.input_shape, ["watts"])
    with pytest.raises(ValueError, match="repeats"):
        measure_latency_ms(net, data.input_shape, repeats=0)
