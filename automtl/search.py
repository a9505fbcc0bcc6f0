"""The Optuna study: storage, sampler, pruner, resumption, and what each trial records.

Each trial samples a :class:`~automtl.space.Candidate`, builds it, measures its cost
(:mod:`automtl.cost`), trains it with :func:`automtl.train.fit` on the training split, and
returns the objectives of :mod:`automtl.objectives`: the quality of its validation metrics
(``delta_m`` by default, against single-task baselines trained once and cached; or
``mean_score``, ``weighted``, ``per_task``), then any cost objectives.

**Hard budgets** (``search.constraints``: ``max_params``, ``max_flops``, ``max_latency_ms``) are
Optuna trial constraints (``Trial.set_constraint``, value ``cost / limit - 1``, feasible when
<= 0). The costs are measured before training, so a candidate over a budget ends *pruned*
without being trained; the sampler (TPE) reads its constraint values and learns to avoid the
region, and ``best_trial`` / ``best_trials`` hold feasible trials only.

**Pruning.** A single-objective study prunes with the median rule on the per-epoch validation
objective. Optuna has no pruning for multi-objective studies (``Trial.report`` is refused), so
there automtl trains every feasible candidate to the end and saves compute only through the
budgets above, which reject a candidate before any training. ``history`` still records the
first quality objective per epoch.

Each trial records, as user attributes:

* ``candidate``: tree, balancer, hyperparameters (``Candidate.to_dict()``);
* ``tree``: the tree's one-line shape; ``n_params``: parameter count; ``cost``: the measured costs;
* ``over_budget``: which budget a rejected candidate exceeded;
* ``val_metrics``: per-task validation metrics; ``history``: the (first) quality objective per epoch;
* ``train_seconds``: training wall time (s);
* ``weights_artifact``: the Optuna artifact id of its weights (safetensors);
* ``fail_reason``: why it failed, for a trial whose loss became NaN or infinite.

The study records the configuration (``config``), the objectives' names and directions
(``objective_names``, ``directions``) and what they mean (``objective``) so that ``show``, ``export`` and a resumed
search need only the storage and study name.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import save_file
from tqdm.auto import tqdm

from automtl.balance import create_balancer
from automtl.build import build_model, resolve_device
from automtl.config import SearchConfig, parse_config
from automtl.cost import BUDGETS, measure_costs
from automtl.errors import ConfigError, NonFiniteLossError
from automtl.experiment import Experiment, prepare
from automtl.fixed import single_task_baseline
from automtl.objectives import ObjectiveSpec
from automtl.report import format_number
from automtl.space import SearchSpace
from automtl.train import EpochResult, fit, seed_everything

__all__ = [
    "artifact_dir",
    "finished_trials",
    "is_multi_objective",
    "load_study",
    "objective_names",
    "open_storage",
    "pareto_front",
    "run_search",
    "study_config",
]

# config key -> the parsed attributes that define the search space (compared on resume)
_SPACE_KEYS: dict[str, tuple[str, ...]] = {
    "data": ("data", "data_options"),
    "tasks": ("task_overrides",),
    "backbone": ("backbone", "backbone_options"),
    "space": ("space",),
    "train": ("train",),
    "search.objective": ("objective", "objective_weights"),
    "search.cost": ("cost",),
    "search.constraints": ("constraints",),
}


def _sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///") :])
    return None


def artifact_dir(storage_url: str) -> Path:
    """Where trial weights are kept: ``<sqlite file>.artifacts/``, else ``runs/artifacts``."""
    db = _sqlite_path(storage_url)
    return db.with_name(db.name + ".artifacts") if db is not None else Path("runs") / "artifacts"


def baseline_dir(storage_url: str) -> Path:
    """Where single-task baselines are cached: ``baselines/`` beside the artifacts."""
    return artifact_dir(storage_url).parent / "baselines"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage with a heartbeat, so trials of a killed process are failed and retried.

    A relative SQLite path is relative to the working directory; its folder is created.
    """
    db = _sqlite_path(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=30,
            grace_period=120,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        )


def load_study(storage: str, study_name: str | None = None) -> optuna.Study:
    """Load a study; with no name, the storage's only study (or its newest, with a note).

    Raises:
        LookupError: No study in the storage, or no study of that name.
    """
    store = open_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
    if not names:
        raise LookupError(f"no study in storage {storage}; run 'automtl search CONFIG' first")
    if study_name is None:
        study_name = names[-1]
    elif study_name not in names:
        raise LookupError(f"no study '{study_name}' in storage {storage}; studies: {names}")
    return optuna.load_study(study_name=study_name, storage=store)


def study_config(study: optuna.Study) -> SearchConfig:
    """The configuration a study was created with."""
    return parse_config(study.user_attrs["config"], study.user_attrs.get("source"))


def is_multi_objective(study: optuna.Study) -> bool:
    """Whether the study has more than one objective (``search.cost`` or ``per_task``)."""
    return len(study.directions) > 1


def objective_names(study: optuna.Study) -> list[str]:
    """The names of the study's objectives in value order (``["value"]`` for a study without them)."""
    return list(study.user_attrs.get("objective_names") or ["value"] * len(study.directions))


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The feasible complete trials that no other one dominates, sorted by their last objective
    (the first cost objective when there is one); a single-objective study's best trial."""
    if not is_multi_objective(study):
        try:
            return [study.best_trial]
        except ValueError:
            return []
    return sorted(study.best_trials, key=lambda t: (t.values[-1], t.number))


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that count towards ``n_trials``: complete, pruned, or failed for a recorded reason.

    A trial failed by an interruption (Ctrl-C, a killed process) does not count; it is retried.
    """
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)
    ]


def _budget_check(costs: dict[str, float], constraints: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """Optuna constraint values (``cost / limit - 1``; <= 0 is feasible) and the budgets exceeded."""
    values, over = {}, []
    for budget, limit in constraints.items():
        cost = BUDGETS[budget]
        values[budget] = costs[cost] / limit - 1.0
        if values[budget] > 0:
            over.append(f"{cost} {costs[cost]:.6g} > {budget} {limit:.6g}")
    return values, over


@dataclass
class _Objective:
    experiment: Experiment
    space: SearchSpace
    spec: ObjectiveSpec
    device: str
    artifacts: FileSystemArtifactStore
    baseline: dict[str, float] | None = None
    constraints: dict[str, float] = field(default_factory=dict)

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        data = self.experiment.data
        candidate = self.space.sample(trial)
        trial.set_user_attr("candidate", candidate.to_dict())
        trial.set_user_attr("tree", candidate.tree.compact())
        seed_everything(candidate.train.seed)
        net = build_model(candidate.tree, self.experiment.backbone, data.tasks, self.device)
        wanted = set(self.spec.cost) | {BUDGETS[b] for b in self.constraints}
        costs = measure_costs(net, data.input_shape, wanted)
        trial.set_user_attr("n_params", int(costs["n_params"]))
        trial.set_user_attr("cost", costs)
        constraint_values, over = _budget_check(costs, self.constraints)
        for budget, value in constraint_values.items():
            trial.set_constraint(budget, value)
        if over:
            reason = "over budget, not trained: " + "; ".join(over)
            trial.set_user_attr("over_budget", reason)
            raise optuna.TrialPruned(reason)
        balancer = create_balancer(candidate.balancer, data.task_names, **candidate.balancer_params)
        history: list[float] = []

        def on_epoch(result: EpochResult) -> None:
            value = self.spec.quality_values(result.val_metrics, self.baseline)[0]
            history.append(value)
            trial.set_user_attr("history", history)
            if self.spec.is_multi:
                return  # Optuna has no pruning for multi-objective studies (module docstring)
            trial.report(value, result.epoch)
            if trial.should_prune():
                trial.set_user_attr("val_metrics", result.val_metrics)
                raise optuna.TrialPruned(f"pruned after epoch {result.epoch} (objective {value:.4f})")

        try:
            result = fit(net, data, balancer, candidate.train, on_epoch=on_epoch)
        except NonFiniteLossError as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise
        trial.set_user_attr("val_metrics", result.val_metrics)
        trial.set_user_attr("train_seconds", round(result.seconds, 3))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"trial{trial.number}.safetensors")
            save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, path)
            artifact_id = upload_artifact(artifact_store=self.artifacts, file_path=path, study_or_trial=trial)
        trial.set_user_attr("weights_artifact", artifact_id)
        values = self.spec.values(result.val_metrics, self.baseline, costs)
        return values if self.spec.is_multi else values[0]


def _make_sampler(config: SearchConfig) -> optuna.samplers.BaseSampler:
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=config.seed, multivariate=True, group=True, n_startup_trials=5)


def _make_pruner(config: SearchConfig) -> optuna.pruners.BasePruner:
    if config.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


def _trial_line(trial: FrozenTrial, names: Sequence[str]) -> str:
    metrics = trial.user_attrs.get("val_metrics", {})
    per_task = " ".join(f"{t}={v:.3f}" for t, v in metrics.items())
    if trial.values is None:
        value = "-"
    else:
        value = " ".join(f"{n}={format_number(v)}" for n, v in zip(names, trial.values))
    reason = trial.user_attrs.get("fail_reason", "") or trial.user_attrs.get("over_budget", "")
    return (
        f"trial {trial.number:>3} {trial.state.name.lower():>8} {value} "
        f"balancer={trial.params.get('balancer', '?')} tree=[{trial.user_attrs.get('tree', '?')}] "
        f"{per_task}{'  ' + reason if reason else ''}"
    )


def run_search(
    config: SearchConfig,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    device: str | None = None,
    seed: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    seed_from_affinity: str | os.PathLike[str] | None = None,
    restrict_to_affinity: bool = False,
) -> optuna.Study:
    """Run (or resume) the search described by ``config``.

    The study lives in ``storage`` under ``study_name``; running again with the same ones
    resumes it until ``n_trials`` trials have finished in all. Keyword arguments override the
    configuration's values.

    Args:
        config: The search configuration.
        n_trials: Total finished trials to reach (default ``config.n_trials``).
        timeout: Seconds after which no new trial starts.
        storage: Optuna storage URL (default ``config.storage``, SQLite).
        study_name: Default ``config.study_name``.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``...
        seed: Sampler and training seed.
        progress: Show a tqdm bar over trials with the best value so far.
        echo: Where to print one line per finished trial with its per-task metrics
            (default: above the progress bar; ``None`` with ``progress=False``: silent).
        seed_from_affinity: A directory written by :meth:`automtl.affinity.AffinityResult.save`;
            the trees derived from it (:func:`automtl.affinity.seed_params`) are enqueued as the
            first trials.
        restrict_to_affinity: Also fix the task grouping to the affinity's best grouping into at
            most ``space.max_groups`` groups (Optuna's ``PartialFixedSampler``).

    Returns:
        The study.

    Raises:
        ConfigError: Invalid configuration, or the study exists with another search space.
        DataError: The data are absent or malformed.
    """
    overrides: dict[str, Any] = {}
    if storage is not None:
        overrides["storage"] = storage
    if study_name is not None:
        overrides["study_name"] = study_name
    if device is not None:
        overrides["device"] = device
    if seed is not None:
        overrides["seed"] = seed
    config = replace(config, **overrides)
    try:
        resolve_device(config.device)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError("device", str(exc)) from exc
    experiment = prepare(config)
    spec = ObjectiveSpec.from_config(config, experiment.data.tasks)
    space = SearchSpace(config, experiment.data.task_names, experiment.backbone.n_blocks)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds: list[dict[str, Any]] = []
    fixed_grouping: dict[str, Any] | None = None
    if seed_from_affinity is not None:
        from automtl.affinity import best_grouping, grouping_params, load_affinity, seed_params

        affinity = load_affinity(seed_from_affinity)
        if list(affinity.tasks) != space.tasks:
            raise ConfigError("--seed-from-affinity", f"affinity tasks {list(affinity.tasks)} differ from {space.tasks}")
        seeds = seed_params(affinity, space)
        if restrict_to_affinity:
            groups, _ = best_grouping(affinity.matrix, affinity.tasks, space.max_groups)
            fixed_grouping = grouping_params(groups, space.tasks)
            seeds = [p for p in seeds if all(p.get(k) == v for k, v in fixed_grouping.items())]
    elif restrict_to_affinity:
        raise ConfigError("--restrict-to-affinity", "needs --seed-from-affinity DIR")

    def sampler_for(cfg: SearchConfig) -> optuna.samplers.BaseSampler:
        base = _make_sampler(cfg)
        if fixed_grouping is None:
            return base
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.PartialFixedSampler(fixed_grouping, base)

    study = optuna.create_study(
        storage=open_storage(config.storage),
        study_name=config.study_name,
        directions=spec.directions,
        sampler=sampler_for(config),
        pruner=optuna.pruners.NopPruner() if spec.is_multi else _make_pruner(config),
        load_if_exists=True,
    )
    stored = study.user_attrs.get("config")
    if stored is None:
        study.set_user_attr("config", {"name": config.name, **config.raw})
        study.set_user_attr("source", config.source)
        study.set_user_attr("objective", spec.describe())
        study.set_user_attr("objective_names", spec.names)
    else:
        old = parse_config(stored, study.user_attrs.get("source"))
        changed = [key for key, attrs in _SPACE_KEYS.items() if any(getattr(old, a) != getattr(config, a) for a in attrs)]
        if changed:
            raise ConfigError(
                changed[0],
                f"study '{config.study_name}' in {config.storage} was created with a different '{changed[0]}'; "
                "resume it with the original config, or pass --study-name to start a new study",
            )
        # a resumed study must not replay the candidates its seeded sampler drew the first time
        study.sampler = sampler_for(replace(config, seed=config.seed + len(study.trials)))
    for params in seeds:
        study.enqueue_trial(params, skip_if_exists=True)
    target = n_trials if n_trials is not None else config.n_trials
    remaining = max(0, target - len(finished_trials(study)))
    if remaining == 0:
        return study
    artifacts_path = artifact_dir(config.storage)
    artifacts_path.mkdir(parents=True, exist_ok=True)
    say = echo or (print if progress else None)
    baseline = None
    if config.objective == "delta_m":
        cache = baseline_dir(config.storage)
        if say is not None:
            say(f"single-task baselines for delta_m: trained once, then read from the cache in {cache}")
        baseline = single_task_baseline(experiment, cache, ("val",), config.device)["val"]
        study.set_user_attr("baseline_val", baseline)
    objective = _Objective(
        experiment, space, spec, config.device, FileSystemArtifactStore(str(artifacts_path)), baseline, config.constraints
    )
    bar = tqdm(total=remaining, desc=f"search {config.study_name}", unit="trial", disable=not progress)
    write = echo or (bar.write if progress else None)

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        bar.update(1)
        if write is not None:
            write(_trial_line(trial, spec.names))
        if spec.is_multi:
            bar.set_postfix_str(f"pareto front: {len(study.best_trials)} trial(s)")
            return
        try:
            best = study.best_trial
            bar.set_postfix_str(f"best={best.value:.4f} (trial {best.number})")
        except ValueError:
            pass

    try:
        study.optimize(
            objective,
            n_trials=remaining,
            timeout=timeout if timeout is not None else config.timeout,
            catch=(NonFiniteLossError,),
            callbacks=[callback],
        )
    finally:
        bar.close()
    return study
