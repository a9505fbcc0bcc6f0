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

import dataclasses
import os
import signal
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from automtl.baselines import (
    BaselineChoice,
    baseline_candidate,
    check_sane,
    choose,
    confirm_job,
    trivial_metrics,
    tuning_job_for,
    tuning_jobs,
)
from automtl.build import build_model, resolve_device
from automtl.config import SearchConfig, parse_config
from automtl.confirm import (
    SINGLE_TASK,
    Confirmation,
    ConfirmedDesign,
    analyse,
    pareto_indices,
)
from automtl.cost import BUDGETS, count_flops, measure_costs
from automtl.data import describe_data
from automtl.errors import ConfigError, NonFiniteLossError
from automtl.experiment import Experiment, prepare
from automtl.jobs import JobQueue
from automtl.metrics import aggregate_score, delta_m
from automtl.objectives import ObjectiveSpec, weighted_score
from automtl.pruning import RankAgreementPruner
from automtl.runs import download_weights, train_candidate, upload_weights
from automtl.seeds import (
    baseline_tuning_seed,
    confirmation_seeds,
    derive_seed,
    sampler_seed,
)
from automtl.space import Candidate, SearchSpace, default_value
from automtl.study import (
    DesignRuns,
    TrialRecord,
    active_runs,
    artifact_dir,
    counted_before,
    counts_toward_total,
    designs,
    finished_trials,
    open_storage,
    read_attr,
    retry_trial,
    write_attr,
)
from automtl.supernet import (
    ProxyEvaluator,
    Supernet,
    SupernetProgress,
    train_supernet,
    tree_sampler,
)
from automtl.train import EpochResult, TrainConfig, seed_everything
from automtl.tree import BranchTree

__all__ = ["MAX_SCREEN_RUNS", "run_search", "screening_trials", "sigterm_as_interrupt"]

#: A design is trained at most this often in screening (once, and once as a declared extra seed).
MAX_SCREEN_RUNS = 2
#: Screening stops when the sampler proposes only finished designs this many times in a row.
MAX_ANSWERED_STREAK = 25
#: Seconds between two looks at the storage while other workers finish the last trials.
POLL_SECONDS = 1.0

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

_QUALITY_UNIT = {"delta_m": "Δm", "mean_score": "mean score", "per_task": "mean score", "weighted": "weighted score"}


class _Surplus(Exception):
    """A trial started after the study's total was reached."""


@dataclass
class _Search:
    """What every stage of one worker's search needs."""

    config: SearchConfig
    experiment: Experiment
    space: SearchSpace
    spec: ObjectiveSpec
    device: str
    study: optuna.Study
    jobs: JobQueue
    store: FileSystemArtifactStore
    say: Callable[[str], None]
    baselines: BaselineChoice | None = None
    proxy: _Proxy | None = None
    store_dir: str = ""
    target: int = 0
    last: list[int] = field(default_factory=list)  # numbers of the trials this worker ran

    @property
    def tasks(self) -> list[str]:
        return self.experiment.data.task_names

    def quality(self, metrics: Mapping[str, float], reference: Mapping[str, float]) -> float:
        """The confirmed scalar objective of one run's validation metrics."""
        tasks = self.experiment.data.tasks
        if self.spec.quality == "delta_m":
            return delta_m(metrics, reference, tasks)
        if self.spec.quality == "weighted":
            return weighted_score(metrics, tasks, self.spec.weights)
        return aggregate_score(metrics, tasks)


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


def _wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll ``condition`` until it holds (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS / 2)
    return True


#: Seconds a worker waits for the one that sets a new study up, before doing it itself.
SETUP_WAIT = 60.0


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
    if new and (jobs.claim("setup") or not _wait_until(lambda: read_attr(study, "config") is not None, SETUP_WAIT)):
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


# -------------------------------------------------------------------------------------- the jobs
def _job_handler(search: _Search) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
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


def _supernet_train_settings(search: _Search) -> TrainConfig:
    values = {k: default_value(v) for k, v in search.config.train.items()}
    return TrainConfig(seed=derive_seed(search.config.seed, "supernet"), **values)


def _train_supernet_job(search: _Search) -> Mapping[str, Any]:
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


def _load_checkpoint(search: _Search, artifact: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = download_weights(search.store_dir, artifact, os.path.join(tmp, "supernet.pt"))
        return dict(torch.load(path, map_location="cpu", weights_only=True))  # tensors and plain data only


class _Proxy:
    """This worker's supernet and its proxy evaluator (weights read once from the artifact store)."""

    def __init__(self, search: _Search, result: Mapping[str, Any]) -> None:
        from safetensors.torch import load_file

        data = search.experiment.data
        self.supernet = Supernet(search.experiment.backbone, data.tasks)
        with tempfile.TemporaryDirectory() as tmp:
            path = download_weights(search.store_dir, result["weights_artifact"], os.path.join(tmp, "w.safetensors"))
            self.supernet.load_state_dict(load_file(str(path)))
        self.supernet.to(resolve_device(search.device)).eval()
        epochs = int(search.config.train["epochs"].value)
        self.evaluator = ProxyEvaluator(self.supernet, data, hps_flops=float(read_attr(search.study, "hps_flops")), epochs=epochs)


def _ensure_supernet(search: _Search) -> _Proxy:
    """Train (or join, or read) the study's supernet."""
    search.say(f"supernet: weight sharing over every tree of the space, trained for {search.config.supernet_budget:g} TRE")
    result = search.jobs.wait([SUPERNET_JOB], _job_handler(search))[SUPERNET_JOB["key"]]
    return _Proxy(search, result)


def _ensure_baselines(search: _Search) -> BaselineChoice:
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


# --------------------------------------------------------------------------------- screening
def _enqueue_first(search: _Search, seeds: Sequence[dict[str, Any]]) -> None:
    """The obvious designs, then the affinity-derived trees, once per study (by one worker)."""
    study = search.study

    def enqueue() -> None:
        for design in search.space.obvious_designs():
            study.enqueue_trial(design.params, user_attrs=TrialRecord.enqueued("obvious", design.label), skip_if_exists=True)
        for params in seeds:
            study.enqueue_trial(params, user_attrs=TrialRecord.enqueued("obvious", "from affinity"), skip_if_exists=True)
        write_attr(study, "obvious_enqueued", True)

    if read_attr(study, "obvious_enqueued"):
        return
    if search.jobs.claim("obvious") or not _wait_until(lambda: bool(read_attr(study, "obvious_enqueued")), SETUP_WAIT):
        enqueue()


def _retry_later(study: optuna.Study, trial: optuna.Trial) -> None:
    """Enqueue a copy of an interrupted trial (at most :data:`MAX_RETRY` times), as the heartbeat
    does for a killed worker's trial."""
    retry_trial(study, next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number))


class _Screen:
    """The objective of the screening trials (stage 3 of the module docstring)."""

    def __init__(self, search: _Search) -> None:
        self.search = search

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        s = self.search
        record: TrialRecord | None = None
        try:  # from the first line: an interrupt anywhere in the trial fails it as interrupted
            s.last.append(trial.number)
            record = TrialRecord.fresh(trial)
            record.save(trial)  # a retried trial must not show its predecessor's record (it counts as running)
            return self._run(trial, record)
        except KeyboardInterrupt:
            record = record or TrialRecord.fresh(trial)
            record.interrupted = "interrupted"
            record.save(trial)
            _retry_later(s.study, trial)
            raise

    def _run(self, trial: optuna.Trial, record: TrialRecord) -> float | list[float]:
        s = self.search
        trials = s.study.get_trials(deepcopy=False)
        if counted_before(trials, trial.number) >= s.target:
            record.surplus = True
            record.save(trial)
            frozen = next(t for t in trials if t.number == trial.number)
            if "fixed_params" in frozen.system_attrs:  # an enqueued design: hand it back
                s.study.enqueue_trial(dict(frozen.system_attrs["fixed_params"]), user_attrs=TrialRecord.enqueued(record.stage, record.label))
            raise _Surplus
        candidate = s.space.sample(trial)
        record.candidate, record.key, record.tree = candidate.to_dict(), candidate.key(), candidate.tree.compact()
        tuning = tuning_job_for(candidate, s.config, s.tasks, s.experiment.backbone.n_blocks) if s.proxy is None else None
        if tuning is not None:
            return self._from_baselines(trial, record, candidate, tuning)
        limit = 1 if s.proxy is not None else MAX_SCREEN_RUNS  # a proxy has no seed noise: one run is all
        trains, record.repeat_of, others = self._take_run(trial.number, record.key, limit)
        if not trains:
            return self._answer(trial, record, others)
        if s.proxy is not None:
            return self._proxy_value(trial, record, candidate)
        record.save(trial)
        seed_everything(candidate.train.seed)
        net = build_model(candidate.tree, s.experiment.backbone, s.experiment.data.tasks, s.device)
        wanted = set(s.spec.cost) | {BUDGETS[b] for b in s.config.constraints} | {"flops"}
        costs = measure_costs(net, s.experiment.data.input_shape, wanted)
        record.n_params, record.flops = int(costs["n_params"]), costs["flops"]
        record.cost = {k: v for k, v in costs.items() if k in s.spec.cost or k in ("n_params", "flops")}
        over = self._budgets(trial, costs)
        if over:
            record.over_budget = "over budget, not trained: " + "; ".join(over)
            record.save(trial)
            raise optuna.TrialPruned(record.over_budget)
        record.save(trial)
        try:
            run = train_candidate(s.experiment, candidate, s.device, on_epoch=self._on_epoch(trial, record), net=net)
        except NonFiniteLossError as exc:
            record.fail_reason = str(exc)
            record.save(trial)
            raise
        record.val_metrics, record.train_seconds = run.val_metrics, round(run.seconds, 3)
        record.weights_artifact = upload_weights(run.net, s.store, trial, f"trial{trial.number}")
        record.save(trial)
        values = s.spec.values(run.val_metrics, s.baselines.val if s.baselines else None, costs)
        return values if s.spec.is_multi else values[0]

    def _take_run(self, number: int, key: str, limit: int = MAX_SCREEN_RUNS) -> tuple[bool, int | None, list[FrozenTrial]]:
        """Whether trial ``number`` trains (or scores) design ``key`` (one of its first ``limit``
        runs), the number of the design's first run (``None``: this is it), and its other runs.

        Workers that sample one design at the same moment agree through a line of tickets in the
        storage (:meth:`JobQueue.tickets`, ``run/<key>``): the first :data:`MAX_SCREEN_RUNS`
        trials in the line train it. A retry copy stands where the trial it retries stood; runs
        of a study begun by an older automtl, without tickets, stand before the line.
        """
        s = self.search
        trials = s.study.get_trials(deepcopy=False)
        me = _lineage(next(t for t in trials if t.number == number))
        s.jobs.tickets(f"run/{key}", trial=me)
        trials = s.study.get_trials(deepcopy=False)
        others = active_runs(trials, key, number)
        line = list(dict.fromkeys(ticket["trial"] for ticket in s.jobs.line(f"run/{key}")))  # read after the runs
        order = sorted({_lineage(t) for t in others} - set(line)) + line
        first = None if order.index(me) == 0 else _current(order[0], trials)
        return order.index(me) < limit, first, others

    def _from_baselines(self, trial: optuna.Trial, record: TrialRecord, candidate: Candidate, job: str) -> float | list[float]:
        """The single-task design at a rate the baselines tuned: their run, not trained again (not counted)."""
        s = self.search
        result = s.jobs.results([job])[job]
        seed_everything(candidate.train.seed)
        net = build_model(candidate.tree, s.experiment.backbone, s.experiment.data.tasks, s.device)
        wanted = set(s.spec.cost) | {BUDGETS[b] for b in s.config.constraints} | {"flops"}
        costs = measure_costs(net, s.experiment.data.input_shape, wanted)
        record.answered_from = "baselines"
        record.n_params, record.flops, record.cost = int(costs["n_params"]), costs["flops"], dict(costs)
        over = self._budgets(trial, costs)
        if over:
            record.over_budget = "over budget: " + "; ".join(over)
            record.save(trial)
            raise optuna.TrialPruned(record.over_budget)
        record.val_metrics, record.weights_artifact = dict(result["val"]), result["weights_artifact"]
        record.save(trial)
        values = s.spec.values(record.val_metrics, s.baselines.val if s.baselines else None, costs)
        return values if s.spec.is_multi else values[0]

    def _proxy_value(self, trial: optuna.Trial, record: TrialRecord, candidate: Candidate) -> float | list[float]:
        """The candidate's objective with the supernet's weights, not trained (a screening trial)."""
        s = self.search
        assert s.proxy is not None
        seed_everything(candidate.train.seed)
        net = build_model(candidate.tree, s.experiment.backbone, s.experiment.data.tasks, s.device)
        wanted = set(s.spec.cost) | {BUDGETS[b] for b in s.config.constraints} | {"flops"}
        costs = measure_costs(net, s.experiment.data.input_shape, wanted)
        record.n_params, record.flops = int(costs["n_params"]), costs["flops"]
        record.cost = {k: v for k, v in costs.items() if k in s.spec.cost or k in ("n_params", "flops")}
        over = self._budgets(trial, costs)
        if over:
            record.over_budget = "over budget, not scored: " + "; ".join(over)
            record.save(trial)
            raise optuna.TrialPruned(record.over_budget)
        before = s.proxy.evaluator.tre
        record.val_metrics = s.proxy.evaluator.metrics(candidate.tree)
        record.proxy, record.proxy_tre = True, s.proxy.evaluator.tre - before
        record.save(trial)
        values = s.spec.values(record.val_metrics, s.baselines.val if s.baselines else None, costs)
        return values if s.spec.is_multi else values[0]

    def _answer(self, trial: optuna.Trial, record: TrialRecord, others: Sequence[FrozenTrial]) -> float | list[float]:
        """A design with its runs already: its mean, without training (not counted)."""
        record.answered_from = "study"
        record.save(trial)
        done = [t.values for t in others if t.state == TrialState.COMPLETE and t.values is not None]
        if not done:
            raise optuna.TrialPruned(f"same design as trial {record.repeat_of}, which has no complete run; not trained again")
        mean = [sum(v[i] for v in done) / len(done) for i in range(len(done[0]))]
        return mean if self.search.spec.is_multi else mean[0]

    def _budgets(self, trial: optuna.Trial, costs: Mapping[str, float]) -> list[str]:
        over = []
        for budget, limit in self.search.config.constraints.items():
            cost = BUDGETS[budget]
            value = costs[cost] / limit - 1.0
            trial.set_constraint(budget, value)
            if value > 0:
                over.append(f"{cost} {costs[cost]:.6g} > {budget} {limit:.6g}")
        return over

    def _on_epoch(self, trial: optuna.Trial, record: TrialRecord) -> Callable[[EpochResult], None]:
        s = self.search

        def on_epoch(result: EpochResult) -> None:
            value = s.spec.quality_values(result.val_metrics, s.baselines.val if s.baselines else None)[0]
            record.history.append(value)
            record.epochs_trained = result.epoch + 1
            record.val_metrics = result.val_metrics
            record.save(trial)
            if s.spec.is_multi:
                return  # Optuna has no pruning for multi-objective studies
            trial.report(value, result.epoch)
            if trial.should_prune():
                pruner = s.study.pruner
                why = pruner.explain(trial.number) if isinstance(pruner, RankAgreementPruner) else ""
                record.pruned_reason = why or f"pruned after epoch {result.epoch + 1} by the median rule (objective {value:.4g})"
                record.save(trial)
                raise optuna.TrialPruned(record.pruned_reason)

        return on_epoch


def _lineage(trial: FrozenTrial) -> int:
    """The number of the first trial of ``trial``'s retries (its own number if it is no retry)."""
    return int(trial.system_attrs.get("retry_history", [trial.number])[0])


def _current(lineage: int, trials: Sequence[FrozenTrial]) -> int:
    """The trial of a lineage (:func:`_lineage`) that is running or was trained: its last retry
    that is; ``lineage`` itself when none is."""
    alive = [t.number for t in trials if _lineage(t) == lineage and (t.state == TrialState.RUNNING or counts_toward_total(t))]
    return max(alive, default=lineage)


def screening_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials of a study that hold a design (every stage but surplus trials)."""
    return [t for t in study.get_trials(deepcopy=False) if TrialRecord.of(t).key and not TrialRecord.of(t).surplus]


def _screen(search: _Search, timeout: float | None, progress: bool, echo: Callable[[str], None] | None) -> str:
    """Run screening trials until the study's total is reached; returns why it stopped."""
    from automtl.report import trial_line

    s = search
    objective = _Screen(s)
    start = time.monotonic()
    bar = tqdm(total=s.target, initial=min(s.target, len(finished_trials(s.study))), desc=f"search {s.config.study_name}",
               unit="trial", disable=not progress)  # fmt: skip
    write = echo or (bar.write if progress else None)
    streak = 0
    try:
        while True:
            trials = s.study.get_trials(deepcopy=False)
            done = sum(counts_toward_total(t) for t in trials)
            bar.n = min(done, s.target)
            bar.refresh()
            if done >= s.target:
                return "total reached"
            if timeout is not None and time.monotonic() - start > timeout:
                return f"timeout after {timeout:g} s"
            if streak >= MAX_ANSWERED_STREAK:
                return f"the sampler proposed only finished designs {streak} times in a row; the space may be exhausted"
            running = [t for t in trials if t.state == TrialState.RUNNING]
            waiting = [t for t in trials if t.state == TrialState.WAITING]
            if done + len(running) >= s.target and not waiting:
                time.sleep(POLL_SECONDS)  # other workers are finishing the last trials
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(s.study)
                continue
            n_before = len(s.last)
            s.study.optimize(objective, n_trials=1, catch=(NonFiniteLossError, _Surplus))
            if len(s.last) == n_before:
                continue
            number = s.last[-1]
            trial = next(t for t in s.study.get_trials(deepcopy=False) if t.number == number)
            record = TrialRecord.of(trial)
            if record.surplus:
                continue
            streak = streak + 1 if record.answered_from else 0
            if write is not None:
                write(trial_line(trial, s.spec.names))
    finally:
        bar.close()


# ------------------------------------------------------------------------------ confirmation
def _select(search: _Search, runs: Sequence[DesignRuns]) -> list[DesignRuns]:
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


def _single_task_budget(search: _Search, tree: BranchTree) -> str:
    """Which hard budgets the single-task networks exceed ("" if none)."""
    if not search.config.constraints:
        return ""
    net = build_model(tree, search.experiment.backbone, search.experiment.data.tasks, search.device)
    costs = measure_costs(net, search.experiment.data.input_shape, {BUDGETS[b] for b in search.config.constraints})
    over = [f"{BUDGETS[b]} {costs[BUDGETS[b]]:.6g} > {b} {limit:.6g}" for b, limit in search.config.constraints.items()
            if costs[BUDGETS[b]] > limit]  # fmt: skip
    return "; ".join(over)


def _confirm(search: _Search) -> Confirmation | None:
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
    conf = analyse(objective, _QUALITY_UNIT[s.spec.quality], seeds, [r["val"] for r in baseline_runs], confirmed, single, s.quality)
    write_attr(s.study, "confirmation", conf.to_dict())
    return conf


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
    search = _Search(config, experiment, space, spec, config.device, study, jobs, FileSystemArtifactStore(str(store_dir)), say,
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
        search.baselines = _ensure_baselines(search)
        if config.strategy == "supernet":
            search.proxy = _ensure_supernet(search)
        _enqueue_first(search, seeds)
        stopped = _screen(search, timeout if timeout is not None else config.timeout, progress, echo)
        if stopped != "total reached":
            say(f"screening stopped: {stopped}")
        if config.confirm_seeds > 0:
            _confirm(search)
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
