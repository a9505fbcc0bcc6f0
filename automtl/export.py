"""Export a searched trial as a bundle, and evaluate a bundle on its data set.

The bundle's files and their format are :mod:`automtl.bundle`'s (written and read there
only); :func:`export_trial` chooses what goes in (the trial, its weights, an optional task
subset and deployment formats) and reports its validation and test metrics;
:func:`evaluate_bundle` rebuilds the data set from the bundle's ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact
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
from automtl.cost import count_flops
from automtl.data import SPLITS, Preprocess
from automtl.deploy import parse_formats
from automtl.experiment import prepare
from automtl.fixed import single_task_baseline, train_fixed
from automtl.metrics import DELTA_M_CONVENTION, METRICS, aggregate_score, delta_m
from automtl.search import (
    artifact_dir,
    baseline_dir,
    is_multi_objective,
    objective_names,
    pareto_front,
    study_config,
)
from automtl.space import Candidate
from automtl.train import evaluate
from automtl.tree import BranchTree

__all__ = ["evaluate_bundle", "export_trial", "jsonable", "load"]


def _pick_trial(study: optuna.Study, trial_number: int | None) -> optuna.trial.FrozenTrial:
    """Trial ``trial_number``; by default the best trial, or in a multi-objective study the
    Pareto-front member with the best first (quality) objective."""
    if trial_number is None:
        front = pareto_front(study)
        if not front:
            raise LookupError(f"study '{study.study_name}' has no complete (feasible) trial to export")
        return max(front, key=lambda t: (t.values[0], -t.number))
    trials = [t for t in study.get_trials(deepcopy=False) if t.number == trial_number]
    if not trials:
        raise LookupError(f"study '{study.study_name}' has no trial {trial_number}")
    if trials[0].state != TrialState.COMPLETE:
        raise LookupError(f"trial {trial_number} is {trials[0].state.name.lower()}, not complete; it has no weights")
    return trials[0]


def export_trial(
    study: optuna.Study,
    storage_url: str,
    out_dir: str | os.PathLike[str],
    trial_number: int | None = None,
    *,
    retrain_seeds: int = 0,
    device: str | None = None,
    formats: str | Sequence[str] = ("safetensors",),
    tasks: Sequence[str] | None = None,
    trust_code: bool = False,
) -> dict[str, Any]:
    """Write the bundle of the best trial (or trial ``trial_number``) to ``out_dir``.

    In a multi-objective study the default is the Pareto-front member with the best first
    (quality) objective; any complete trial can be named, and ``metrics.json`` says whether it
    is on the Pareto front.

    The trial was selected on validation data; the test split is read here, once, to report
    its metrics. With ``retrain_seeds = N`` the chosen architecture, balancer and training
    hyperparameters are also trained anew on the training split with seeds 0..N-1, and their
    validation and test metrics are reported as mean ± std (``retrain`` in ``metrics.json``);
    no choice is made among those seeds, and the bundle's weights stay the searched trial's.
    ``selection`` in ``metrics.json`` records which split decided what.

    The bundle is written to a staging folder that becomes ``out_dir`` only when everything
    succeeded (an earlier bundle there is replaced whole); see :mod:`automtl.bundle`.

    Args:
        study, storage_url: The study and the storage of its weights.
        out_dir: The bundle folder.
        trial_number: A trial to export instead of the best.
        retrain_seeds: Also retrain the design with this many seeds (reported only).
        device: For the retraining.
        formats: ``safetensors`` (always written) plus any of ``onnx``, ``pt2``
            (:mod:`automtl.deploy`); each is checked against the eager network on the
            validation rows and the export fails above a max abs difference of 1e-4.
        tasks: Export only the subtree that serves these tasks (with the trial's weights);
            ``metrics.json`` then covers them only and compares its parameters and FLOPs with
            the whole tree's (``subset``).
        trust_code: Allow the study's configuration to import the ``module:function`` paths
            it names (runs their code; see :mod:`automtl.registry`).

    Returns:
        The contents of ``metrics.json``.

    Raises:
        LookupError: No complete trial, or no trial of that number.
        FileNotFoundError: The trial's weights are missing from the artifact store.
        ValueError: ``retrain_seeds < 0``, an unknown format or task.
        BundleError: ``out_dir`` is a file, or a folder with other files.
        ParityError: An exported format differs from the eager network beyond the tolerance.
    """
    if retrain_seeds < 0:
        raise ValueError(f"retrain_seeds must be >= 0, got {retrain_seeds}")
    formats = parse_formats(formats)
    with staged(out_dir) as staging:  # the folder becomes out_dir only if all of this succeeds
        return _export(
            study, storage_url, out_dir, staging, trial_number, retrain_seeds=retrain_seeds, device=device,
            formats=formats, subset=tasks, trust_code=trust_code,
        )  # fmt: skip


def _export(
    study: optuna.Study,
    storage_url: str,
    out_dir: str | os.PathLike[str],
    staging: Path,
    trial_number: int | None,
    *,
    retrain_seeds: int,
    device: str | None,
    formats: Sequence[str],
    subset: Sequence[str] | None,
    trust_code: bool,
) -> dict[str, Any]:
    """:func:`export_trial`'s work, written into ``staging``."""
    trial = _pick_trial(study, trial_number)
    config = dataclasses.replace(study_config(study), trust_code=trust_code)
    experiment = prepare(config)
    candidate = trial.user_attrs["candidate"]
    tree = BranchTree.from_dict(candidate["tree"])
    store = FileSystemArtifactStore(str(artifact_dir(storage_url)))
    full = BranchedNet(tree, experiment.backbone, experiment.data.tasks)
    full.load_state_dict(_trial_weights(store, trial, storage_url))
    net = full if subset is None else restrict_network(full, experiment.backbone, subset)
    data = experiment.data
    write_bundle(
        staging, out_dir, net, backbone=config.backbone, backbone_options=config.backbone_options,
        block_names=list(experiment.backbone.block_names),
        preprocess=data.preprocess or Preprocess.for_arrays(data.tasks, data.input_shape),
        config={"name": config.name, **config.raw}, candidate=candidate,
    )  # fmt: skip
    write_manifest(staging, [t.name for t in net.tasks])
    # the same code path as `automtl evaluate`, on the data already loaded for this export
    net = load(staging, "cpu", trust_code=trust_code)
    val, test = (evaluate(net, experiment.data.split(split), net.tasks) for split in ("val", "test"))
    tasks = net.tasks  # all of the data set's, or the subset's
    extra: dict[str, Any] = {}
    baseline = None
    if config.objective == "delta_m":
        baseline = single_task_baseline(experiment, baseline_dir(storage_url), ("val", "test"), device or config.device)
        extra = {
            "delta_m_convention": DELTA_M_CONVENTION,
            "val_delta_m": delta_m(val, baseline["val"], tasks),
            "test_delta_m": delta_m(test, baseline["test"], tasks),
            "baseline": baseline,
        }
    selection = {
        "architecture": f"trial {trial.number}, chosen on the validation split by the search objective(s)",
        "weights": "the trial's own training run on the train split (last epoch); nothing chosen on test",
        "test": "read once, after selection, for this report",
    }
    if retrain_seeds:
        chosen = Candidate.from_dict(candidate)
        result = train_fixed(
            experiment,
            chosen.tree,
            chosen.balancer,
            chosen.balancer_params,
            seeds=retrain_seeds,
            device=device or config.device,
            train=chosen.train,
        )
        extra["retrain"] = result.summary(tasks, baseline)
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
    on_front = trial.number in {t.number for t in pareto_front(study)}
    metrics = {
        "study": study.study_name,
        "trial": trial.number,
        "selected_on": "val",
        "selection": selection,
        "objective": study.user_attrs.get("objective", config.objective),
        "search_values": dict(zip(objective_names(study), trial.values)),
        "multi_objective": is_multi_objective(study),
        "pareto_front": on_front,
        "cost": trial.user_attrs.get("cost", {}),
        "metric_of_task": {t.name: {"metric": t.metric, "direction": METRICS.get(t.metric).direction} for t in tasks},
        "val": val,
        "val_score": aggregate_score(val, tasks),
        "test": test,
        "test_score": aggregate_score(test, tasks),
        "n_params": trial.user_attrs.get("n_params"),
        **extra,
    }
    write_metrics(staging, metrics)
    write_manifest(staging, [t.name for t in tasks], deployed=deployed, subset_of=None if subset is None else tree.tasks)
    return metrics


def _trial_weights(store: FileSystemArtifactStore, trial: optuna.trial.FrozenTrial, storage_url: str) -> dict[str, torch.Tensor]:
    """The state dict a trial saved in the study's artifact store.

    Raises:
        FileNotFoundError: It is not there.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp_file = os.path.join(tmp, "weights.safetensors")
        try:
            download_artifact(artifact_store=store, file_path=tmp_file, artifact_id=trial.user_attrs["weights_artifact"])
        except Exception as exc:  # the store raises its own types for a missing file
            raise FileNotFoundError(
                f"weights of trial {trial.number} not found in {artifact_dir(storage_url)}: {exc}"
            ) from exc
        return load_file(tmp_file)


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
