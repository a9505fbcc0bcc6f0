"""The screening stage: the obvious designs first, then sampled trials, to the study's exact total.

A sampled design that already has a run is trained once more as a declared extra seed of it
(``repeat_of``); one that has :data:`MAX_SCREEN_RUNS` runs is answered from the study with their
mean, without training, and does not count toward the total. Workers that sample one design at
the same moment agree through a line of tickets in the storage. A trial started after the total
was reached is a surplus trial: not trained, not counted (an enqueued design is handed back).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from automtl.baselines import (
    tuning_job_for,
)
from automtl.build import build_model
from automtl.context import POLL_SECONDS, SETUP_WAIT, SearchContext, wait_until
from automtl.cost import BUDGETS, measure_costs
from automtl.errors import NonFiniteLossError
from automtl.pruning import RankAgreementPruner
from automtl.runs import train_candidate, upload_weights
from automtl.space import Candidate
from automtl.study import (
    TrialRecord,
    active_runs,
    counted_before,
    counts_toward_total,
    finished_trials,
    read_attr,
    retry_trial,
    write_attr,
)
from automtl.train import EpochResult, seed_everything

__all__ = ["MAX_ANSWERED_STREAK", "MAX_SCREEN_RUNS", "Screen", "enqueue_first", "retry_later", "screen", "screening_trials"]

#: A design is trained at most this often in screening (once, and once as a declared extra seed).
MAX_SCREEN_RUNS = 2
#: Screening stops when the sampler proposes only finished designs this many times in a row.
MAX_ANSWERED_STREAK = 25


class _Surplus(Exception):
    """A trial started after the study's total was reached."""


# --------------------------------------------------------------------------------- screening
def enqueue_first(search: SearchContext, seeds: Sequence[dict[str, Any]]) -> None:
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
    if search.jobs.claim("obvious") or not wait_until(lambda: bool(read_attr(study, "obvious_enqueued")), SETUP_WAIT):
        enqueue()


def retry_later(study: optuna.Study, trial: optuna.Trial) -> None:
    """Enqueue a copy of an interrupted trial (at most :data:`MAX_RETRY` times), as the heartbeat
    does for a killed worker's trial."""
    retry_trial(study, next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number))


class Screen:
    """The objective of the screening trials (stage 3 of the module docstring)."""

    def __init__(self, search: SearchContext) -> None:
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
            retry_later(s.study, trial)
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


def screen(search: SearchContext, timeout: float | None, progress: bool, echo: Callable[[str], None] | None) -> str:
    """Run screening trials until the study's total is reached; returns why it stopped."""
    from automtl.report import trial_line

    s = search
    objective = Screen(s)
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


