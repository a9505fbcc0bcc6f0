"""A self-contained bundle of one architecture (spec + weights + metrics) and its loader.

Bundle layout (``DIR``):

* ``tree.yaml``: the :class:`~automtl.tree.BranchTree`, with its drawing as a comment;
* ``model.yaml``: backbone name and options, input shape, task descriptions;
* ``weights.safetensors``: the network's state dict;
* ``config.yaml``: the search configuration the trial came from;
* ``candidate.yaml``: balancer, its hyperparameters, training hyperparameters;
* ``metrics.json``: validation and test metrics, the trial, and which split selected it.

:func:`load` needs only the bundle; :func:`evaluate_bundle` also rebuilds the data set from
``config.yaml``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import TrialState
from safetensors.torch import load_file, save_file

from automtl.backbones import create_backbone
from automtl.build import BranchedNet, resolve_device
from automtl.config import parse_config
from automtl.confirm import Confirmation, ConfirmedDesign
from automtl.experiment import prepare
from automtl.fixed import train_fixed
from automtl.jobs import JobQueue
from automtl.metrics import (
    DELTA_M_CONVENTION,
    METRICS,
    aggregate_score,
    delta_m,
    mean_std,
    nanmean,
)
from automtl.runs import download_weights
from automtl.space import Candidate
from automtl.study import (
    TrialRecord,
    artifact_dir,
    is_multi_objective,
    objective_names,
    pareto_front,
    read_attr,
    study_config,
)
from automtl.tasks import TaskSpec
from automtl.train import evaluate
from automtl.tree import BranchTree

__all__ = ["evaluate_bundle", "export_trial", "jsonable", "load"]


@dataclass
class _Choice:
    """What is exported: a design, the run whose weights go into the bundle, and how it was chosen."""

    design: str
    weights_from: str
    candidate: dict[str, Any]
    artifact: str
    trial: optuna.trial.FrozenTrial | None = None
    confirmed: ConfirmedDesign | None = None


def _pick(study: optuna.Study, trial_number: int | None) -> _Choice:
    """Trial ``trial_number``'s own run; by default the confirmed answer (the weights of its
    first confirmation seed, fixed before any score was seen), or without a confirmation the
    best screening trial (in a multi-objective study the front's best first objective)."""
    if trial_number is None:
        raw = read_attr(study, "confirmation")
        if raw is not None:
            best = Confirmation.from_dict(raw).best
            assert best.candidate is not None
            return _Choice(best.label, "its first confirmation seed", best.candidate, best.weights[0], confirmed=best)
        front = pareto_front(study)
        if not front:
            raise LookupError(f"study '{study.study_name}' has no complete (feasible) trial to export")
        trial = max(front, key=lambda t: (t.values[0], -t.number))
    else:
        trials = [t for t in study.get_trials(deepcopy=False) if t.number == trial_number]
        if not trials:
            raise LookupError(f"study '{study.study_name}' has no trial {trial_number}")
        trial = trials[0]
        if trial.state != TrialState.COMPLETE or not TrialRecord.of(trial).weights_artifact:
            raise LookupError(f"trial {trial_number} is {trial.state.name.lower()} and has no weights of its own")
    record = TrialRecord.of(trial)
    assert record.candidate is not None and record.weights_artifact is not None
    return _Choice(f"trial {trial.number}", f"trial {trial.number}'s run", record.candidate, record.weights_artifact, trial=trial)


def _net_from(artifacts: Path, artifact: str, candidate: Mapping[str, Any], experiment: Any) -> BranchedNet:
    """The network of ``candidate`` with the weights ``artifact``, on the CPU, in eval mode."""
    tree = BranchTree.from_dict(candidate["tree"])
    net = BranchedNet(tree, experiment.backbone, experiment.data.tasks)
    with tempfile.TemporaryDirectory() as tmp:
        path = download_weights(artifacts, artifact, Path(tmp) / "w.safetensors")
        net.load_state_dict(load_file(str(path)))
    return net.eval()


def _seed_summary(runs: Sequence[Mapping[str, Mapping[str, float]]], tasks: Sequence[TaskSpec],
                  baseline: Mapping[str, Mapping[str, float]] | None) -> dict[str, Any]:  # fmt: skip
    """Mean and std over seeds of each task's metric, ``mean_score`` and Δm, per split."""

    def stats(values: list[float]) -> dict[str, float]:
        mean, std = mean_std(values)
        return {"mean": mean, "std": std}

    out: dict[str, Any] = {"seeds": len(runs)}
    for split in ("val", "test"):
        out[split] = {t.name: stats([r[split][t.name] for r in runs]) for t in tasks}
        out[split]["(mean_score)"] = stats([aggregate_score(r[split], tasks) for r in runs])
        if baseline is not None:
            out[split]["(delta_m %)"] = stats([delta_m(r[split], baseline[split], tasks) for r in runs])
    return out


def _mean_metrics(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {t: nanmean([r[t] for r in runs]) for t in runs[0]}


def export_trial(
    study: optuna.Study,
    storage_url: str,
    out_dir: str | os.PathLike[str],
    trial_number: int | None = None,
    *,
    retrain_seeds: int = 0,
    device: str | None = None,
    artifacts: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write the bundle of the search's answer (or of trial ``trial_number``) to ``out_dir``.

    By default the answer is the confirmed design (:mod:`automtl.confirm`); its bundle holds the
    weights of its first confirmation seed, a choice made before any score was seen. Every
    confirmation seed's run, and the single-task networks' runs for Δm, are evaluated on the
    test split here, once, after selection, and reported as mean ± std (``confirmed`` in
    ``metrics.json``; none is chosen). Without a confirmation the best screening trial is
    exported. Any complete trial can be named with ``trial_number`` (its own screening run).

    With ``retrain_seeds = N`` the exported design is also trained anew on the training split
    with seeds 0..N-1 (``retrain``). ``selection`` in ``metrics.json`` records which split
    decided what.

    Returns:
        The contents of ``metrics.json``.

    Raises:
        LookupError: No complete trial, or no trial of that number.
        FileNotFoundError: The weights are missing from the artifact folder.
        ValueError: ``retrain_seeds < 0``.
    """
    if retrain_seeds < 0:
        raise ValueError(f"retrain_seeds must be >= 0, got {retrain_seeds}")
    choice = _pick(study, trial_number)
    config = study_config(study)
    store = artifact_dir(storage_url, artifacts, study)
    experiment = prepare(config, check_space=False)  # the study was checked when it was created
    tasks = experiment.data.tasks
    net = _net_from(store, choice.artifact, choice.candidate, experiment)  # fails before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(out / "weights.safetensors"))
    tree = BranchTree.from_dict(choice.candidate["tree"])
    block_names = list(experiment.backbone.block_names)
    (out / "tree.yaml").write_text(
        "".join(f"# {line}\n" for line in tree.render(block_names).splitlines()) + tree.to_yaml()
    )
    model_spec = {
        "backbone": config.backbone,
        "backbone_options": config.backbone_options,
        "input_shape": list(experiment.data.input_shape),
        "tasks": [t.to_dict() for t in tasks],
    }
    (out / "model.yaml").write_text(yaml.safe_dump(model_spec, sort_keys=False))
    (out / "config.yaml").write_text(yaml.safe_dump({"name": config.name, **config.raw}, sort_keys=False))
    (out / "candidate.yaml").write_text(
        yaml.safe_dump({k: v for k, v in choice.candidate.items() if k != "tree"}, sort_keys=False)
    )
    # the same code path as `automtl evaluate`, on the data already loaded for this export
    bundle_net = load(out, "cpu")
    val, test = (evaluate(bundle_net, experiment.data.split(split), tasks) for split in ("val", "test"))
    extra: dict[str, Any] = {}
    selection = {
        "architecture": f"{choice.design}, chosen on the validation split",
        "weights": f"{choice.weights_from}, on the train split; nothing chosen on test",
        "test": "read once, after selection, for this report",
    }
    baseline, baseline_from = _baseline_metrics(study, store, experiment)
    if config.objective == "delta_m" and baseline is not None:
        extra = {
            "baseline_from": baseline_from,
            "delta_m_convention": DELTA_M_CONVENTION,
            "val_delta_m": delta_m(val, baseline["val"], tasks),
            "test_delta_m": delta_m(test, baseline["test"], tasks),
            "baseline": baseline,
        }
    if choice.confirmed is not None:
        runs = []
        for artifact in choice.confirmed.weights:
            seed_net = _net_from(store, artifact, choice.confirmed.candidate or choice.candidate, experiment)
            runs.append({s: evaluate(seed_net, experiment.data.split(s), tasks) for s in ("val", "test")})
        extra["confirmed"] = _seed_summary(runs, tasks, baseline if config.objective == "delta_m" else None)
        conf = Confirmation.from_dict(read_attr(study, "confirmation"))
        extra["confirmation"] = {
            "seeds": conf.seeds,
            "objective": conf.objective,
            "answer": choice.confirmed.label,
            "values": {d.label: d.values for d in conf.designs},
        }
        extra["verdict"] = conf.verdict
        selection["confirmation"] = (
            "the answer has the best mean validation objective over fresh, paired confirmation seeds; "
            "every seed reported on test, none chosen"
        )
    if retrain_seeds:
        chosen = Candidate.from_dict(choice.candidate)
        result = train_fixed(experiment, chosen.tree, chosen.balancer, chosen.balancer_params, seeds=retrain_seeds,
                             device=device or config.device, train=chosen.train)  # fmt: skip
        extra["retrain"] = result.summary(tasks, baseline if config.objective == "delta_m" else None)
        selection["retrain"] = (
            f"the same architecture and hyperparameters trained anew on the train split with seeds "
            f"0..{retrain_seeds - 1}; every seed reported (mean ± std), none chosen"
        )
    metrics = {
        "study": study.study_name,
        "design": choice.design,
        "weights_from": choice.weights_from,
        "trial": choice.trial.number if choice.trial is not None else choice.confirmed.trial if choice.confirmed else None,
        "selected_on": "val",
        "selection": selection,
        "objective": study.user_attrs.get("objective", config.objective),
        "search_values": dict(zip(objective_names(study), choice.trial.values)) if choice.trial is not None else None,
        "multi_objective": is_multi_objective(study),
        "pareto_front": choice.trial is not None and choice.trial.number in {t.number for t in pareto_front(study)},
        "metric_of_task": {t.name: {"metric": t.metric, "direction": METRICS.get(t.metric).direction} for t in tasks},
        "val": val,
        "val_score": aggregate_score(val, tasks),
        "test": test,
        "test_score": aggregate_score(test, tasks),
        "n_params": net.num_parameters(),
        **extra,
    }
    (out / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=2, allow_nan=False))
    return metrics


def _baseline_metrics(study: optuna.Study, store: Path, experiment: Any) -> tuple[dict[str, dict[str, float]] | None, str]:
    """The single-task networks' validation and test metrics, and where they come from: the mean
    over their confirmation runs, or without a confirmation each task's tuning run at its rate."""
    jobs = JobQueue(study._storage, study.study_name)
    results = jobs.results()
    single = [results[k] for k in sorted(results) if k.startswith("baseline-confirm/")]
    tasks = experiment.data.tasks
    if single:
        runs = []
        for r in single:
            net = _net_from(store, r["weights_artifact"], {"tree": _single_tree(experiment)}, experiment)
            runs.append({s: evaluate(net, experiment.data.split(s), tasks) for s in ("val", "test")})
        what = f"single-task networks: mean of their {len(runs)} confirmation runs (each task at its tuned learning rate)"
        return {s: _mean_metrics([r[s] for r in runs]) for s in ("val", "test")}, what
    raw = read_attr(study, "baselines")
    if raw is None:
        return None, ""
    out: dict[str, dict[str, float]] = {"val": {}, "test": {}}
    nets: dict[str, BranchedNet] = {}
    for task in tasks:
        lr = raw["lr_by_task"][task.name]
        key = f"baseline-tune/{lr!r}"
        if key not in results:
            return None, ""
        if key not in nets:
            nets[key] = _net_from(store, results[key]["weights_artifact"], {"tree": _single_tree(experiment)}, experiment)
        for s in ("val", "test"):
            out[s][task.name] = evaluate(nets[key], experiment.data.split(s), tasks)[task.name]
    return out, "single-task networks: each task's tuning run at its chosen learning rate (one seed)"


def _single_tree(experiment: Any) -> dict[str, Any]:
    return BranchTree.single_task(experiment.data.task_names, experiment.backbone.n_blocks).to_dict()


def jsonable(x: Any) -> Any:
    """``x`` with every non-finite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [jsonable(v) for v in x]
    return x


def load(bundle: str | os.PathLike[str], device: str | torch.device | None = "cpu") -> BranchedNet:
    """Load an exported bundle as a :class:`~automtl.build.BranchedNet` in eval mode.

    Its ``forward(x)`` takes ``[N, *input_shape]`` and returns ``{task: output}`` (logits, or
    standardized regression values); :meth:`BranchedNet.predict` gives probabilities and
    regression values in their original unit.

    Raises:
        FileNotFoundError: A bundle file is missing.
    """
    path = Path(bundle)
    for name in ("tree.yaml", "model.yaml", "weights.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} is missing; is {path} an automtl export?")
    spec = yaml.safe_load((path / "model.yaml").read_text())
    tasks = [TaskSpec.from_dict(t) for t in spec["tasks"]]
    tree = BranchTree.from_yaml((path / "tree.yaml").read_text())
    backbone = create_backbone(spec["backbone"], spec["input_shape"], **(spec.get("backbone_options") or {}))
    net = BranchedNet(tree, backbone, tasks)
    net.load_state_dict(load_file(str(path / "weights.safetensors")))
    return net.to(resolve_device(device)).eval()


def evaluate_bundle(bundle: str | os.PathLike[str], split: str = "test", device: str | None = "cpu") -> dict[str, float]:
    """Per-task metrics of an exported model on a split of the data set in its ``config.yaml``.

    Raises:
        FileNotFoundError: A bundle file is missing.
        ValueError: Unknown split.
    """
    net = load(bundle, device)  # first: it says clearly when the folder is no bundle
    experiment = prepare(parse_config(yaml.safe_load((Path(bundle) / "config.yaml").read_text())), check_space=False)
    return evaluate(net, experiment.data.split(split), net.tasks)
