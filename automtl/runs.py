"""One training run of one design, and its weights in the artifact store.

The screening trials, the baseline runs and the confirmation runs of a search all train through
:func:`train_candidate` and keep their weights with :func:`upload_weights`, so every run of a
search is the same computation, told apart only by its design and seed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from safetensors.torch import save_file

from automtl.balance import create_balancer
from automtl.build import BranchedNet, build_model
from automtl.cost import count_flops
from automtl.experiment import Experiment
from automtl.space import Candidate
from automtl.train import EpochResult, FitResult, fit, seed_everything

__all__ = ["RunResult", "download_weights", "train_candidate", "upload_weights"]


@dataclass
class RunResult:
    """What one training run produced.

    Attributes:
        net: The trained network (on the run's device).
        fit: :func:`automtl.train.fit`'s per-epoch history.
        val_metrics: Per-task validation metrics after the last epoch.
        seconds: Training wall time (s), per-epoch validation included.
        epochs: Epochs trained.
        n_params: Parameter count.
        flops: Forward FLOPs of one sample (:func:`automtl.cost.count_flops`).
    """

    net: BranchedNet
    fit: FitResult
    val_metrics: dict[str, float]
    seconds: float
    epochs: int
    n_params: int
    flops: float

    def summary(self) -> dict[str, Any]:
        """Plain data for a job's result or a trial's record (no weights)."""
        return {
            "val": dict(self.val_metrics),
            "seconds": round(self.seconds, 3),
            "epochs": self.epochs,
            "n_params": self.n_params,
            "flops": self.flops,
        }


def train_candidate(
    experiment: Experiment,
    candidate: Candidate,
    device: str,
    *,
    on_epoch: Callable[[EpochResult], None] | None = None,
    net: BranchedNet | None = None,
) -> RunResult:
    """Build ``candidate`` (seeded by its training seed) and train it on the training split.

    Args:
        experiment: The data and backbone.
        candidate: Tree, balancer, hyperparameters and training settings (its seed included).
        device: Where to train (``auto``, ``cpu``, ``cuda:1``...).
        on_epoch: Passed to :func:`automtl.train.fit` (pruning; an exception it raises ends the run).
        net: The network already built from the same seed (to measure it first), else ``None``.

    Raises:
        NonFiniteLossError: A task loss became NaN or infinite, or training diverged.
    """
    data = experiment.data
    if net is None:
        seed_everything(candidate.train.seed)
        net = build_model(candidate.tree, experiment.backbone, data.tasks, device)
    flops = float(count_flops(net, data.input_shape))
    balancer = create_balancer(candidate.balancer, data.task_names, **candidate.balancer_params)
    result = fit(net, data, balancer, candidate.train, on_epoch=on_epoch)
    return RunResult(net, result, result.val_metrics, result.seconds, len(result.history), net.num_parameters(), flops)


def upload_weights(
    net: torch.nn.Module, store: FileSystemArtifactStore, owner: optuna.Trial | optuna.Study, name: str
) -> str:
    """Save ``net``'s state dict as safetensors in ``store``; returns the artifact id."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{name}.safetensors")
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, path)
        return upload_artifact(artifact_store=store, file_path=path, study_or_trial=owner)


def download_weights(store_dir: str | Path, artifact_id: str, dest: str | Path) -> Path:
    """Copy the weights ``artifact_id`` from the artifact folder ``store_dir`` to ``dest``.

    Raises:
        FileNotFoundError: The folder or the artifact is missing.
    """
    store_path = Path(store_dir)
    if not store_path.is_dir():
        raise FileNotFoundError(f"artifact folder {store_path} does not exist; pass --artifacts DIR")
    try:
        download_artifact(artifact_store=FileSystemArtifactStore(str(store_path)), file_path=str(dest), artifact_id=artifact_id)
    except Exception as exc:  # the store raises its own types for a missing file
        raise FileNotFoundError(f"weights {artifact_id} not found in {store_path}: {exc}") from exc
    return Path(dest)
