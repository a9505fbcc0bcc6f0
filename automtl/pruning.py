"""Early stopping of screening trials only where early and final ranks agree.

A pruner that stops a trial after epoch ``e`` bets that its rank at ``e`` is its rank at the end.
On a few noisy epochs that bet loses (the median rule stopped 4 to 15 of 20 quickstart trials
on a 3-epoch signal). :class:`RankAgreementPruner` (``search.pruner: auto``, the default)
therefore checks the bet inside the study before it makes it:

1. Never before ``min_trials`` trials have completed every epoch, never on the last epoch,
   and never when training has fewer than ``min_epochs`` epochs.
2. At epoch ``e``, the Spearman rank correlation between the completed trials' objective
   at ``e`` and at their last epoch must be at least ``min_agreement``.
3. Then a trial whose objective at ``e`` is below the median of the completed trials' at ``e``
   is pruned (the median rule, Optuna's ``MedianPruner``, applied only where it is justified).

The agreement is measured on completed trials, which the rule itself selects; it is a
conservative guard, not an unbiased estimate. :meth:`RankAgreementPruner.explain` gives the
numbers behind a decision, recorded as the trial's ``pruned_reason``. Single-objective studies
only (Optuna has no pruning for several objectives).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

__all__ = ["RankAgreementPruner", "spearman"]


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson on average ranks; NaN when a side is constant)."""
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else float("nan")


class RankAgreementPruner(BasePruner):
    """The median rule at an epoch only where early and final ranks agree (module docstring).

    Args:
        epochs: Epochs of a full training (the last reported step is ``epochs - 1``).
        min_trials: Completed trials needed before anything is pruned.
        min_agreement: Spearman correlation needed between epoch ``e`` and the final epoch.
        min_epochs: Trainings shorter than this are never pruned.
    """

    def __init__(self, epochs: int, *, min_trials: int = 8, min_agreement: float = 0.8, min_epochs: int = 4) -> None:
        self.epochs = epochs
        self.min_trials = min_trials
        self.min_agreement = min_agreement
        self.min_epochs = min_epochs
        self._why: dict[int, str] = {}

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or self.epochs < self.min_epochs or step >= self.epochs - 1:
            return False
        last = self.epochs - 1
        done = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if step in t.intermediate_values and last in t.intermediate_values
        ]
        if len(done) < self.min_trials:
            return False
        early = [t.intermediate_values[step] for t in done]
        final = [t.intermediate_values[last] for t in done]
        rho = spearman(early, final)
        if not rho >= self.min_agreement:
            return False
        median = statistics.median(early)
        value = trial.intermediate_values[step]
        if value < median:
            self._why[trial.number] = (
                f"pruned after epoch {step + 1} of {self.epochs}: objective {value:.4g} below the median "
                f"{median:.4g} of {len(done)} completed trials there, whose ranks at that epoch and at the end "
                f"agree (Spearman {rho:.2f} >= {self.min_agreement})"
            )
            return True
        return False

    def explain(self, number: int) -> str:
        """Why trial ``number`` was pruned ("" if this pruner did not prune it)."""
        return self._why.get(number, "")
