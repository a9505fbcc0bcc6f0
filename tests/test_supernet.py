"""The weight-sharing supernet: every tree is a sub-network, training resumes exactly, and the
proxy equals the extracted network evaluated with recalibrated BatchNorm."""

from __future__ import annotations

import random
from collections.abc import Callable

import optuna
import pytest
import torch
from torch import nn

from automtl.backbones import create_backbone
from automtl.config import SearchConfig
from automtl.data import MultiTaskData
from automtl.experiment import prepare
from automtl.metrics import compute_metric
from automtl.space import SearchSpace
from automtl.supernet import (
    ProxyEvaluator,
    Supernet,
    SupernetProgress,
    anchor,
    path_sampler,
    paths_flops,
    task_path,
    train_supernet,
    tree_sampler,
)
from automtl.train import TrainConfig
from automtl.tree import BranchTree
from tests import helpers

TASKS = ["a", "b", "c", "d"]


def _space(make_config: Callable[..., SearchConfig]) -> SearchSpace:
    config = make_config({"space.max_groups": 4})
    experiment = prepare(config)
    return SearchSpace(config, experiment.data.task_names, experiment.backbone.n_blocks)


def _trees(space: SearchSpace, n: int, seed: int = 0) -> list[BranchTree]:
    rng = random.Random(seed)
    return [space.random_tree(rng) for _ in range(n)] + [
        BranchTree.hard_sharing(TASKS, 3),
        BranchTree.single_task(TASKS, 3),
    ]


def _image_data() -> MultiTaskData:
    """The tiny tasks on 8x8 one-channel 'images' (the six features tiled), for a backbone with BatchNorm."""
    data = helpers.tiny_data()
    for split in (data.train, data.val, data.test):
        split.x = split.x[:, :4].repeat(1, 16).reshape(-1, 1, 8, 8).contiguous()
    data.input_shape = (1, 8, 8)
    return data


def test_every_tree_uses_distinct_copies_at_each_block(make_config: Callable[..., SearchConfig]) -> None:
    space = _space(make_config)
    for tree in _trees(space, 200):
        for b, partition in enumerate(tree.partitions):
            anchors = [anchor(tree, next(n for n in tree.nodes() if n.block == b and n.tasks == part)) for part in partition]
            assert len(set(anchors)) == len(anchors)
        for task in TASKS:
            path = task_path(tree, task)
            assert list(path) == sorted(path) and path[-1] <= TASKS.index(task)  # parts only split


@pytest.mark.parametrize("kind", ["mlp", "small_cnn"])
def test_a_trees_forward_equals_its_extracted_network(kind: str, make_config: Callable[..., SearchConfig]) -> None:
    space = _space(make_config)
    data = helpers.tiny_data() if kind == "mlp" else _image_data()
    options = {"hidden": [16, 8, 8]} if kind == "mlp" else {"channels": [4, 8], "hidden": 8}
    backbone = create_backbone(kind, data.input_shape, **options)
    torch.manual_seed(0)
    supernet = Supernet(backbone, data.tasks)
    # move every BatchNorm's statistics away from their initial values, copy by copy
    with torch.no_grad():
        for module in supernet.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)  # type: ignore[union-attr]
                module.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]
    supernet.eval()
    x = data.val.x[:9]
    trees = _trees(space, 12) if kind == "mlp" else [
        BranchTree.hard_sharing(TASKS, 3), BranchTree.single_task(TASKS, 3),
        BranchTree(TASKS, [[TASKS], [["a", "b"], ["c", "d"]], [["a"], ["b"], ["c", "d"]]]),
    ]  # fmt: skip
    for tree in trees:
        net = supernet.extract(tree).eval()
        ours, alone = supernet.forward_tree(x, tree), net(x)
        for t in TASKS:
            torch.testing.assert_close(ours[t], alone[t], rtol=0, atol=0)


def _train(supernet: Supernet, data: MultiTaskData, space: SearchSpace, budget: float, **kw: object) -> tuple[SupernetProgress, torch.optim.Optimizer]:
    train = TrainConfig(epochs=2, batch_size=32, lr=3e-3, weight_decay=1e-4)
    return train_supernet(supernet, data, tree_sampler(space.random_tree), train, budget_tre=budget, hps_flops=400.0, seed=7, **kw)  # type: ignore[arg-type]


def test_training_resumed_from_a_checkpoint_reaches_the_same_weights(make_config: Callable[..., SearchConfig]) -> None:
    space = _space(make_config)
    data = helpers.tiny_data()
    backbone = create_backbone("mlp", data.input_shape, hidden=[16, 8, 8])
    torch.manual_seed(1)
    straight = Supernet(backbone, data.tasks)
    done, _ = _train(straight, data, space, 3.0)
    torch.manual_seed(1)
    resumed = Supernet(backbone, data.tasks)
    half, optimizer = _train(resumed, data, space, 1.5)
    assert 0 < half.steps < done.steps
    state = {k: v.clone() for k, v in resumed.state_dict().items()}
    again = Supernet(backbone, data.tasks)
    again.load_state_dict(state)
    resumed_done, _ = _train(again, data, space, 3.0, progress=SupernetProgress(half.steps, half.tre, half.seconds),
                             optimizer_state=optimizer.state_dict())  # fmt: skip
    assert resumed_done.steps == done.steps and resumed_done.tre == pytest.approx(done.tre)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    # and so the proxy values are the same
    evaluators = [ProxyEvaluator(s, data, calibration=64) for s in (straight, again)]
    for tree in _trees(space, 5):
        assert evaluators[0].metrics(tree) == evaluators[1].metrics(tree)


def test_unsampled_copies_do_not_move(make_config: Callable[..., SearchConfig]) -> None:
    """Only the sampled tree's copies train: AdamW skips parameters without a gradient."""
    _space(make_config)
    data = helpers.tiny_data()
    torch.manual_seed(0)
    supernet = Supernet(create_backbone("mlp", data.input_shape, hidden=[16, 8, 8]), data.tasks)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}

    def hard_sharing(rng: random.Random) -> BranchTree:
        return BranchTree.hard_sharing(TASKS, 3)

    train = TrainConfig(epochs=2, batch_size=32, lr=3e-3, weight_decay=1e-2)
    train_supernet(supernet, data, tree_sampler(hard_sharing), train, budget_tre=0.5, hps_flops=400.0, seed=0)
    after = supernet.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(("copies.0.0.", "copies.1.0.", "copies.2.0.", "heads.")) for k in moved)


def test_proxy_equals_the_extracted_network_with_recalibrated_batchnorm(make_config: Callable[..., SearchConfig]) -> None:
    space = _space(make_config)
    data = _image_data()
    backbone = create_backbone("small_cnn", data.input_shape, channels=[4, 8], hidden=8)
    torch.manual_seed(0)
    supernet = Supernet(backbone, data.tasks)
    _train(supernet, data, space, 1.0)
    state = {k: v.clone() for k, v in supernet.state_dict().items()}
    evaluator = ProxyEvaluator(supernet, data, calibration=64, hps_flops=1000.0, epochs=2)
    tree = BranchTree(TASKS, [[TASKS], [["a", "b"], ["c", "d"]], [["a"], ["b"], ["c", "d"]]])
    proxy = evaluator.metrics(tree)
    spent = evaluator.tre
    assert spent > 0 and evaluator.metrics(tree) == proxy and evaluator.tre == spent  # paths evaluated once
    for key, value in supernet.state_dict().items():  # evaluation leaves the supernet as it was
        assert torch.equal(value, state[key]), key
    # independent reference: the stand-alone network, its BatchNorm statistics re-estimated block by
    # block on the first 64 training inputs (exact averages), then evaluated in eval mode
    net = supernet.extract(tree)
    calib = {None: data.train.x[:64]}
    for node in tree.nodes():
        module = net.node_module(node)
        parent_out = calib[tree.parent(node)]
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        module.train()
        with torch.no_grad():
            module(parent_out)
        module.eval()
        with torch.no_grad():
            calib[node] = module(parent_out)  # type: ignore[index]
    net.eval()
    with torch.no_grad():
        out = net(data.val.x)
    for task in data.tasks:
        expected = compute_metric(task, out[task.name], data.val.y[task.name], data.val.mask[task.name])
        assert proxy[task.name] == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_supernet_strategy_search(make_config: Callable[..., SearchConfig]) -> None:
    from automtl.accounting import cost_by_stage
    from automtl.confirm import Confirmation
    from automtl.search import run_search
    from automtl.study import TrialRecord, finished_trials

    config = make_config({"search.strategy": "supernet", "search.n_trials": 6, "search.supernet": {"budget": 1.5}})
    study = run_search(config, progress=False)
    records = [TrialRecord.of(t) for t in study.trials]
    assert len(finished_trials(study)) == 6
    scored = [r for r in records if not r.answered_from]
    # every scored trial is a proxy; one whose paths were all evaluated before costs nothing more
    assert scored and all(r.proxy and r.epochs_trained == 0 and r.proxy_tre is not None for r in scored)
    assert sum(r.proxy_tre or 0.0 for r in scored) > 0
    # the proxy ranks trees only: the balancer and training settings are the defaults
    sampled = [r for r in scored if r.stage == "screen"]
    assert all(r.candidate["balancer"] == "equal" for r in sampled)  # type: ignore[index]
    assert len({r.candidate["train"]["lr"] for r in sampled}) == 1  # type: ignore[index]
    screening = next(c for c in cost_by_stage(study) if c.stage == "screening")
    checkpoint = study.user_attrs["supernet_checkpoint"]
    assert checkpoint["tre"] >= 1.5 and screening.tre == pytest.approx(checkpoint["tre"] + sum(r.proxy_tre or 0 for r in records))
    conf = Confirmation.from_dict(study.user_attrs["confirmation"])
    assert all(len(d.values) == 2 for d in conf.designs)  # the confirmation trains for real
    again = run_search(config, progress=False)  # resumed: nothing is trained again
    assert again.user_attrs["supernet_checkpoint"] == checkpoint and len(again.trials) == len(study.trials)
    assert isinstance(again.sampler, optuna.samplers.PartialFixedSampler)


def test_paths_of_a_tree_compute_like_the_tree(make_config: Callable[..., SearchConfig]) -> None:
    """The prefix tree of a tree's task paths is that tree: same outputs, same FLOPs."""
    from automtl.supernet import block_flops, tree_flops

    space = _space(make_config)
    data = helpers.tiny_data()
    backbone = create_backbone("mlp", data.input_shape, hidden=[16, 8, 8])
    supernet = Supernet(backbone, data.tasks).eval()
    per_block = block_flops(backbone, data.input_shape)
    for tree in _trees(space, 20):
        paths = {t: task_path(tree, t) for t in TASKS}
        a, b = supernet.forward_paths(data.val.x, paths), supernet.forward_tree(data.val.x, tree)
        assert all(torch.equal(a[t], b[t]) for t in TASKS)
        assert paths_flops(paths, per_block, 5) == tree_flops(tree, per_block, 5)


def test_path_sampling_draws_every_realizable_path(make_config: Callable[..., SearchConfig]) -> None:
    space = _space(make_config)
    sample = path_sampler(space.random_tree, draws=20_000)  # the rarest path has a chance of about 1/1250 per tree
    rng = random.Random(0)
    seen: dict[str, set[tuple[int, ...]]] = {t: set() for t in TASKS}
    for _ in range(5000):
        for task, path in sample(rng).items():
            seen[task].add(path)
    # task i's paths: non-decreasing anchors in [0, i], one per block (every split point is allowed here)
    import math as _math

    for i, task in enumerate(TASKS):
        assert len(seen[task]) == _math.comb(i + 3, 3)
