"""Plain-text views of studies, exports and registries (what the CLI prints)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from automtl.metrics import METRICS
from automtl.tree import BranchTree

__all__ = ["format_export", "format_number", "format_pareto", "format_registry", "format_study", "format_summary", "format_table"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned text table; floats with 4 decimals, None and NaN as ``-``."""

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in text]
    return "\n".join(lines)


def format_number(v: float) -> str:
    """A count (parameters, FLOPs) in full; any other value with 4 significant digits."""
    return str(int(v)) if float(v).is_integer() and abs(v) >= 100 else f"{v:.4g}"


def _values(t: FrozenTrial, n: int) -> list[float | int | None]:
    """A trial's objective values; counts (parameters, FLOPs) as integers."""
    if t.values is None:
        return [None] * n
    return [int(v) if float(v).is_integer() and abs(v) >= 100 else v for v in t.values]


def format_study(study: optuna.Study, top: int = 0) -> str:
    """Every trial (or the ``top`` best complete ones) with its objective values and per-task
    validation metrics, then the best architecture drawn as a tree; for a multi-objective
    study, the Pareto front (``*`` in the ``front`` column) and each member's tree."""
    from automtl.search import is_multi_objective, objective_names, pareto_front

    names = objective_names(study)
    multi = is_multi_objective(study)
    front = pareto_front(study)
    on_front = {t.number for t in front}
    trials = study.get_trials(deepcopy=False)
    if top:
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
        if multi:
            trials = [t for t in front][:top]
        else:
            trials = sorted(done, key=lambda t: -float(t.value))[:top]  # type: ignore[arg-type]
    task_names: list[str] = []
    for t in trials:
        for name in t.user_attrs.get("val_metrics", {}):
            if name not in task_names:
                task_names.append(name)
    params_column = "n_params" not in names  # else it is already an objective column
    headers = [
        "trial",
        "state",
        *names,
        *(["front"] if multi else []),
        "balancer",
        *(["params"] if params_column else []),
        "tree",
        *task_names,
        "note",
    ]
    rows = []
    for t in trials:
        vm = t.user_attrs.get("val_metrics", {})
        note = t.user_attrs.get("fail_reason", "") or t.user_attrs.get("over_budget", "")
        rows.append(
            [
                t.number,
                t.state.name.lower(),
                *_values(t, len(names)),
                *(["*" if t.number in on_front else ""] if multi else []),
                t.params.get("balancer", "-"),
                *([t.user_attrs.get("n_params")] if params_column else []),
                t.user_attrs.get("tree", "-"),
                *(vm.get(n) for n in task_names),
                note,
            ]
        )
    objective = study.user_attrs.get("objective", "mean_score: higher is better")
    out = [
        f"study '{study.study_name}': {len(study.trials)} trials",
        f"objectives: {objective}\nper-task columns: each task's validation metric; "
        "tree: task indices per block, '/' between branches",
        format_table(headers, rows),
    ]
    if not front:
        out.append("no complete (feasible) trial yet")
        return "\n\n".join(out)
    tree = BranchTree.from_dict(front[0].user_attrs["candidate"]["tree"])
    out.append("task indices: " + "  ".join(f"{i}={name}" for i, name in enumerate(tree.tasks)))
    if multi:
        out.append(format_pareto(study, front))
        return "\n\n".join(out)
    best = front[0]
    out.append(
        f"best: trial {best.number}, {names[0]} {best.value:.4f}, balancer {best.params.get('balancer')}, "
        f"{best.user_attrs.get('n_params')} parameters\n{tree.render()}"
    )
    return "\n\n".join(out)


def format_pareto(study: optuna.Study, front: Sequence[FrozenTrial]) -> str:
    """The Pareto front of a multi-objective study: each member's values, balancer and tree."""
    from automtl.search import objective_names

    names = objective_names(study)
    rows = [[t.number, *_values(t, len(names)), t.params.get("balancer", "-"), t.user_attrs.get("tree", "-")] for t in front]
    lines = [
        f"Pareto front: {len(front)} of {len(study.trials)} trials (feasible, complete, not dominated); "
        f"export one with 'automtl export --trial N'",
        format_table(["trial", *names, "balancer", "tree"], rows),
    ]
    for t in front:
        tree = BranchTree.from_dict(t.user_attrs["candidate"]["tree"])
        values = ", ".join(f"{n} {format_number(v)}" for n, v in zip(names, t.values))
        lines.append(f"trial {t.number} ({values}):\n{tree.render()}")
    return "\n\n".join(lines)


def format_summary(study: optuna.Study) -> str:
    """One paragraph after a search: counts per state and the best trial (or the Pareto front)."""
    from automtl.search import is_multi_objective, objective_names, pareto_front

    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    text = f"study '{study.study_name}': " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    front = pareto_front(study)
    if not front:
        return text + "; no complete (feasible) trial"
    names = objective_names(study)
    if "delta_m" in names:
        from automtl.metrics import DELTA_M_CONVENTION

        text += f"\n{DELTA_M_CONVENTION}"
    if is_multi_objective(study):
        members = "; ".join(
            f"trial {t.number} (" + ", ".join(f"{n} {format_number(v)}" for n, v in zip(names, t.values)) + ")" for t in front
        )
        return text + f"\nPareto front ({len(front)}): {members}\n'automtl show' draws each member's tree"
    best = front[0]
    return (
        text
        + f"\nbest: trial {best.number}, validation {names[0]} {best.value:.4f} (higher is better), "
        + f"balancer {best.params.get('balancer')}, tree [{best.user_attrs.get('tree')}]"
    )


def format_export(metrics: Mapping[str, Any], out_dir: str) -> str:
    """What ``export`` wrote, with validation and test metrics side by side."""
    tasks = list(metrics["val"])
    rows = [
        [t, metrics["metric_of_task"][t]["metric"], metrics["metric_of_task"][t]["direction"], metrics["val"][t], metrics["test"][t]]
        for t in tasks
    ]
    rows.append(["(score)", "mean_score", "maximize", metrics["val_score"], metrics["test_score"]])
    if "val_delta_m" in metrics:
        rows.append(["(delta_m %)", "Δm %", "maximize", metrics["val_delta_m"], metrics["test_delta_m"]])
    front = " (on the Pareto front)" if metrics.get("multi_objective") and metrics.get("pareto_front") else ""
    text = (
        f"exported trial {metrics['trial']}{front} of study '{metrics['study']}' to {out_dir} "
        f"(selected on validation; test read once, for this report)\n"
        + format_table(["task", "metric", "direction", "val", "test"], rows)
    )
    if "val_delta_m" in metrics:
        text += f"\n{metrics['delta_m_convention']}"
    retrain = metrics.get("retrain")
    if retrain:
        keys = [*tasks, "(mean_score)", *(["(delta_m %)"] if "(delta_m %)" in retrain["test"] else [])]
        rrows = [
            [k, *(f"{retrain[s][k]['mean']:.4f} ± {retrain[s][k]['std']:.4f}" for s in ("val", "test"))] for k in keys
        ]
        text += (
            f"\n\nretrained on the train split with {retrain['seeds']} seed(s) (none chosen; mean ± std):\n"
            + format_table(["task", "val", "test"], rrows)
        )
    return text


def format_fixed(result: Any, tasks: Sequence[Any], baseline: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """``automtl train``'s table: each task's validation and test metric, mean ± std over seeds."""
    from automtl.metrics import DELTA_M_CONVENTION

    summary = result.summary(tasks, baseline)
    rows = []
    for key in [*(t.name for t in tasks), "(mean_score)", *(["(delta_m %)"] if baseline else [])]:
        task = next((t for t in tasks if t.name == key), None)
        metric = task.metric if task else ("mean_score" if key == "(mean_score)" else "Δm %")
        direction = METRICS.get(task.metric).direction if task else "maximize"
        v, te = summary["val"][key], summary["test"][key]
        rows.append([key, metric, direction, f"{v['mean']:.4f} ± {v['std']:.4f}", f"{te['mean']:.4f} ± {te['std']:.4f}"])
    head = (
        f"arch [{result.tree.compact()}], balancer {result.balancer}, {summary['n_params']} parameters, "
        f"{summary['seeds']} seed(s); mean ± std over seeds"
    )
    foot = f"\n{DELTA_M_CONVENTION}" if baseline else ""
    return head + "\n" + format_table(["task", "metric", "direction", "val", "test"], rows) + foot


def format_registry(what: str) -> str:
    """The registered names of ``balancers``, ``backbones``, ``datasets``, ``metrics`` or ``losses``.

    Raises:
        ValueError: For any other ``what``.
    """
    from automtl.balance import BALANCERS
    from automtl.backbones import BACKBONES
    from automtl.data import DATASETS
    from automtl.losses import LOSSES
    from automtl.space import hparam_table

    if what == "balancers":
        from automtl.balance import describe_balancers

        rows = []
        for entry in describe_balancers():
            cls = BALANCERS.get(entry["name"])
            note = f"missing {entry['missing']}: {entry['install']}" if entry["missing"] else ""
            rows.append([entry["name"], entry["family"], hparam_table(cls.hyperparameters), entry["paper"], note])
        return format_table(
            ["balancer", "family", "hyperparameters (default, search range)", "source", "not installed"], rows
        )
    if what == "backbones":
        rows = [[n, _first_line(BACKBONES.get(n).__doc__)] for n in BACKBONES]
        return format_table(["backbone", "description"], rows)
    if what == "datasets":
        rows = [[n, _first_line(DATASETS.get(n).__doc__)] for n in DATASETS]
        return format_table(["data set", "description"], rows)
    if what == "metrics":
        rows = [[n, METRICS.get(n).direction, METRICS.get(n).unit] for n in METRICS]
        return format_table(["metric", "direction", "unit"], rows)
    if what == "losses":
        rows = [[n, _first_line(LOSSES.get(n).__doc__)] for n in LOSSES]
        return format_table(["loss", "description"], rows)
    raise ValueError(f"cannot list '{what}'")


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc else ""
