"""Multi-objective search (quality against cost), hard budgets as Optuna trial constraints,
the Pareto front in ``show``, exporting any member, and retraining an export over seeds."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from automtl import report
from automtl.config import SearchConfig, parse_config
from automtl.confirm import Confirmation
from automtl.errors import ConfigError
from automtl.experiment import prepare
from automtl.export import export_trial
from automtl.metrics import delta_m
from automtl.search import run_search
from automtl.study import TrialRecord, is_multi_objective, objective_names, pareto_front
from tests.conftest import set_key, tiny_raw
from tests.test_cli import run

pytestmark = pytest.mark.slow  # real (tiny) searches

N_TRIALS = 6


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> tuple[SearchConfig, optuna.Study]:
    """Δm against parameter count, TPE with a median pruner configured (it must not be used)."""
    raw = tiny_raw(tmp_path_factory.mktemp("multi"))
    raw["search"].update(n_trials=N_TRIALS, objective="delta_m", cost=["n_params", "flops"], pruner="median", sampler="tpe")
    config = parse_config(raw, trust_code=True)
    return config, run_search(config, progress=False)


def _dominates(a: list[float], b: list[float], directions: list[str]) -> bool:
    better = [x >= y if d == "maximize" else x <= y for x, y, d in zip(a, b, directions)]
    strictly = [x > y if d == "maximize" else x < y for x, y, d in zip(a, b, directions)]
    return all(better) and any(strictly)


def test_objectives_are_quality_then_costs(multi: tuple[SearchConfig, optuna.Study]) -> None:
    _, study = multi
    assert is_multi_objective(study)
    assert objective_names(study) == ["delta_m", "n_params", "flops"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    done = study.get_trials(states=[TrialState.COMPLETE])
    # no trial pruned (Optuna has no pruning for multi-objective studies); one more than the total:
    # the single-task design answered from the baselines, which does not count
    assert len(done) == N_TRIALS + 1 and sum(bool(TrialRecord.of(t).answered_from) for t in done) == 1
    assert isinstance(study.pruner, optuna.pruners.NopPruner)
    for t in done:
        record = TrialRecord.of(t)
        assert t.values[1] == record.n_params == record.cost["n_params"]
        assert t.values[2] == record.cost["flops"] == record.flops and record.flops > 0
        assert len(record.history) == (0 if record.answered_from else 2)  # every epoch, first objective


def test_pareto_front_is_exactly_the_non_dominated_trials(multi: tuple[SearchConfig, optuna.Study]) -> None:
    _, study = multi
    directions = ["maximize", "minimize", "minimize"]
    done = study.get_trials(states=[TrialState.COMPLETE])
    expected = {t.number for t in done if not any(_dominates(o.values, t.values, directions) for o in done)}
    front = pareto_front(study)
    assert {t.number for t in front} == expected and front
    assert [t.values[-1] for t in front] == sorted(t.values[-1] for t in front)


def test_show_prints_the_front_and_every_members_tree(multi: tuple[SearchConfig, optuna.Study]) -> None:
    _, study = multi
    text = report.format_study(study)
    header = next(line for line in text.splitlines() if line.startswith("trial  state"))
    assert header.split()[:9] == ["trial", "state", "delta_m", "n_params", "flops", "front", "balancer", "params", "tree"]
    front = pareto_front(study)
    assert f"Pareto front of the screening: {len(front)} of {N_TRIALS + 1} trials" in text
    for t in front:
        assert f"trial {t.number} (delta_m " in text
    starred = [line for line in text.splitlines() if line.split()[:2][1:] == ["complete"] and " * " in line]
    assert len(starred) == len(front)
    summary = report.format_summary(study)
    assert f"Pareto front of the screening ({len(front)})" in summary and "verdict:" in summary


def test_export_any_front_member(multi: tuple[SearchConfig, optuna.Study], tmp_path: Path) -> None:
    config, study = multi
    front = pareto_front(study)
    member = front[0]
    metrics = export_trial(study, config.storage, tmp_path / "member", member.number, trust_code=True)
    assert metrics["trial"] == member.number and metrics["pareto_front"] and metrics["multi_objective"]
    assert metrics["search_values"] == dict(zip(["delta_m", "n_params", "flops"], member.values))
    # the search scored the trial against the tuned baselines; the export against the mean of the
    # single-task networks' confirmation runs (fresh seeds), on both splits, and says so
    tasks = prepare(config).data.tasks
    assert member.values[0] == pytest.approx(delta_m(metrics["val"], study.user_attrs["baselines"]["val"], tasks), abs=1e-9)
    assert metrics["val_delta_m"] == pytest.approx(delta_m(metrics["val"], metrics["baseline"]["val"], tasks), abs=1e-9)
    assert metrics["baseline_from"].startswith("single-task networks: mean of their 2 confirmation runs")
    on_disk = json.loads((tmp_path / "member" / "metrics.json").read_text())
    assert on_disk["selection"]["architecture"].startswith(f"trial {member.number}")
    # the default is the confirmed answer: the best mean quality over fresh seeds among the front's best
    conf = Confirmation.from_dict(study.user_attrs["confirmation"])
    assert export_trial(study, config.storage, tmp_path / "default", trust_code=True)["design"] == conf.best.label
    off = [t for t in study.get_trials(states=[TrialState.COMPLETE]) if t.number not in {f.number for f in front}]
    if off:
        assert not export_trial(study, config.storage, tmp_path / "off", off[0].number, trust_code=True)["pareto_front"]


def test_budget_rejects_candidates_before_training(tmp_path: Path) -> None:
    raw = tiny_raw(tmp_path)
    # the tiny trees have about 450 to 1600 parameters: a budget of 1000 rejects some of them
    raw["search"].update(n_trials=8, objective="mean_score", constraints={"max_params": 1000})
    study = run_search(parse_config(raw, trust_code=True), progress=False)
    records = {t.number: TrialRecord.of(t) for t in study.trials}
    rejected = [t for t in study.trials if records[t.number].over_budget]
    kept = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert rejected and kept, "the budget should reject some candidates and keep others"
    for t in rejected:
        r = records[t.number]
        assert t.state == TrialState.PRUNED and r.n_params is not None
        assert r.n_params > 1000 and "n_params" in (r.over_budget or "")
        assert t.constraints["max_params"] == pytest.approx(r.n_params / 1000 - 1) and t.constraints["max_params"] > 0
        assert not r.history and r.weights_artifact is None and r.epochs_trained == 0  # never trained
    for t in kept:
        assert (records[t.number].n_params or 0) <= 1000 and t.constraints["max_params"] <= 0
    assert records[study.best_trial.number].n_params <= 1000  # type: ignore[operator]
    # the single-task networks (1599 parameters) are compared in the confirmation, never the answer
    conf = Confirmation.from_dict(study.user_attrs["confirmation"])
    assert conf.design("single-task").over_budget.startswith("n_params 1599 > max_params 1000")
    assert conf.best.key != "single-task" and conf.best.n_params <= 1000
    assert "exceed(s) a budget (n_params 1599 > max_params 1000): compared, never the answer" in conf.verdict


def test_changed_cost_or_budget_is_refused_on_resume(multi: tuple[SearchConfig, optuna.Study]) -> None:
    config, _ = multi
    raw = dict(config.raw)
    for key, value in (("search.cost", ["n_params"]), ("search.constraints", {"max_params": 10_000})):
        changed = parse_config(set_key(json.loads(json.dumps(raw)), key, value), trust_code=True)
        with pytest.raises(ConfigError) as err:
            run_search(changed, progress=False)
        assert err.value.key == key


def test_per_task_objectives(make_config: Callable[..., SearchConfig]) -> None:
    study = run_search(make_config({"search.objective": "per_task", "search.n_trials": 2}), progress=False)
    assert objective_names(study) == ["val a", "val b", "val c", "val d"]
    for t in study.get_trials(states=[TrialState.COMPLETE]):
        metrics = TrialRecord.of(t).val_metrics
        assert t.values[0] == pytest.approx(metrics["a"])  # auroc, maximized


def test_weighted_objective(make_config: Callable[..., SearchConfig]) -> None:
    study = run_search(make_config({"search.objective": {"weighted": {"a": 3, "c": 1}}, "search.n_trials": 1}), progress=False)
    t = study.trials[0]
    m = TrialRecord.of(t).val_metrics
    assert t.value == pytest.approx((3 * m["a"] + m["c"]) / 4)


def test_export_retrains_over_seeds(multi: tuple[SearchConfig, optuna.Study], tmp_path: Path) -> None:
    config, study = multi
    member = pareto_front(study)[0]
    metrics = export_trial(study, config.storage, tmp_path / "r", member.number, retrain_seeds=2, trust_code=True)
    retrain = metrics["retrain"]
    assert retrain["seeds"] == 2 and retrain["n_params"] == TrialRecord.of(member).n_params
    for split in ("val", "test"):
        for key in ("a", "b", "c", "d", "(mean_score)", "(delta_m %)"):
            assert set(retrain[split][key]) == {"mean", "std"}
    assert "seeds 0..1" in metrics["selection"]["retrain"]
    assert "retrained on the train split, 2 seed(s)" in report.format_export(metrics, "r")
    with pytest.raises(ValueError, match="retrain_seeds"):
        export_trial(study, config.storage, tmp_path / "bad", member.number, retrain_seeds=-1)


def test_cli_plot_and_export_trial(multi: tuple[SearchConfig, optuna.Study], tmp_path: Path) -> None:
    config, study = multi
    pytest.importorskip("matplotlib")
    code, out, err = run("plot", "--storage", config.storage, "--out", str(tmp_path / "plots"))
    assert code == 0, err
    for name in ("history.png", "pareto.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"picture: {tmp_path / 'plots' / name}" in out
    member = pareto_front(study)[-1]
    code, out, err = run(
        "export", "--storage", config.storage, "--out", str(tmp_path / "e"), "--trial", str(member.number), "--trust-code"
    )
    assert code == 0, err
    assert f"exported trial {member.number} (on the Pareto front of the screening)" in out


def test_plots_of_a_single_objective_study(searched: tuple[SearchConfig, Any], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from automtl.plots import plot_pareto, plot_study

    _, study = searched
    assert [p.name for p in plot_study(study, tmp_path)] == ["history.png"]
    with pytest.raises(ValueError, match="one objective"):
        plot_pareto(study, tmp_path / "p.png")
