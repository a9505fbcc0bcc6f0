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
import shutil
import tempfile
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.artifacts import FileSystemArtifactStore, download_artifact
from optuna.trial import TrialState
from safetensors.torch import load_file

from automtl.backbones import create_backbone
from automtl.build import BranchedNet, resolve_device
from automtl.config import parse_config
from automtl.experiment import prepare
from automtl.fixed import single_task_baseline
from automtl.metrics import DELTA_M_CONVENTION, METRICS, aggregate_score, delta_m
from automtl.fixed import train_fixed
from automtl.search import artifact_dir, baseline_dir, is_multi_objective, objective_names, pareto_front, study_config
from automtl.space import Candidate
from automtl.tasks import TaskSpec
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

    Returns:
        The contents of ``metrics.json``.

    Raises:
        LookupError: No complete trial, or no trial of that number.
        FileNotFoundError: The trial's weights are missing from the artifact store.
        ValueError: ``retrain_seeds < 0``.
    """
    if retrain_seeds < 0:
        raise ValueError(f"retrain_seeds must be >= 0, got {retrain_seeds}")
    trial = _pick_trial(study, trial_number)
    config = study_config(study)
    experiment = prepare(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    candidate = trial.user_attrs["candidate"]
    tree = BranchTree.from_dict(candidate["tree"])
    store = FileSystemArtifactStore(str(artifact_dir(storage_url)))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_file = os.path.join(tmp, "weights.safetensors")
        try:
            download_artifact(artifact_store=store, file_path=tmp_file, artifact_id=trial.user_attrs["weights_artifact"])
        except Exception as exc:  # the store raises its own types for a missing file
            raise FileNotFoundError(
                f"weights of trial {trial.number} not found in {artifact_dir(storage_url)}: {exc}"
            ) from exc
        shutil.copyfile(tmp_file, out / "weights.safetensors")
    block_names = list(experiment.backbone.block_names)
    (out / "tree.yaml").write_text(
        "".join(f"# {line}\n" for line in tree.render(block_names).splitlines()) + tree.to_yaml()
    )
    model_spec = {
        "backbone": config.backbone,
        "backbone_options": config.backbone_options,
        "input_shape": list(experiment.data.input_shape),
        "tasks": [t.to_dict() for t in experiment.data.tasks],
    }
    (out / "model.yaml").write_text(yaml.safe_dump(model_spec, sort_keys=False))
    (out / "config.yaml").write_text(yaml.safe_dump({"name": config.name, **config.raw}, sort_keys=False))
    (out / "candidate.yaml").write_text(
        yaml.safe_dump({k: v for k, v in candidate.items() if k != "tree"}, sort_keys=False)
    )
    # the same code path as `automtl evaluate`, on the data already loaded for this export
    net = load(out, "cpu")
    val, test = (evaluate(net, experiment.data.split(split), net.tasks) for split in ("val", "test"))
    tasks = experiment.data.tasks
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
    (out / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=2, allow_nan=False))
    return metrics


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
    experiment = prepare(parse_config(yaml.safe_load((Path(bundle) / "config.yaml").read_text())))
    return evaluate(net, experiment.data.split(split), net.tasks)
