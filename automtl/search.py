"""A search, stage by stage: baselines, obvious designs, screening, confirmation.

:func:`run_search` runs (or resumes, or joins as one more worker) the search a config
describes, in a study of an Optuna storage (:mod:`automtl.study`):

1. **Baselines** (:mod:`automtl.baselines`): single-task networks choose each task's learning
   rate on validation and must beat a trivial predictor; trained once per study.
2. **Obvious designs** (:meth:`automtl.space.SearchSpace.obvious_designs`): hard parameter
   sharing with each balancer family's default and single-task networks are enqueued before any
   sampled trial (and, with ``seed_from_affinity``, the trees an affinity measurement suggests).
3. **Screening**: trials sampled by the sampler (TPE by default), each trained once with its
   own seed and scored on validation (Δm against the tuned baselines by default,
   :mod:`automtl.objectives`). ``n_trials`` is the study's total across all workers. A sampled
   design that already has a run is trained once more as a declared extra seed of it
   (``repeat_of``); one that has :data:`MAX_SCREEN_RUNS` runs is answered from the study with
   their mean, without training, and does not count toward the total. Costs are measured before
   training, so a candidate over a budget (``search.constraints``) is pruned untrained.
   Pruning (``search.pruner: auto``, :class:`automtl.pruning.RankAgreementPruner`) stops a
   trial early only where early and final ranks agree in the study.
4. **Confirmation** (:mod:`automtl.confirm`, ``search.confirm``): the best ``top_k`` designs
   and the best obvious hard-sharing design are retrained with fresh seeds, paired with the
   baselines' runs; the answer is the best mean, with a verdict against the obvious designs.
   Its record is the study's ``confirmation``; ``export`` takes its answer by default.

The baseline and confirmation runs are jobs (:mod:`automtl.jobs`) that every worker helps with.
A trial whose loss becomes NaN or diverges fails with its reason recorded and counts; a trial
stopped by Ctrl-C or SIGTERM fails as ``interrupted``, does not count, and is retried by the
next run (once); so is a trial whose worker was killed (the storage's heartbeat).
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore

from automtl.build import build_model, resolve_device
from automtl.config import SearchConfig, parse_config
from automtl.context import SETUP_WAIT, SearchContext, wait_until
from automtl.cost import count_flops
from automtl.data import describe_data
from automtl.errors import ConfigError
from automtl.experiment import prepare
from automtl.jobs import JobQueue
from automtl.objectives import ObjectiveSpec
from automtl.pruning import RankAgreementPruner
from automtl.screening import MAX_SCREEN_RUNS, enqueue_first, screen, screening_trials
from automtl.seeds import (
    derive_seed,
    sampler_seed,
)
from automtl.space import SearchSpace
from automtl.stages import confirmation, ensure_baselines, ensure_supernet
from automtl.study import (
    artifact_dir,
    open_storage,
    read_attr,
    write_attr,
)
from automtl.tree import BranchTree

__all__ = ["MAX_SCREEN_RUNS", "run_search", "screening_trials", "sigterm_as_interrupt"]


# config key -> the parsed attributes that define the search (compared on resume)
_SPACE_KEYS: dict[str, tuple[str, ...]] = {
    "data": ("data", "data_options"),
    "tasks": ("task_overrides",),
    "backbone": ("backbone", "backbone_options"),
    "space": ("space",),
    "train": ("train",),
    "search.objective": ("objective", "objective_weights"),
    "search.cost": ("cost",),
    "search.constraints": ("constraints",),
    "search.strategy": ("strategy", "supernet_budget"),
}

# ------------------------------------------------------------------------------------ the study
def _make_sampler(config: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=5)


def _make_pruner(config: SearchConfig, spec: ObjectiveSpec) -> optuna.pruners.BasePruner:
    epochs = int(config.train["epochs"].value)
    if spec.is_multi or config.pruner == "none":
        return optuna.pruners.NopPruner()
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    return RankAgreementPruner(epochs)


def _open_study(
    config: SearchConfig, spec: ObjectiveSpec, sampler: optuna.samplers.BaseSampler, artifacts: str
) -> tuple[optuna.Study, JobQueue]:
    """Create or join the study and its job queue; the first worker records the configuration
    (workers starting together agree on one through :meth:`JobQueue.claim`)."""
    storage = open_storage(config.storage, create=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            storage=storage,
            study_name=config.study_name,
            directions=spec.directions,  # type: ignore[arg-type]
            sampler=sampler,
            pruner=_make_pruner(config, spec),
            load_if_exists=True,
        )
    jobs = JobQueue(study._storage, config.study_name)

    def record() -> None:
        write_attr(study, "source", config.source)
        write_attr(study, "objective", spec.describe())
        write_attr(study, "objective_names", spec.names)
        write_attr(study, "artifacts", artifacts)
        write_attr(study, "config", {"name": config.name, **config.raw})  # last: its presence means "set up"

    new = read_attr(study, "config") is None
    if new and (jobs.claim("setup") or not wait_until(lambda: read_attr(study, "config") is not None, SETUP_WAIT)):
        record()
    old = parse_config(read_attr(study, "config"), read_attr(study, "source"))
    changed = [key for key, attrs in _SPACE_KEYS.items() if any(getattr(old, a) != getattr(config, a) for a in attrs)]
    if changed:
        raise ConfigError(
            changed[0],
            f"study '{config.study_name}' in {config.storage} was created with a different '{changed[0]}'; "
            "resume it with the original config, or pass --study-name to start a new study",
        )
    if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in spec.directions]:
        raise ConfigError("search.objective", f"study '{config.study_name}' has other objectives")
    return study, jobs


# ------------------------------------------------------------------------------------- signals
@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (what batch schedulers and containers send) raises KeyboardInterrupt, as Ctrl-C does."""
    if os.name != "posix" or signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        yield
        return
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------- the search
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
    confirm: bool | None = None,
    artifacts: str | os.PathLike[str] | None = None,
    worker: int = 0,
    threads: int | None = None,
) -> optuna.Study:
    """Run (or resume, or join as one more worker) the search described by ``config``.

    The study lives in ``storage`` under ``study_name``; running again with the same ones
    resumes it until ``n_trials`` screening trials have finished in all, across all workers,
    then confirms (module docstring). Keyword arguments override the configuration's values.

    Args:
        config: The search configuration.
        n_trials: The study's total of finished screening trials (default ``config.n_trials``).
        timeout: Seconds after which no new screening trial starts (the confirmation still runs).
        storage: Optuna storage URL (default ``config.storage``; forms in :mod:`automtl.study`).
        study_name: Default ``config.study_name``.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
        seed: Study seed (sampler, every run's training seed; :mod:`automtl.seeds`).
        progress: Show a tqdm bar over the study's total.
        echo: Where to print one line per finished trial and per stage (default: above the bar;
            ``None`` with ``progress=False``: silent).
        seed_from_affinity: A directory written by :meth:`automtl.affinity.AffinityResult.save`;
            the trees derived from it are enqueued with the obvious designs.
        restrict_to_affinity: Also fix the task grouping to the affinity's best grouping into at
            most ``space.max_groups`` groups (Optuna's ``PartialFixedSampler``).
        confirm: ``False`` skips the confirmation stage (default: ``config.confirm_seeds > 0``).
        artifacts: Folder of the weights (default ``config.artifacts``, else beside a SQLite or
            journal file; required for a server storage).
        worker: This worker's index: its sampler seed (:func:`automtl.seeds.sampler_seed`), unless another
            worker of the study holds that seed already (then one derived from it).
        threads: Torch intra-op threads (default ``config.threads``, else torch's default).

    Returns:
        The study; its ``confirmation`` attribute holds the confirmed answer and the verdict.

    Raises:
        ConfigError: Invalid configuration, or the study exists with another search space.
        DataError: The data are absent or malformed.
        StorageError: The storage URL or the artifact folder is unusable.
        BaselineError: A single-task baseline is no better than a constant predictor.
        JobFailed: A baseline run failed (NaN or divergence).
    """
    overrides: dict[str, Any] = {}
    for key, value in (("storage", storage), ("study_name", study_name), ("device", device), ("seed", seed)):
        if value is not None:
            overrides[key] = value
    if artifacts is not None:
        overrides["artifacts"] = str(artifacts)
    if confirm is False:
        overrides["confirm_seeds"] = 0
    config = replace(config, **overrides)
    try:
        resolve_device(config.device)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError("device", str(exc)) from exc
    if threads or config.threads:
        torch.set_num_threads(int(threads or config.threads))  # type: ignore[arg-type]
    target = n_trials if n_trials is not None else config.n_trials
    if target < 1:
        raise ConfigError("n_trials", f"must be an integer >= 1, got {target}")
    started = time.monotonic()
    experiment = prepare(config)
    spec = ObjectiveSpec.from_config(config, experiment.data.tasks)
    space = SearchSpace(config, experiment.data.task_names, experiment.backbone.n_blocks)
    say = echo or (print if progress else (lambda _: None))
    if worker == 0:
        say(describe_data(experiment.data, ("train", "val")))
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures and interrupts get one line of ours
    seeds, fixed_grouping = _affinity_seeds(space, seed_from_affinity, restrict_to_affinity)
    store_dir = artifact_dir(config.storage, config.artifacts)
    if config.strategy == "supernet":  # the proxy ranks trees only: balancer and training settings stay at their defaults
        fixed_grouping = {**space.fixed_defaults(), **(fixed_grouping or {})}
    sampler = _with_grouping(_make_sampler(config, sampler_seed(config.seed, worker)), fixed_grouping)
    study, jobs = _open_study(config, spec, sampler, str(store_dir))
    seed = _claim_sampler_seed(jobs, config.seed, worker, len(study.trials))
    study.sampler = _with_grouping(_make_sampler(config, seed), fixed_grouping)
    store_dir = artifact_dir(config.storage, config.artifacts, study)
    store_dir.mkdir(parents=True, exist_ok=True)
    search = SearchContext(config, experiment, space, spec, config.device, study, jobs, FileSystemArtifactStore(str(store_dir)), say,
                     store_dir=str(store_dir), target=target)  # fmt: skip
    if read_attr(study, "task_metrics") is None:
        write_attr(study, "task_metrics", {t.name: t.metric for t in experiment.data.tasks})
    if read_attr(study, "hps_flops") is None:
        hps = build_model(BranchTree.hard_sharing(space.tasks, space.n_blocks), experiment.backbone, experiment.data.tasks, "cpu")
        write_attr(study, "hps_flops", float(count_flops(hps, experiment.data.input_shape)))
    n_first = len(space.obvious_designs()) + len(seeds)
    if target < n_first:
        say(f"n_trials {target} is less than the {n_first} designs every search measures first; running {n_first}")
        search.target = n_first
    with sigterm_as_interrupt():
        search.baselines = ensure_baselines(search)
        if config.strategy == "supernet":
            search.proxy = ensure_supernet(search)
        enqueue_first(search, seeds)
        stopped = screen(search, timeout if timeout is not None else config.timeout, progress, echo)
        if stopped != "total reached":
            say(f"screening stopped: {stopped}")
        if config.confirm_seeds > 0:
            confirmation(search)
    write_attr(study, f"wall_seconds/{worker}", round(time.monotonic() - started, 1))
    return study


def _claim_sampler_seed(jobs: JobQueue, study_seed: int, worker: int, n_trials: int) -> int:
    """This worker's sampler seed, one that no other worker of the study holds.

    In a new study, its index's seed (:func:`automtl.seeds.sampler_seed`); in a resumed one, a
    seed derived from the number of trials so far (so that it does not replay the candidates
    drawn before). Each seed is claimed through the storage (:meth:`JobQueue.claim`): where
    another worker holds it (processes started together with the same ``--worker-index``, which
    would otherwise propose the same candidates), the next seed derived from it is tried.
    """
    for attempt in range(1000):
        if attempt == 0:
            seed = sampler_seed(study_seed, worker) if n_trials == 0 else derive_seed(study_seed, "sampler", worker, n_trials)
        else:
            seed = derive_seed(study_seed, "sampler", worker, n_trials, attempt)
        if jobs.claim(f"sampler-seed/{seed}"):
            return seed
    raise AssertionError("no free sampler seed among 1000")


def _with_grouping(sampler: optuna.samplers.BaseSampler, fixed: dict[str, Any] | None) -> optuna.samplers.BaseSampler:
    if fixed is None:
        return sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.PartialFixedSampler(fixed, sampler)


def _affinity_seeds(
    space: SearchSpace, seed_from_affinity: str | os.PathLike[str] | None, restrict: bool
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    if seed_from_affinity is None:
        if restrict:
            raise ConfigError("restrict_to_affinity", "needs seed_from_affinity (the affinity directory)")
        return [], None
    from automtl.affinity import (
        best_grouping,
        grouping_params,
        load_affinity,
        seed_params,
    )

    affinity = load_affinity(seed_from_affinity).reading()  # each task's own part, momentum removed
    if list(affinity.tasks) != space.tasks:
        raise ConfigError("seed_from_affinity", f"affinity tasks {list(affinity.tasks)} differ from {space.tasks}")
    params = seed_params(affinity, space)
    fixed = None
    if restrict:
        groups, _ = best_grouping(affinity.matrix, affinity.tasks, space.max_groups)
        fixed = grouping_params(groups, space.tasks)
        params = [p for p in params if all(p.get(k) == v for k, v in fixed.items())]
    full = []
    for p in params:  # complete each tree with the space's defaults, so the design is fixed
        tree = space.decode_tree(p)
        lone = space.family_default("loss_weighting") or next(iter(space.balancers))
        full.append(space.params_for(tree, lone))
    return full, fixed
