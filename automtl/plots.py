"""Pictures of a study: the optimization history and the Pareto front, as PNG files.

The Pareto front is drawn with Optuna's ``optuna.visualization.matplotlib.plot_pareto_front``,
then labelled with automtl's objective names and each member's trial number (the number
``automtl export --trial N`` takes); the history is a plain matplotlib scatter with the best
value so far, since Optuna's draws no best-so-far line for multi-objective studies. Needs matplotlib: ``pip install 'automtl[plot]'``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from automtl.study import is_multi_objective, objective_names, pareto_front

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
    ax.set_title(title, fontsize=11)
    fig = ax.get_figure()
    fig.set_size_inches(8, 5.5)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_history(study: optuna.Study, path: str | os.PathLike[str]) -> Path:
    """The first objective of every complete trial against the trial number, the best value so
    far as a step line, and pruned trials (at their last reported value) as crosses.

    In a multi-objective study the first objective is the quality objective (Δm by default).

    Raises:
        ValueError: The study has no complete trial.
        ImportError: matplotlib is not installed.
    """
    plt = _pyplot()
    names = objective_names(study)
    done = study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
    if not done:
        raise ValueError(f"study '{study.study_name}' has no complete trial to draw")
    pruned = [
        t for t in study.get_trials(deepcopy=False, states=[TrialState.PRUNED]) if t.user_attrs.get("history")
    ]
    _fig, ax = plt.subplots()
    ax.scatter([t.number for t in done], [t.values[0] for t in done], color="tab:blue", zorder=3, label="complete trial")
    if pruned:
        ax.scatter(
            [t.number for t in pruned],
            [t.user_attrs["history"][-1] for t in pruned],
            marker="x",
            color="tab:gray",
            zorder=3,
            label="pruned trial (last epoch reached)",
        )
    best, xs, ys = float("-inf"), [], []
    for t in sorted(done, key=lambda t: t.number):
        best = max(best, t.values[0])
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{names[0]} on validation (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    title = f"{study.study_name}: optimization history, {len(done)} complete of {len(study.trials)} trials"
    return _save(ax, path, title)


def _x_index(names: list[str], n_quality: int) -> int:
    """The horizontal axis: the first cost objective, else the second quality objective."""
    return n_quality if n_quality < len(names) else 1


def plot_pareto(study: optuna.Study, path: str | os.PathLike[str]) -> Path:
    """The first quality objective against the first cost objective (e.g. ``n_params``) of every
    complete feasible trial; Pareto-front members (over *all* objectives) in red, labelled ``#N``
    by trial number. With exactly two objectives the front is joined by a step line.

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
    n_quality = sum(d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions)
    x_index = _x_index(names, n_quality)
    x_better = "lower" if study.directions[x_index] == optuna.study.StudyDirection.MINIMIZE else "higher"

    def targets(t: FrozenTrial) -> tuple[float, float]:
        return (t.values[x_index], t.values[0])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        from optuna.visualization.matplotlib import plot_pareto_front

        ax = plot_pareto_front(
            study, targets=targets, target_names=[f"{names[x_index]} ({x_better} is better)", f"{names[0]} (higher is better)"]
        )
    if names[x_index] in ("n_params", "flops"):
        ax.set_xscale("log")
    if len(names) == 2:
        points = sorted(targets(t) for t in front)
        ax.step([p[0] for p in points], [p[1] for p in points], where="post", color="tab:red", alpha=0.5, linewidth=1)
    for t in front:
        x, y = targets(t)
        ax.annotate(f"#{t.number}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color="tab:red")
    handles, labels = ax.get_legend_handles_labels()
    rename = {"Trial": "other trial", "Best Trial": "Pareto front: export with --trial N"}
    ax.legend(handles, [rename.get(label, label) for label in labels], loc="best")
    title = f"{study.study_name}: Pareto front, {len(front)} of {len(study.trials)} trials (validation)"
    if len(names) > 2:
        title += f"\nfront over all {len(names)} objectives, drawn on two"
    return _save(ax, path, title)


def plot_study(study: optuna.Study, out_dir: str | os.PathLike[str]) -> list[Path]:
    """``history.png`` and, for a multi-objective study, ``pareto.png`` in ``out_dir``."""
    out = Path(out_dir)
    paths = [plot_history(study, out / "history.png")]
    if is_multi_objective(study):
        paths.append(plot_pareto(study, out / "pareto.png"))
    return paths
