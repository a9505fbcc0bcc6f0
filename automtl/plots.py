"""Pictures of a study: the optimization history and the Pareto front, as PNG files.

Drawn with Optuna's matplotlib visualizations (``optuna.visualization.matplotlib``), then
labelled with automtl's objective names and, on the Pareto front, each member's trial number
(the number ``automtl export --trial N`` takes). Needs matplotlib: ``pip install 'automtl[plot]'``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from automtl.search import is_multi_objective, objective_names, pareto_front

__all__ = ["plot_history", "plot_pareto", "plot_study"]


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("drawing needs matplotlib: pip install 'automtl[plot]'") from exc
    return plt


def _save(ax, path: str | os.PathLike[str], title: str) -> Path:  # type: ignore[no-untyped-def]
    plt = _pyplot()
    ax.set_title(title)
    fig = ax.get_figure()
    fig.set_size_inches(8, 5.5)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_history(study: optuna.Study, path: str | os.PathLike[str]) -> Path:
    """The first objective of every complete trial against the trial number, with the best so far.

    In a multi-objective study the first objective is the quality objective (Δm by default).

    Raises:
        ValueError: The study has no complete trial.
        ImportError: matplotlib is not installed.
    """
    _pyplot()
    names = objective_names(study)
    if not study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]):
        raise ValueError(f"study '{study.study_name}' has no complete trial to draw")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        from optuna.visualization.matplotlib import plot_optimization_history

        if is_multi_objective(study):
            ax = plot_optimization_history(study, target=lambda t: t.values[0], target_name=f"{names[0]} (validation)")
        else:
            ax = plot_optimization_history(study, target_name=f"{names[0]} (validation)")
    pruned = len(study.get_trials(deepcopy=False, states=[TrialState.PRUNED]))
    title = f"{study.study_name}: {names[0]} per trial (higher is better; {pruned} pruned trial(s) not drawn)"
    return _save(ax, path, title)


def _cost_axis(names: list[str]) -> int:
    return len(names) - 1


def plot_pareto(study: optuna.Study, path: str | os.PathLike[str]) -> Path:
    """The first quality objective against the last objective (a cost, e.g. ``n_params``) of
    every complete trial; Pareto-front members highlighted and labelled ``#N`` by trial number.

    Raises:
        ValueError: The study is single-objective, or has no complete trial.
        ImportError: matplotlib is not installed.
    """
    _pyplot()
    if not is_multi_objective(study):
        raise ValueError(f"study '{study.study_name}' has one objective; a Pareto front needs two or more")
    names = objective_names(study)
    front = pareto_front(study)
    if not front:
        raise ValueError(f"study '{study.study_name}' has no complete feasible trial to draw")
    x_index = _cost_axis(names)

    def targets(t: FrozenTrial) -> tuple[float, float]:
        return (t.values[x_index], t.values[0])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        from optuna.visualization.matplotlib import plot_pareto_front

        ax = plot_pareto_front(study, targets=targets, target_names=[f"{names[x_index]} (lower is better)", f"{names[0]} (higher is better)"])
    if names[x_index] in ("n_params", "flops"):
        ax.set_xscale("log")
    points = sorted(targets(t) for t in front)
    ax.step([p[0] for p in points], [p[1] for p in points], where="post", color="tab:red", alpha=0.5, linewidth=1)
    for t in front:
        x, y = targets(t)
        ax.annotate(f"#{t.number}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color="tab:red")
    title = f"{study.study_name}: Pareto front, {len(front)} of {len(study.trials)} trials (validation)"
    return _save(ax, path, title)


def plot_study(study: optuna.Study, out_dir: str | os.PathLike[str]) -> list[Path]:
    """``history.png`` and, for a multi-objective study, ``pareto.png`` in ``out_dir``."""
    out = Path(out_dir)
    paths = [plot_history(study, out / "history.png")]
    if is_multi_objective(study):
        paths.append(plot_pareto(study, out / "pareto.png"))
    return paths
