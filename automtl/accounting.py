"""What a search cost, in training-run equivalents (TRE) and seconds.

**The rule.** One TRE is the compute of one training of hard parameter sharing with the
config's epochs. A run that trained ``e`` of ``E`` epochs a network of ``f`` forward FLOPs per
sample counts ``(e / E) · (f / f_hps)`` TRE, ``f_hps`` being hard sharing's FLOPs: every epoch
passes the same training samples, and a backward pass costs a fixed multiple of its forward
pass. A candidate rejected over budget, or answered from the study, trained nothing: 0 TRE.
Balancers that add work per step (gradient aggregation) are not weighted up: TRE counts network
compute; the seconds show the rest.

Three stages are counted apart: **screening** (the obvious designs and the sampled trials; with the
``supernet`` strategy, the supernet's training and every proxy evaluation, counted by the same
rule: forward passes at a third of a training step's cost),
**baselines** (the single-task networks that choose the learning rates) and **confirmation**
(the retrained designs and the single-task networks' runs on the confirmation seeds, as the
confirmation stage's own line counts them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import optuna

from automtl.jobs import JobQueue
from automtl.study import TrialRecord, read_attr

__all__ = ["RULE", "StageCost", "cost_by_stage", "format_costs", "run_tre"]

RULE = (
    "1 TRE = one training of hard parameter sharing with the config's epochs; a run counts "
    "(epochs trained / epochs) x (its forward FLOPs / hard sharing's)"
)


def run_tre(epochs_trained: int, epochs: int, flops: float, hps_flops: float) -> float:
    """The training-run equivalents of one run (module docstring)."""
    if epochs_trained <= 0 or hps_flops <= 0:
        return 0.0
    return (epochs_trained / epochs) * (flops / hps_flops)


@dataclass
class StageCost:
    """One stage's cost.

    Attributes:
        stage: ``screening``, ``baselines`` or ``confirmation``.
        runs: Training runs (untrained trials excluded).
        tre: Training-run equivalents.
        seconds: Training wall time summed over its runs (s; per-epoch validation included).
    """

    stage: str
    runs: int = 0
    tre: float = 0.0
    seconds: float = 0.0

    def add(self, tre: float, seconds: float) -> None:
        self.runs += 1
        self.tre += tre
        self.seconds += seconds


def format_costs(stages: Iterable[StageCost], wall_seconds: float | None = None) -> str:
    """One line per stage and the total, then the rule."""
    stages = list(stages)
    parts = [f"{s.stage} {s.tre:.1f} TRE ({s.runs} runs, {s.seconds:.0f} s)" for s in stages]
    total_tre = sum(s.tre for s in stages)
    total_s = sum(s.seconds for s in stages)
    text = "cost: " + "; ".join(parts) + f"; total {total_tre:.1f} TRE, {total_s:.0f} s of training"
    if wall_seconds is not None:
        text += f"; wall time of this run {wall_seconds:.0f} s"
    return text + f"\n  ({RULE})"


def cost_by_stage(study: optuna.Study) -> list[StageCost]:
    """Screening, baselines and confirmation in training-run equivalents (:mod:`automtl.accounting`)."""
    config_epochs = int(read_attr(study, "config", {}).get("train", {}).get("epochs", 5))
    hps_flops = float(read_attr(study, "hps_flops", 0.0) or 0.0)
    screening, baselines, confirmation = StageCost("screening"), StageCost("baselines"), StageCost("confirmation")
    for t in study.get_trials(deepcopy=False):
        record = TrialRecord.of(t)
        if record.epochs_trained and record.flops:
            screening.add(run_tre(record.epochs_trained, config_epochs, record.flops, hps_flops), record.train_seconds or 0.0)
        elif record.proxy_tre:
            screening.tre += record.proxy_tre
    jobs = [t for t in JobQueue(study._storage, study.study_name).study.get_trials(deepcopy=False) if "result" in t.user_attrs]
    for t in jobs:
        result = t.user_attrs["result"]
        if t.user_attrs["job"]["key"].startswith("supernet"):
            screening.add(float(result["tre"]), float(result["seconds"]))
            continue
        if "flops" not in result:
            continue
        stage = baselines if t.user_attrs["job"]["key"].startswith("baseline-tune/") else confirmation
        stage.add(run_tre(int(result["epochs"]), config_epochs, float(result["flops"]), hps_flops), float(result["seconds"]))
    return [screening, baselines, confirmation]
