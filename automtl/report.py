"""Plain-text views of studies, exports and registries (what the CLI prints)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from automtl.accounting import cost_by_stage, format_costs
from automtl.confirm import SINGLE_TASK, Confirmation
from automtl.metrics import DELTA_M_CONVENTION, METRICS, mean_std
from automtl.study import (
    TrialRecord,
    finished_trials,
    is_multi_objective,
    objective_names,
    pareto_front,
    read_attr,
)
from automtl.tree import BranchTree

__all__ = [
    "format_baselines",
    "format_confirmation",
    "format_cost",
    "format_export",
    "format_number",
    "format_pareto",
    "format_registry",
    "format_study",
    "format_summary",
    "format_table",
    "trial_line",
]


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


def _signed(v: float, digits: int) -> str:
    """``v`` with a sign and ``digits`` decimals; a value that rounds to zero prints ``+0.00``, never ``-0.00``."""
    return f"{round(v, digits) + 0.0:+.{digits}f}"


def format_number(v: float) -> str:
    """A count (parameters, FLOPs) in full; any other value with 4 significant digits."""
    return str(int(v)) if float(v).is_integer() and abs(v) >= 100 else f"{v:.4g}"


def _values(t: FrozenTrial, n: int) -> list[float | int | None]:
    """A trial's objective values; counts (parameters, FLOPs) as integers."""
    if t.values is None:
        return [None] * n
    return [int(v) if float(v).is_integer() and abs(v) >= 100 else v for v in t.values]


def _note(t: FrozenTrial) -> str:
    """Why a trial is not a plain complete run: its stage, repeat, answer, failure or pruning."""
    r = TrialRecord.of(t)
    parts = []
    if r.stage == "obvious":
        parts.append(f"obvious: {r.label}")
    if r.proxy:
        parts.append("proxy: scored with the supernet's weights, not trained")
    if r.answered_from == "baselines":
        parts.append("the baselines' tuning run of this design and rate: answered with it, not trained again")
    elif r.answered_from:
        parts.append(f"same design as trial {r.repeat_of}: answered with its runs' mean, not trained")
    elif r.repeat_of is not None:
        parts.append(f"extra seed of trial {r.repeat_of}'s design")
    for reason in (r.fail_reason, r.over_budget, r.pruned_reason, r.interrupted):
        if reason:
            parts.append(reason)
    if r.surplus:
        parts.append("surplus: started after the total was reached, not trained")
    return "; ".join(parts)


def trial_line(trial: FrozenTrial, names: Sequence[str]) -> str:
    """One line for a finished trial: state, objective values, balancer, tree, per-task metrics, note."""
    r = TrialRecord.of(trial)
    per_task = " ".join(f"{t}={v:.3f}" for t, v in r.val_metrics.items())
    value = "-" if trial.values is None else " ".join(f"{n}={format_number(v)}" for n, v in zip(names, trial.values))
    note = _note(trial)
    return (
        f"trial {trial.number:>3} {trial.state.name.lower():>8} {value} "
        f"balancer={trial.params.get('balancer', '?')} tree=[{r.tree or '?'}] "
        f"{per_task}{'  ' + note if note else ''}"
    )


def _task_header(study: optuna.Study) -> tuple[list[str], list[str]]:
    """Task names and their column headers, ``"task (metric)"``."""
    metric_of = _metric_of_tasks(study)
    names = list(metric_of)
    if not names:
        for t in study.get_trials(deepcopy=False):
            if TrialRecord.of(t).val_metrics:
                names = list(TrialRecord.of(t).val_metrics)
                break
    return names, [f"{n} ({metric_of[n]})" if n in metric_of else n for n in names]


def _metric_of_tasks(study: optuna.Study) -> dict[str, str]:
    return dict(read_attr(study, "task_metrics") or {})


def format_baselines(study: optuna.Study) -> str:
    """The tuned single-task baselines: each task's metric, chosen learning rate, validation
    metric, and the trivial predictor's metric beside it."""
    raw = read_attr(study, "baselines")
    if raw is None:
        return "baselines: not trained yet"
    metric_of = _metric_of_tasks(study)
    rows = []
    for task, value in raw["val"].items():
        metric = metric_of.get(task, "")
        direction = METRICS.get(metric).direction if metric in METRICS else ""
        rows.append([task, metric, direction, f"{raw['lr_by_task'][task]:g}", value, raw.get("trivial", {}).get(task)])
    grid = ", ".join(f"{lr:g}" for lr in raw["grid"])
    return (
        f"single-task baselines (learning rate per task chosen on validation among {grid}; "
        "trivial = a constant predictor fitted on the training labels):\n"
        + format_table(["task", "metric", "direction", "lr", "val", "trivial val"], rows)
    )


def format_confirmation(study: optuna.Study) -> str:
    """The confirmation table (each design's confirmed objective over the fresh seeds, its
    paired difference to the single-task networks) and the verdict."""
    raw = read_attr(study, "confirmation")
    if raw is None:
        return "confirmation: not run (the answer below is a screening value from one or two seeds; it may not hold up)"
    conf = Confirmation.from_dict(raw)
    single = next((d for d in conf.designs if d.key == SINGLE_TASK), None)
    rows = []
    for d in sorted(conf.designs, key=lambda d: -d.mean):
        paired = ""
        if single is not None and d.key != SINGLE_TASK:
            diffs = [a - b for a, b in zip(d.values, single.values)]
            agree = sum(x > 0 for x in diffs)
            mean, spread = mean_std(diffs)
            paired = f"{_signed(mean, 3)} ± {spread:.3f} ({agree}/{len(diffs)})"
        screen = "-" if d.screen_mean is None else f"{_signed(d.screen_mean, 3)} ({d.screen_runs})"
        rows.append(
            [
                ("* " if d.key == conf.answer else "") + d.label,
                d.tree,
                d.balancer,
                d.n_params,
                screen,
                f"{_signed(d.mean, 3)} ± {d.std:.3f}",
                " ".join(_signed(v, 2) for v in d.values),
                paired,
            ]
        )
    proxy = (read_attr(study, "config") or {}).get("search", {}).get("strategy") == "supernet"
    headers = [
        "design",
        "tree",
        "balancer",
        "params",
        f"proxy {conf.unit} (supernet)" if proxy else f"screening {conf.unit} (runs)",
        f"confirmed {conf.unit} mean ± std",
        "per seed",
        "minus single-task, paired (seeds better)",
    ]
    return (
        f"confirmation on validation: {len(conf.seeds)} fresh seeds per design, the same seeds for every design "
        f"({conf.objective}{', against the mean of the single-task runs' if conf.objective == 'delta_m' else ''}; "
        "higher is better; * = the answer):\n" + format_table(headers, rows) + "\n\nverdict:\n" + conf.verdict
    )


def format_cost(study: optuna.Study, wall_seconds: float | None = None) -> str:
    """The search's cost by stage in training-run equivalents (:mod:`automtl.accounting`)."""
    return format_costs(cost_by_stage(study), wall_seconds)


def format_study(study: optuna.Study, top: int = 0) -> str:
    """Every trial (or the ``top`` best complete ones) with its objective values, per-task
    validation metrics (each column names its metric) and a note (stage, extra seed, answer,
    failure, pruning); the baselines beside the trivial predictor; for a multi-objective study
    the screening's Pareto front; the confirmation, the answer's tree, the verdict and the cost."""
    names = objective_names(study)
    multi = is_multi_objective(study)
    front = pareto_front(study)
    on_front = {t.number for t in front}
    trials = [t for t in study.get_trials(deepcopy=False) if not TrialRecord.of(t).surplus]
    if top:
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
        trials = list(front)[:top] if multi else sorted(done, key=lambda t: -float(t.values[0]))[:top]
    task_names, task_headers = _task_header(study)
    headers = ["trial", "state", *names, *(["front"] if multi else []), "balancer", "params", "tree", *task_headers, "note"]
    rows = []
    for t in trials:
        r = TrialRecord.of(t)
        rows.append(
            [
                t.number,
                t.state.name.lower(),
                *_values(t, len(names)),
                *(["*" if t.number in on_front else ""] if multi else []),
                t.params.get("balancer", "-"),
                r.n_params,
                r.tree or "-",
                *(r.val_metrics.get(n) for n in task_names),
                _note(t),
            ]
        )
    objective = study.user_attrs.get("objective", "")
    counted = len(finished_trials(study))
    out = [
        f"study '{study.study_name}': {counted} screening trial(s) counted, {len(study.trials)} in the study",
        (f"objectives: {objective}\nper-task columns: each task's validation metric; "
        "tree: task indices per block, '/' between branches"),
        format_baselines(study),
        format_table(headers, rows),
    ]
    if not front:
        out.append("no complete (feasible) trial yet")
        return "\n\n".join(out)
    tree = BranchTree.from_dict(TrialRecord.of(front[0]).candidate["tree"])  # type: ignore[index]
    out.append("task indices: " + "  ".join(f"{i}={name}" for i, name in enumerate(tree.tasks)))
    if multi:
        out.append(format_pareto(study, front))
    out.append(format_confirmation(study))
    answer = _answer_tree(study)
    if answer is not None:
        out.append(answer)
    out.append(format_cost(study))
    return "\n\n".join(out)


def _answer_tree(study: optuna.Study) -> str | None:
    raw = read_attr(study, "confirmation")
    if raw is None:
        return None
    best = Confirmation.from_dict(raw).best
    if best.candidate is None:
        return None
    tree = BranchTree.from_dict(best.candidate["tree"])
    return f"answer: {best.label}, balancer {best.balancer}, {best.n_params} parameters\n{tree.render()}"


def format_pareto(study: optuna.Study, front: Sequence[FrozenTrial]) -> str:
    """The screening's Pareto front of a multi-objective study: each member's values, balancer and tree."""
    names = objective_names(study)
    rows = [[t.number, *_values(t, len(names)), t.params.get("balancer", "-"), TrialRecord.of(t).tree or "-"] for t in front]
    lines = [
        (f"Pareto front of the screening: {len(front)} of {len(study.trials)} trials (feasible, complete, not dominated); "
        f"export one with 'automtl export --trial N'"),
        format_table(["trial", *names, "balancer", "tree"], rows),
    ]
    for t in front:
        tree = BranchTree.from_dict(TrialRecord.of(t).candidate["tree"])  # type: ignore[index]
        values = ", ".join(f"{n} {format_number(v)}" for n, v in zip(names, t.values))
        lines.append(f"trial {t.number} ({values}):\n{tree.render()}")
    return "\n\n".join(lines)


def format_summary(study: optuna.Study, wall_seconds: float | None = None) -> str:
    """What ``automtl search`` prints at its end: counts, the confirmation and the verdict, the cost."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    text = f"study '{study.study_name}': " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    text += f"; {len(finished_trials(study))} counted toward the total"
    names = objective_names(study)
    if "delta_m" in names:
        text += f"\n{DELTA_M_CONVENTION}"
    front = pareto_front(study)
    if not front:
        return text + "\nno complete (feasible) trial"
    parts = [text]
    if is_multi_objective(study):
        members = "; ".join(
            f"trial {t.number} (" + ", ".join(f"{n} {format_number(v)}" for n, v in zip(names, t.values)) + ")" for t in front
        )
        parts.append(f"Pareto front of the screening ({len(front)}): {members}")
    else:
        best = front[0]
        parts.append(
            f"best screening trial: {best.number}, validation {names[0]} {best.values[0]:.4f} (one seed), "
            f"balancer {best.params.get('balancer')}, tree [{TrialRecord.of(best).tree}]"
        )
    parts.append(format_cost(study, wall_seconds))
    parts.append(format_confirmation(study))
    return "\n\n".join(parts)


def format_export(metrics: Mapping[str, Any], out_dir: str) -> str:
    """What ``export`` wrote, with validation and test metrics side by side, then the verdict."""
    tasks = list(metrics["val"])
    rows = [
        [t, metrics["metric_of_task"][t]["metric"], metrics["metric_of_task"][t]["direction"], metrics["val"][t], metrics["test"][t]]
        for t in tasks
    ]
    rows.append(["(score)", "mean_score", "maximize", metrics["val_score"], metrics["test_score"]])
    if "val_delta_m" in metrics:
        rows.append(["(delta_m %)", "Δm %", "maximize", metrics["val_delta_m"], metrics["test_delta_m"]])
    front = " (on the Pareto front of the screening)" if metrics.get("multi_objective") and metrics.get("pareto_front") else ""
    text = (
        f"exported {metrics['design']}{front} of study '{metrics['study']}' to {out_dir}: the weights of {metrics['weights_from']} "
        f"(selected on validation; test read once, for this report)\n"
        + format_table(["task", "metric", "direction", "val", "test"], rows)
    )
    if "val_delta_m" in metrics:
        text += f"\n{metrics['delta_m_convention']}; B: {metrics['baseline_from']}"
    for block, title in (("confirmed", "confirmation runs"), ("retrain", "retrained on the train split")):
        summary = metrics.get(block)
        if not summary:
            continue
        keys = [*tasks, "(mean_score)", *(["(delta_m %)"] if "(delta_m %)" in summary["test"] else [])]
        rrows = [[k, *(_pm4(summary[s][k]) for s in ("val", "test"))] for k in keys]
        text += f"\n\n{title}, {summary['seeds']} seed(s) (every seed reported, none chosen; mean ± std):\n"
        text += format_table(["task", "val", "test"], rrows)
    if metrics.get("verdict"):
        text += f"\n\nverdict (confirmation on validation):\n{metrics['verdict']}"
    return text


def _pm4(v: Mapping[str, float]) -> str:
    """``mean ± std`` with 4 decimals; a mean that rounds to zero prints as 0 (never ``-0.0000``)."""
    mean = v["mean"] + 0.0 if round(v["mean"], 4) != 0 else 0.0
    return f"{mean:.4f} ± {v['std']:.4f}"


def format_fixed(
    result: Any,
    tasks: Sequence[Any],
    baseline: Mapping[str, Mapping[str, float]] | None = None,
    single: Sequence[Mapping[str, Mapping[str, float]]] | None = None,
) -> str:
    """``automtl train``'s table: each task's validation and test metric, mean ± std over seeds;
    with ``baseline`` (the single-task networks' mean) Δm, and with ``single`` (their per-seed
    runs, the same seeds) the paired difference of Δm to them, seed by seed."""
    from automtl.metrics import DELTA_M_CONVENTION, delta_m

    summary = result.summary(tasks, baseline)
    rows = []
    for key in [*(t.name for t in tasks), "(mean_score)", *(["(delta_m %)"] if baseline else [])]:
        task = next((t for t in tasks if t.name == key), None)
        metric = task.metric if task else ("mean_score" if key == "(mean_score)" else "Δm %")
        direction = METRICS.get(task.metric).direction if task else "maximize"
        v, te = summary["val"][key], summary["test"][key]
        rows.append([key, metric, direction, _pm4(v), _pm4(te)])
    head = (
        f"arch [{result.tree.compact()}], balancer {result.balancer}, {summary['n_params']} parameters, "
        f"{summary['seeds']} seed(s); mean ± std over seeds"
    )
    foot = f"\n{DELTA_M_CONVENTION}; B = the mean of the single-task networks over the same seeds" if baseline else ""
    if baseline and single:
        for split in ("val", "test"):
            diffs = [delta_m(r, baseline[split], tasks) - delta_m(s[split], baseline[split], tasks)
                     for r, s in zip(getattr(result, split), single)]  # fmt: skip
            mean, std = mean_std(diffs)
            better = sum(d > 0 for d in diffs)
            foot += f"\n{split}: this design minus single-task networks, paired by seed: {_signed(mean, 2)} ± {std:.2f} Δm ({better}/{len(diffs)} seeds better)"
    return head + "\n" + format_table(["task", "metric", "direction", "val", "test"], rows) + foot


def format_registry(what: str) -> str:
    """The registered names of ``balancers``, ``backbones``, ``datasets``, ``metrics`` or ``losses``.

    Raises:
        ValueError: For any other ``what``.
    """
    from automtl.backbones import BACKBONES
    from automtl.balance import BALANCERS
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
