"""The stages of a search that run as jobs (:mod:`automtl.jobs`): the baselines, the supernet of
the ``supernet`` strategy, and the confirmation; and the handler that runs any of their jobs."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from optuna.artifacts import upload_artifact

from automtl.baselines import (
    BaselineChoice,
    baseline_candidate,
    check_sane,
    choose,
    confirm_job,
    trivial_metrics,
    tuning_jobs,
)
from automtl.build import build_model, resolve_device
from automtl.confirm import (
    SINGLE_TASK,
    Confirmation,
    ConfirmedDesign,
    analyse,
    pareto_indices,
)
from automtl.context import QUALITY_UNIT, SearchContext
from automtl.cost import BUDGETS, measure_costs
from automtl.errors import NonFiniteLossError
from automtl.runs import download_weights, train_candidate, upload_weights
from automtl.screening import screening_trials
from automtl.seeds import (
    baseline_tuning_seed,
    confirmation_seeds,
    derive_seed,
)
from automtl.space import Candidate, default_value
from automtl.study import (
    DesignRuns,
    designs,
    read_attr,
    write_attr,
)
from automtl.supernet import (
    ProxyEvaluator,
    Supernet,
    SupernetProgress,
    train_supernet,
    tree_sampler,
)
from automtl.train import TrainConfig, seed_everything
from automtl.tree import BranchTree

__all__ = ["Proxy", "confirmation", "ensure_baselines", "ensure_supernet"]

# -------------------------------------------------------------------------------------- the jobs
def _job_handler(search: SearchContext) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
    """Runs one baseline or confirmation job: train, store the weights, return the metrics."""

    def handle(job: Mapping[str, Any]) -> Mapping[str, Any]:
        config, data = search.config, search.experiment.data
        if job.get("kind") == "supernet":
            return _train_supernet_job(search)
        if "candidate" in job:
            candidate = Candidate.from_dict(job["candidate"]).with_seed(int(job["seed"]))
        elif "lr_by_task" in job:
            lr_by_task = {t: float(v) for t, v in job["lr_by_task"].items()}
            candidate = baseline_candidate(config, data.task_names, search.experiment.backbone.n_blocks, int(job["seed"]), lr_by_task=lr_by_task)
        else:
            candidate = baseline_candidate(config, data.task_names, search.experiment.backbone.n_blocks, int(job["seed"]), lr=float(job["lr"]))
        try:
            run = train_candidate(search.experiment, candidate, search.device)
        except NonFiniteLossError as exc:
            if job["key"].startswith("baseline"):
                raise
            return {"fail_reason": str(exc)}
        artifact = upload_weights(run.net, search.store, search.jobs.study, job["key"].replace("/", "_"))
        return {**run.summary(), "weights_artifact": artifact}

    return handle


SUPERNET_JOB = {"key": "supernet/train", "kind": "supernet", "what": "the supernet's training"}


def _supernet_train_settings(search: SearchContext) -> TrainConfig:
    values = {k: default_value(v) for k, v in search.config.train.items()}
    return TrainConfig(seed=derive_seed(search.config.seed, "supernet"), **values)


def _train_supernet_job(search: SearchContext) -> Mapping[str, Any]:
    """Train the study's supernet (resuming from its last checkpoint), store its weights."""
    s = search
    train = _supernet_train_settings(s)
    seed_everything(train.seed)
    supernet = Supernet(s.experiment.backbone, s.experiment.data.tasks).to(resolve_device(s.device))
    progress, optimizer_state = None, None
    saved = read_attr(s.study, "supernet_checkpoint")
    if saved is not None:
        state = _load_checkpoint(s, saved["artifact"])
        supernet.load_state_dict(state["model"])
        optimizer_state = state["optimizer"]
        progress = SupernetProgress(int(saved["steps"]), float(saved["tre"]), float(saved["seconds"]))

    def checkpoint(done: SupernetProgress, optimizer: torch.optim.Optimizer) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "supernet.pt")
            torch.save({"model": supernet.state_dict(), "optimizer": optimizer.state_dict()}, path)
            artifact = upload_artifact(artifact_store=s.store, file_path=path, study_or_trial=s.jobs.study)
        write_attr(s.study, "supernet_checkpoint", {"artifact": artifact, **dataclasses.asdict(done)})

    done, _ = train_supernet(
        supernet, s.experiment.data, tree_sampler(s.space.random_tree), train, budget_tre=s.config.supernet_budget,
        hps_flops=float(read_attr(s.study, "hps_flops")), seed=train.seed, progress=progress,
        optimizer_state=optimizer_state, checkpoint=checkpoint,
    )  # fmt: skip
    artifact = upload_weights(supernet, s.store, s.jobs.study, "supernet")
    return {"weights_artifact": artifact, **dataclasses.asdict(done)}


def _load_checkpoint(search: SearchContext, artifact: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = download_weights(search.store_dir, artifact, os.path.join(tmp, "supernet.pt"))
        return dict(torch.load(path, map_location="cpu", weights_only=True))  # tensors and plain data only


class Proxy:
    """This worker's supernet and its proxy evaluator (weights read once from the artifact store)."""

    def __init__(self, search: SearchContext, result: Mapping[str, Any]) -> None:
        from safetensors.torch import load_file

        data = search.experiment.data
        self.supernet = Supernet(search.experiment.backbone, data.tasks)
        with tempfile.TemporaryDirectory() as tmp:
            path = download_weights(search.store_dir, result["weights_artifact"], os.path.join(tmp, "w.safetensors"))
            self.supernet.load_state_dict(load_file(str(path)))
        self.supernet.to(resolve_device(search.device)).eval()
        epochs = int(search.config.train["epochs"].value)
        self.evaluator = ProxyEvaluator(self.supernet, data, hps_flops=float(read_attr(search.study, "hps_flops")), epochs=epochs)


def ensure_supernet(search: SearchContext) -> Proxy:
    """Train (or join, or read) the study's supernet."""
    search.say(f"supernet: weight sharing over every tree of the space, trained for {search.config.supernet_budget:g} TRE")
    result = search.jobs.wait([SUPERNET_JOB], _job_handler(search))[SUPERNET_JOB["key"]]
    return Proxy(search, result)


def ensure_baselines(search: SearchContext) -> BaselineChoice:
    """Train (or join, or read) the tuning runs of the baselines; choose; check; record."""
    recorded = read_attr(search.study, "baselines")
    data = search.experiment.data
    if recorded is not None:
        choice = BaselineChoice.from_dict(recorded)
    else:
        seed = baseline_tuning_seed(search.config.seed)
        jobs = tuning_jobs(search.config, seed)
        search.say(
            "baselines: single-task networks choose each task's learning rate among "
            + ", ".join(f"{j['lr']:g}" for j in jobs)
            + f" on validation ({len(jobs)} run(s) of {len(data.tasks)} networks)"
        )
        results = search.jobs.wait(jobs, _job_handler(search))
        choice = choose(data.tasks, [j["lr"] for j in jobs], seed, {j["lr"]: results[j["key"]]["val"] for j in jobs})
        choice.trivial = trivial_metrics(data, "val")
        write_attr(search.study, "baselines", choice.to_dict())
    check_sane(choice, data.tasks)
    return choice


# ------------------------------------------------------------------------------ confirmation
def _select(search: SearchContext, runs: Sequence[DesignRuns]) -> list[DesignRuns]:
    """The designs to confirm: the ``top_k`` best by mean screening objective (the front's best in
    quality for several objectives), and the best obvious hard-sharing design; single-task trees
    are left out (the baselines are the single-task networks)."""
    top_k = search.config.confirm_top_k
    pool = [d for d in runs if not _is_single_task(d)]
    if search.spec.is_multi:
        means = [[d.mean(i) for i in range(len(search.spec.names))] for d in pool]
        front = [pool[i] for i in pareto_indices(means, [x == "maximize" for x in search.spec.directions])]
        chosen = sorted(front, key=lambda d: -d.mean(0))[:top_k]
    else:
        chosen = sorted(pool, key=lambda d: -d.mean(0))[:top_k]
    hps = [d for d in pool if d.label.startswith("hard sharing")]
    if hps and not any(d.key in {h.key for h in hps} for d in chosen):
        chosen.append(max(hps, key=lambda d: d.mean(0)))
    return chosen


def _is_single_task(d: DesignRuns) -> bool:
    candidate = d.record.candidate or {}
    tree = BranchTree.from_dict(candidate["tree"]) if candidate else None
    return tree is not None and tree == BranchTree.single_task(tree.tasks, tree.n_blocks)


def _single_task_budget(search: SearchContext, tree: BranchTree) -> str:
    """Which hard budgets the single-task networks exceed ("" if none)."""
    if not search.config.constraints:
        return ""
    net = build_model(tree, search.experiment.backbone, search.experiment.data.tasks, search.device)
    costs = measure_costs(net, search.experiment.data.input_shape, {BUDGETS[b] for b in search.config.constraints})
    over = [f"{BUDGETS[b]} {costs[BUDGETS[b]]:.6g} > {b} {limit:.6g}" for b, limit in search.config.constraints.items()
            if costs[BUDGETS[b]] > limit]  # fmt: skip
    return "; ".join(over)


def confirmation(search: SearchContext) -> Confirmation | None:
    s = search
    runs = designs(screening_trials(s.study))
    if not runs or s.baselines is None:
        return None
    chosen = _select(s, runs)
    seeds = confirmation_seeds(s.config.seed, s.config.confirm_seeds)
    jobs: list[dict[str, Any]] = []
    for d in chosen:
        name = d.label or f"trial {d.first}"
        for i, seed in enumerate(seeds):
            jobs.append({"key": f"confirm/{d.key}/{i}", "candidate": d.record.candidate, "seed": seed, "seed_index": i,
                         "what": f"{name}, confirmation seed {i}"})  # fmt: skip
    jobs += [confirm_job(s.baselines.lr_by_task, seed, i) for i, seed in enumerate(seeds)]
    todo = [j for j in jobs if j["key"] not in s.jobs.results([j["key"] for j in jobs])]
    if todo:
        s.say(
            f"confirmation: {len(chosen)} design(s) and the single-task networks, each trained with {len(seeds)} fresh "
            f"seed(s), paired ({len(jobs)} runs, {len(todo)} to train)"
        )
    results = s.jobs.wait(jobs, _job_handler(s))
    baseline_runs = [results[f"baseline-confirm/{i}"] for i in range(len(seeds))]
    data = s.experiment.data
    single_tree = BranchTree.single_task(data.task_names, s.experiment.backbone.n_blocks)
    single = ConfirmedDesign(
        SINGLE_TASK, "single-task networks", "single-task", None,
        baseline_candidate(s.config, data.task_names, single_tree.n_blocks, seeds[0], lr_by_task=s.baselines.lr_by_task).to_dict(),
        single_tree.compact(), "equal", int(baseline_runs[0]["n_params"]), float(baseline_runs[0]["flops"]), None, 0,
        val_metrics=[r["val"] for r in baseline_runs], weights=[r["weights_artifact"] for r in baseline_runs],
        over_budget=_single_task_budget(s, single_tree),
    )  # fmt: skip
    confirmed = []
    for d in chosen:
        rs = [results[f"confirm/{d.key}/{i}"] for i in range(len(seeds))]
        if any("fail_reason" in r for r in rs):
            s.say(f"confirmation: {d.label or f'trial {d.first}'} failed in a confirmation run ({next(r['fail_reason'] for r in rs if 'fail_reason' in r)}); left out")
            continue
        record = d.record
        confirmed.append(
            ConfirmedDesign(
                d.key, d.label or f"trial {d.first}", "obvious" if d.label else "sampled", d.first, record.candidate,
                record.tree, (record.candidate or {}).get("balancer", "?"), int(rs[0]["n_params"]), float(rs[0]["flops"]),
                d.mean(0), len(d.values), val_metrics=[r["val"] for r in rs], weights=[r["weights_artifact"] for r in rs],
                costs={k: v for k, v in record.cost.items() if k in s.spec.cost},
            )
        )  # fmt: skip
    objective = s.spec.quality if s.spec.quality != "per_task" else "mean_score"
    conf = analyse(objective, QUALITY_UNIT[s.spec.quality], seeds, [r["val"] for r in baseline_runs], confirmed, single, s.quality)
    write_attr(s.study, "confirmation", conf.to_dict())
    return conf


