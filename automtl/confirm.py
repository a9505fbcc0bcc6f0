"""The confirmation stage: which designs are retrained, how they compare, and the verdict.

After the screening trials, the ``top_k`` designs (by their mean screening objective) and the
best obvious hard-sharing design are trained again with ``seeds`` fresh seeds; the single-task
networks are the baselines' confirmation runs (:mod:`automtl.baselines`). Every design trains
confirmation seed ``i`` with the same seed, so the designs are compared **paired**: per seed,
the difference of two designs' objective, then the mean and standard deviation of those
differences over seeds and how many seeds agree.

* The answer is the design with the best mean confirmed objective. A search's answer can
  therefore never be worse on validation than the best obvious design measured the same way.
* "Beats X beyond seed noise" means the paired differences to X have a positive mean and a
  one-sided paired t-test rejects "no difference" at the 10 % level *family-wise*: the answer
  was chosen as the best of ``m`` designs on these very seeds, so each test runs at
  ``0.10 / m`` (Bonferroni), ``m`` the number of designs the answer was chosen from other than
  the one it is compared with (``t ≥ t_{1−0.10/m, n−1}``, ``t = mean / (std / √n)``). Without
  the correction the best of several equal designs "beats" a baseline far more often than 10 %
  of the time (measured: ``benchmarks/RESULTS.md``, "Does the answer hold up?"). With one seed
  nothing is beyond noise.
* The confirmed objective is the search objective computed on each run's validation metrics,
  with Δm against the mean of the baselines' confirmation runs (for ``per_task`` it is the
  mean direction-adjusted score). Test data are not read here.

This module knows nothing of torch or optuna.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from automtl.metrics import mean_std, nanmean

__all__ = [
    "SINGLE_TASK",
    "Comparison",
    "Confirmation",
    "ConfirmedDesign",
    "analyse",
    "compare",
    "pareto_indices",
    "recheck",
]

#: The key of the single-task networks (the baselines) among the confirmed designs.
SINGLE_TASK = "single-task"
#: Level of the one-sided paired t-test behind "beyond seed noise".
NOISE_LEVEL = 0.10


def _t_critical(n: int, level: float = NOISE_LEVEL) -> float:
    from scipy.stats import t

    return float(t.ppf(1.0 - level, n - 1))


@dataclass
class ConfirmedDesign:
    """One design's confirmation runs.

    Attributes:
        key: Its identity (:meth:`automtl.space.Candidate.key`; :data:`SINGLE_TASK` for the baselines).
        label: How it is named in the verdict (``"hard sharing + equal"``, ``"trial 7"``, ...).
        kind: ``"single-task"``, ``"obvious"`` or ``"sampled"``.
        trial: Its first screening trial (``None`` for the baselines).
        candidate: What was trained (:meth:`Candidate.to_dict`; its seed is the screening one).
        tree: Its tree's one-line shape.
        balancer: Its balancer.
        n_params: Parameter count.
        flops: Forward FLOPs of one sample.
        screen_mean: Mean screening objective over its screening runs (``None`` for the baselines).
        screen_runs: How many screening runs it had.
        values: The confirmed objective of each confirmation seed, in seed order.
        val_metrics: Each seed's per-task validation metrics.
        weights: Each seed's weights artifact id.
        costs: Its cost objectives (``search.cost``), when the study has them.
        over_budget: Which hard budget (``search.constraints``) it exceeds; such a design is
            compared but never the answer.
    """

    key: str
    label: str
    kind: str
    trial: int | None
    candidate: dict[str, Any] | None
    tree: str
    balancer: str
    n_params: int
    flops: float
    screen_mean: float | None
    screen_runs: int
    values: list[float] = field(default_factory=list)
    val_metrics: list[dict[str, float]] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)
    costs: dict[str, float] = field(default_factory=dict)
    over_budget: str = ""

    @property
    def mean(self) -> float:
        return mean_std(self.values)[0]

    @property
    def std(self) -> float:
        return mean_std(self.values)[1]


@dataclass
class Comparison:
    """A paired comparison of the answer with another design over the confirmation seeds.

    Attributes:
        other: The other design's key.
        label: The other design's label.
        diffs: Per seed, the answer's objective minus the other's (positive: the answer is better).
        beats: Whether the answer beats the other beyond seed noise (module docstring).
        worse: Whether the other beats the answer beyond seed noise.
        params_ratio: The answer's parameters over the other's.
        level: The one-sided level of each test (:data:`NOISE_LEVEL` over the Bonferroni factor).
    """

    other: str
    label: str
    diffs: list[float]
    beats: bool
    worse: bool
    params_ratio: float
    level: float = NOISE_LEVEL

    @property
    def mean(self) -> float:
        return mean_std(self.diffs)[0]

    @property
    def std(self) -> float:
        return mean_std(self.diffs)[1]

    @property
    def agree(self) -> int:
        """Seeds in which the answer is better."""
        return sum(d > 0 for d in self.diffs)


def _beyond_noise(diffs: Sequence[float], level: float = NOISE_LEVEL) -> bool:
    """Whether the mean of ``diffs`` is positive beyond noise: a one-sided paired t-test at
    ``level`` (module docstring)."""
    n = len(diffs)
    if n < 2:
        return False
    mean, std = mean_std(diffs)
    if not mean > 0:
        return False
    return std == 0.0 or mean / (std / math.sqrt(n)) >= _t_critical(n, level)


def compare(a: ConfirmedDesign, b: ConfirmedDesign, chosen_from: int = 1) -> Comparison:
    """``a`` against ``b``, paired by confirmation seed; ``a`` was chosen as the best of
    ``chosen_from`` designs other than ``b`` on these seeds (the Bonferroni factor)."""
    diffs = [x - y for x, y in zip(a.values, b.values)]
    level = NOISE_LEVEL / max(chosen_from, 1)
    return Comparison(
        b.key, b.label, diffs, _beyond_noise(diffs, level), _beyond_noise([-d for d in diffs], level),
        a.n_params / max(b.n_params, 1), level,
    )  # fmt: skip


@dataclass
class Confirmation:
    """The confirmation stage's outcome (recorded in the study as ``confirmation``).

    Attributes:
        objective: The confirmed objective's name (``delta_m``, ``mean_score``, ...).
        unit: How a difference of it is written (``"Δm"``, ``"mean score"``).
        seeds: The confirmation seeds.
        baseline_val: Each task's validation metric of the single-task networks, mean over seeds
            (the reference of the confirmed Δm).
        designs: Every confirmed design, the single-task networks included.
        answer: The key of the design with the best mean.
        comparisons: The answer against each other design.
        within_noise: Keys of the designs the answer does not beat beyond noise.
        smallest: The key of the design with the fewest parameters among the answer and
            ``within_noise``.
        verdict: The plain-language verdict.
    """

    objective: str
    unit: str
    seeds: list[int]
    baseline_val: dict[str, float]
    designs: list[ConfirmedDesign]
    answer: str
    comparisons: list[Comparison]
    within_noise: list[str]
    smallest: str
    verdict: str

    def design(self, key: str) -> ConfirmedDesign:
        return next(d for d in self.designs if d.key == key)

    @property
    def best(self) -> ConfirmedDesign:
        return self.design(self.answer)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Confirmation:
        designs = [ConfirmedDesign(**x) for x in d["designs"]]
        comparisons = [Comparison(**x) for x in d["comparisons"]]
        rest = {k: v for k, v in d.items() if k not in ("designs", "comparisons")}
        return cls(designs=designs, comparisons=comparisons, **rest)


def pareto_indices(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices of the points no other point dominates (each coordinate maximized or minimized)."""

    def dominates(p: Sequence[float], q: Sequence[float]) -> bool:
        at_least = all((a >= b) if up else (a <= b) for a, b, up in zip(p, q, maximize))
        better = any((a > b) if up else (a < b) for a, b, up in zip(p, q, maximize))
        return at_least and better

    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def _fmt(value: float, unit: str) -> str:
    digits = 2 if unit == "Δm" else 4
    return f"{round(value, digits) + 0.0:+.{digits}f} {unit}"


def _pm(c: Comparison, unit: str) -> str:
    spread = f"{c.std:.2f}" if unit == "Δm" else f"{c.std:.4f}"
    return f"{_fmt(c.mean, unit)} ± {spread} ({c.agree}/{len(c.diffs)} seeds better)"


def _percent(ratio: float) -> str:
    return f"{100 * ratio:.0f} %"


def _verdict(conf: Confirmation) -> str:
    best = conf.best
    unit = conf.unit
    by_key = {c.other: c for c in conf.comparisons}
    single = by_key.get(SINGLE_TASK)
    hps = [c for c in conf.comparisons if conf.design(c.other).label.startswith("hard sharing")]
    lines: list[str] = []
    n = len(conf.seeds)
    if best.key == SINGLE_TASK:
        others = sorted(conf.comparisons, key=lambda c: c.mean)  # answer minus other: the smallest gap first
        lines.append(f"no candidate beats single-task networks: they have the best mean over {n} fresh seeds.")
        if others:
            closest = others[0]
            lines.append(
                f"closest: {closest.label}, {_fmt(-closest.mean, unit)} against them "
                f"({n - closest.agree}/{n} seeds better, {_percent(1 / closest.params_ratio)} of their parameters)."
            )
    else:
        head = f"answer: {best.label} ({best.tree}, {best.balancer})"
        if single is not None and single.beats:
            head += f" beats single-task networks by {_pm(single, unit)} with {_percent(single.params_ratio)} of their parameters"
        elif single is not None:
            head += (
                f" is within seed noise of single-task networks ({_pm(single, unit)}, "
                f"{_percent(single.params_ratio)} of their parameters)"
            )
        lines.append(head + ".")
        for c in hps:
            if c.other == best.key:
                continue
            word = "beats" if c.beats else ("is beaten by" if c.worse else "is within seed noise of")
            lines.append(f"it {word} {c.label}: {_pm(c, unit)}.")
        if single is not None and not single.beats:
            lines.append("no candidate beats single-task networks beyond seed noise.")
    over = [d for d in conf.designs if d.over_budget]
    for d in over:
        lines.append(f"{d.label} exceed(s) a budget ({d.over_budget}): compared, never the answer.")
    if conf.smallest != best.key:
        small = conf.design(conf.smallest)
        lines.append(
            f"the smallest design within seed noise of the best is {small.label} ({small.tree}, {small.balancer}): "
            f"{small.n_params} parameters, {_percent(small.n_params / max(best.n_params, 1))} of the answer's; "
            f"mean {_fmt(small.mean, unit)}."
        )
    m = max((round(NOISE_LEVEL / c.level) for c in conf.comparisons), default=1)
    lines.append(
        f"({unit} differences are mean ± std over {n} paired confirmation seeds; 'beyond seed noise': one-sided "
        f"paired t-test at the {int(NOISE_LEVEL * 100)} % level, Bonferroni-corrected for choosing the answer "
        f"among {m} designs.)"
    )
    return "\n".join(lines)


def analyse(
    objective: str,
    unit: str,
    seeds: Sequence[int],
    baseline_runs: Sequence[Mapping[str, float]],
    designs: Sequence[ConfirmedDesign],
    single_task: ConfirmedDesign,
    quality: Callable[[Mapping[str, float], Mapping[str, float]], float],
) -> Confirmation:
    """Score every confirmation run, choose the answer, compare, and write the verdict.

    Args:
        objective: The confirmed objective's name.
        unit: How a difference of it is written.
        seeds: The confirmation seeds.
        baseline_runs: Each seed's validation metrics of the single-task networks.
        designs: The other confirmed designs with their ``val_metrics`` per seed (``values``
            are filled here).
        single_task: The single-task networks' entry (its ``val_metrics`` are ``baseline_runs``).
        quality: ``quality(val_metrics, baseline_val) -> float``, higher is better.

    Raises:
        ValueError: A design lacks a seed's run.
    """
    tasks = list(baseline_runs[0])
    baseline_val = {t: nanmean([r[t] for r in baseline_runs]) for t in tasks}
    everyone = [single_task, *designs]
    for d in everyone:
        if len(d.val_metrics) != len(seeds):
            raise ValueError(f"design {d.label} has {len(d.val_metrics)} confirmation runs for {len(seeds)} seeds")
        d.values = [quality(m, baseline_val) for m in d.val_metrics]
    return _decide(objective, unit, seeds, baseline_val, everyone)


def recheck(conf: Confirmation) -> Confirmation:
    """The same confirmation runs judged by this version's rules (the answer, the noise test and
    the verdict), e.g. for a study confirmed by an older automtl. The designs' confirmed values
    are reused as recorded."""
    return _decide(conf.objective, conf.unit, conf.seeds, conf.baseline_val, conf.designs)


def _decide(
    objective: str, unit: str, seeds: Sequence[int], baseline_val: dict[str, float], everyone: Sequence[ConfirmedDesign]
) -> Confirmation:
    """The answer (best mean), the paired comparisons and the verdict, from scored designs."""
    feasible = [d for d in everyone if not d.over_budget]
    best = max(feasible or everyone, key=lambda d: (d.mean, -d.n_params))
    pool = feasible or everyone  # the answer was chosen from these
    comparisons = [compare(best, d, len([e for e in pool if e.key != d.key])) for d in everyone if d.key != best.key]
    within = [c.other for c in comparisons if not c.beats]
    candidates = [best] + [d for d in feasible if d.key in within]
    smallest = min(candidates, key=lambda d: (d.n_params, -d.mean)).key
    conf = Confirmation(objective, unit, list(seeds), baseline_val, list(everyone), best.key, comparisons, within, smallest, "")
    conf.verdict = _verdict(conf)
    return conf
