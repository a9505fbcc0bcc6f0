"""Export a search's answer as a bundle, and evaluate a bundle on its data set.

The bundle's files and their format are :mod:`automtl.bundle`'s (written and read there
only); :func:`export_trial` chooses what goes in (the confirmed answer or a trial, its weights,
an optional task subset and deployment formats) and reports its validation and test metrics;
:func:`evaluate_bundle` rebuilds the data set from the bundle's ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from safetensors.torch import load_file

from automtl.build import BranchedNet, restrict_network
from automtl.bundle import (
    jsonable,
    load,
    prepare_data,
    read_bundle,
    staged,
    write_bundle,
    write_formats,
    write_manifest,
    write_metrics,
)
from automtl.confirm import Confirmation, ConfirmedDesign
from automtl.cost import count_flops
from automtl.data import SPLITS, Preprocess
from automtl.deploy import parse_formats
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
    formats: str | Sequence[str] = ("safetensors",),
    tasks: Sequence[str] | None = None,
    trust_code: bool = False,
) -> dict[str, Any]:
    """Write the bundle of the search's answer (or of trial ``trial_number``) to ``out_dir``.

    By default the answer is the confirmed design (:mod:`automtl.confirm`); its bundle holds the
    weights of its first confirmation seed, a choice made before any score was seen. Every
    confirmation seed's run, and the single-task networks' runs for Δm, are evaluated on the
    test split here, once, after selection, and reported as mean ± std (``confirmed`` in
    ``metrics.json``; none is chosen). Without a confirmation the best screening trial is
    exported (in a multi-objective study, the Pareto-front member with the best first
    objective). Any complete trial can be named with ``trial_number`` (its own screening run).

    With ``retrain_seeds = N`` the exported design is also trained anew on the training split
    with seeds 0..N-1 (``retrain``). ``selection`` in ``metrics.json`` records which split
    decided what. The bundle is written to a staging folder that becomes ``out_dir`` only when
    everything succeeded (an earlier bundle there is replaced whole); see :mod:`automtl.bundle`.

    Args:
        study, storage_url: The study and its storage.
        out_dir: The bundle folder.
        trial_number: A trial to export instead of the answer.
        retrain_seeds: Also retrain the design with this many seeds (reported only).
        device: For the retraining.
        artifacts: The artifact folder (default: the one recorded in the study).
        formats: ``safetensors`` (always written) plus any of ``onnx``, ``pt2``
            (:mod:`automtl.deploy`); each is checked against the eager network on the
            validation rows and the export fails above a max abs difference of 1e-4.
        tasks: Export only the subtree that serves these tasks (with the same weights);
            ``metrics.json`` then covers them only and compares its parameters and FLOPs with
            the whole tree's (``subset``).
        trust_code: Allow the study's configuration to import the ``module:function`` paths
            it names (runs their code; see :mod:`automtl.registry`).

    Returns:
        The contents of ``metrics.json``.

    Raises:
        LookupError: No complete trial, or no trial of that number.
        FileNotFoundError: The weights are missing from the artifact folder.
        ValueError: ``retrain_seeds < 0``, an unknown format or task.
        BundleError: ``out_dir`` is a file, or a folder with other files.
        ParityError: An exported format differs from the eager network beyond the tolerance.
    """
    if retrain_seeds < 0:
        raise ValueError(f"retrain_seeds must be >= 0, got {retrain_seeds}")
    formats = parse_formats(formats)
    choice = _pick(study, trial_number)
    store = artifact_dir(storage_url, artifacts, study)
    if not store.is_dir():
        raise FileNotFoundError(f"artifact folder {store} does not exist; pass --artifacts DIR (the folder the search wrote)")
    with staged(out_dir) as staging:  # the folder becomes out_dir only if all of this succeeds
        return _export(
            study, choice, store, out_dir, staging, retrain_seeds=retrain_seeds, device=device,
            formats=formats, subset=tasks, trust_code=trust_code,
        )  # fmt: skip


def _export(
    study: optuna.Study,
    choice: _Choice,
    store: Path,
    out_dir: str | os.PathLike[str],
    staging: Path,
    *,
    retrain_seeds: int,
    device: str | None,
    formats: Sequence[str],
    subset: Sequence[str] | None,
    trust_code: bool,
) -> dict[str, Any]:
    """:func:`export_trial`'s work, written into ``staging``."""
    config = dataclasses.replace(study_config(study), trust_code=trust_code)
    experiment = prepare(config, check_space=False)  # the study was checked when it was created
    tree = BranchTree.from_dict(choice.candidate["tree"])
    full = _net_from(store, choice.artifact, choice.candidate, experiment)
    net = full if subset is None else restrict_network(full, experiment.backbone, subset)
    data = experiment.data
    write_bundle(
        staging, out_dir, net, backbone=config.backbone, backbone_options=config.backbone_options,
        block_names=list(experiment.backbone.block_names),
        preprocess=data.preprocess or Preprocess.for_arrays(data.tasks, data.input_shape),
        config={"name": config.name, **config.raw}, candidate=choice.candidate,
    )  # fmt: skip
    write_manifest(staging, [t.name for t in net.tasks])
    # the same code path as `automtl evaluate`, on the data already loaded for this export
    net = load(staging, "cpu", trust_code=trust_code)
    val, test = (evaluate(net, data.split(split), net.tasks) for split in ("val", "test"))
    tasks = net.tasks  # all of the data set's, or the subset's
    extra: dict[str, Any] = {}
    selection = {
        "architecture": f"{choice.design}, chosen on the validation split",
        "weights": f"{choice.weights_from}, on the train split; nothing chosen on test",
        "test": "read once, after selection, for this report",
    }
    baseline, baseline_from = _baseline_metrics(study, store, experiment)
    use_delta = config.objective == "delta_m" and baseline is not None
    if use_delta:
        assert baseline is not None
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
            if subset is not None:
                seed_net = restrict_network(seed_net, experiment.backbone, subset)
            runs.append({s: evaluate(seed_net, data.split(s), tasks) for s in ("val", "test")})
        extra["confirmed"] = _seed_summary(runs, tasks, baseline if use_delta else None)
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
        extra["retrain"] = result.summary(tasks, baseline if use_delta else None)
        selection["retrain"] = (
            f"the same architecture and hyperparameters trained anew on the train split with seeds "
            f"0..{retrain_seeds - 1}; every seed reported (mean ± std), none chosen"
        )
    if subset is not None:
        extra["subset"] = {
            "tasks": [t.name for t in tasks],
            "of": list(tree.tasks),
            "n_params": net.num_parameters(),
            "n_params_full": full.num_parameters(),
            "flops": count_flops(net, data.input_shape),
            "flops_full": count_flops(full, data.input_shape),
        }
    deployed = [f for f in formats if f != "safetensors"]
    if deployed:
        extra["deployment"] = write_formats(staging, net, deployed, data.val.x)
    trial = choice.trial
    metrics = {
        "study": study.study_name,
        "design": choice.design,
        "weights_from": choice.weights_from,
        "trial": trial.number if trial is not None else choice.confirmed.trial if choice.confirmed else None,
        "selected_on": "val",
        "selection": selection,
        "objective": study.user_attrs.get("objective", config.objective),
        "search_values": dict(zip(objective_names(study), trial.values)) if trial is not None else None,
        "multi_objective": is_multi_objective(study),
        "pareto_front": trial is not None and trial.number in {t.number for t in pareto_front(study)},
        "cost": TrialRecord.of(trial).cost if trial is not None else (choice.confirmed.costs if choice.confirmed else {}),
        "metric_of_task": {t.name: {"metric": t.metric, "direction": METRICS.get(t.metric).direction} for t in tasks},
        "val": val,
        "val_score": aggregate_score(val, tasks),
        "test": test,
        "test_score": aggregate_score(test, tasks),
        "n_params": net.num_parameters(),
        **extra,
    }
    write_metrics(staging, metrics)
    write_manifest(staging, [t.name for t in tasks], deployed=deployed, subset_of=None if subset is None else tree.tasks)
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


def evaluate_bundle(
    bundle: str | os.PathLike[str], split: str = "test", device: str | None = "cpu", *, trust_code: bool = False
) -> dict[str, float]:
    """Per-task metrics of an exported model on a split of the data set in its ``config.yaml``.

    A relative data path in ``config.yaml`` is relative to the bundle folder.

    Args:
        bundle: The bundle folder.
        split: ``train``, ``val`` or ``test``.
        device: Where to run the network.
        trust_code: Allow the ``module:function`` paths the bundle names (backbone, metrics,
            data set...) to be imported, which runs their code (see :mod:`automtl.registry`).

    Raises:
        FileNotFoundError: A bundle file is missing.
        ValueError: Unknown split.
        BundleError: A malformed bundle, an import path without ``trust_code``, or a data set
            that cannot be rebuilt (the file and key are named).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; expected one of {SPLITS}")
    opened = read_bundle(bundle, device, trust_code=trust_code)  # first: it says clearly when the folder is no bundle
    opened.resolve_metrics(trust_code=trust_code)
    experiment = prepare_data(bundle, trust_code=trust_code)
    return evaluate(opened.net, experiment.data.split(split), opened.net.tasks)
