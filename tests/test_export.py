"""Export bundles: self-contained, reloadable, and reproducing their reported metrics exactly."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml

import automtl
from automtl.build import BranchedNet
from automtl.bundle import FORMAT_VERSION, read_config
from automtl.config import SearchConfig, load_config, parse_config
from automtl.confirm import Confirmation
from automtl.errors import NonFiniteLossError
from automtl.export import evaluate_bundle, export_trial, load
from automtl.search import run_search
from automtl.study import TrialRecord
from automtl.tree import BranchTree
from tests import helpers

pytestmark = pytest.mark.slow  # every test here runs (or reads) a real search

BUNDLE_FILES = {
    "bundle.json",
    "tree.yaml",
    "model.yaml",
    "preprocess.json",
    "weights.safetensors",
    "config.yaml",
    "candidate.yaml",
    "metrics.json",
}


@pytest.fixture(scope="module")
def bundle(searched: tuple[SearchConfig, optuna.Study], tmp_path_factory: pytest.TempPathFactory) -> Path:
    config, study = searched
    out = tmp_path_factory.mktemp("bundle") / "best"
    export_trial(study, config.storage, out, trust_code=True)  # the tiny data set is a tests.helpers path
    return out


def _answer(study: optuna.Study) -> Any:
    return Confirmation.from_dict(study.user_attrs["confirmation"]).best


def test_bundle_contents(bundle: Path, searched: tuple[SearchConfig, optuna.Study]) -> None:
    config, study = searched
    assert {p.name for p in bundle.iterdir()} == BUNDLE_FILES
    metrics = json.loads((bundle / "metrics.json").read_text())
    best = _answer(study)
    assert (metrics["study"], metrics["design"], metrics["selected_on"]) == ("tiny", best.label, "val")
    assert metrics["weights_from"] == "its first confirmation seed" and not metrics["multi_objective"]
    assert metrics["n_params"] == best.n_params
    assert set(metrics["val"]) == set(metrics["test"]) == {"a", "b", "c", "d"}
    assert metrics["metric_of_task"]["b"] == {"metric": "r2", "direction": "maximize"}
    # the exported weights are the first confirmation run's: its validation metrics bit for bit
    assert metrics["val"] == best.val_metrics[0]
    assert metrics["val_delta_m"] == pytest.approx(best.values[0], rel=1e-9)
    # every confirmation seed is reported, none chosen; its validation mean is the confirmed value
    assert metrics["confirmed"]["seeds"] == 2
    assert metrics["confirmed"]["val"]["(delta_m %)"]["mean"] == pytest.approx(best.mean, rel=1e-9)
    assert metrics["verdict"] == Confirmation.from_dict(study.user_attrs["confirmation"]).verdict
    tree_text = (bundle / "tree.yaml").read_text()
    assert tree_text.startswith("# input\n") and "# " in tree_text and "head a" in tree_text
    assert BranchTree.from_yaml(tree_text) == BranchTree.from_dict(best.candidate["tree"])
    candidate = yaml.safe_load((bundle / "candidate.yaml").read_text())
    assert candidate["balancer"] == best.balancer and candidate["train"]["lr"] == best.candidate["train"]["lr"]
    written = read_config(bundle, trust_code=True)
    # the same configuration, but for where the study lived
    assert dataclasses.replace(written, storage=config.storage, source=None, raw=config.raw) == parse_config(config.raw)
    assert "storage" not in yaml.safe_load((bundle / "config.yaml").read_text())["search"]  # the study's, not the model's
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert (manifest["format"], manifest["format_version"]) == ("automtl-bundle", FORMAT_VERSION)
    assert manifest["tasks"] == ["a", "b", "c", "d"] and set(manifest["files"]) == BUNDLE_FILES


def test_bundle_holds_no_absolute_path(bundle: Path, searched: tuple[SearchConfig, optuna.Study]) -> None:
    config, _ = searched
    where = str(Path(config.storage[len("sqlite:///") :]).parent)
    for file in bundle.iterdir():
        if file.suffix in (".yaml", ".json"):
            assert where not in file.read_text(), file.name


def test_evaluate_reproduces_the_exported_test_metrics_exactly(bundle: Path) -> None:
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert evaluate_bundle(bundle, "test", trust_code=True) == metrics["test"]
    assert automtl.evaluate_bundle(str(bundle), split="val", trust_code=True) == metrics["val"]


def test_load_gives_a_model_with_per_task_outputs(bundle: Path, searched: tuple[SearchConfig, optuna.Study]) -> None:
    net = automtl.load(bundle)
    assert isinstance(net, BranchedNet) and not net.training
    assert net.tree == BranchTree.from_dict(_answer(searched[1]).candidate["tree"])
    data = helpers.tiny_data()
    x = data.test.x[:5]
    out = net(x)
    assert set(out) == {"a", "b", "c", "d"}
    assert out["a"].shape == (5,) and out["b"].shape == (5,) and out["c"].shape == (5, 3) and out["d"].shape == (5, 2)
    # a second load is the same network
    again = load(bundle)
    assert all(torch.equal(out[t], again(x)[t]) for t in out)


def test_predict_gives_probabilities_and_original_units(bundle: Path) -> None:
    net = load(bundle)
    data = helpers.tiny_data()
    spec = net.tasks[1]
    assert spec.name == "b" and spec.target_mean == data.task("b").target_mean and spec.target_std == data.task("b").target_std
    with torch.no_grad():
        raw = net(data.test.x)
    pred = net.predict(data.test.x)
    for t in ("a", "c", "d"):
        assert ((pred[t] >= 0) & (pred[t] <= 1)).all()
    torch.testing.assert_close(pred["c"].sum(dim=1), torch.ones(len(data.test)))
    torch.testing.assert_close(pred["b"], raw["b"] * spec.target_std + spec.target_mean)
    # in the target's own unit: around the original scale (mean ~100), not standardized (~0)
    assert abs(float(pred["b"].mean()) - helpers.REG_MEAN) < 2 * spec.target_std
    original = data.test.y["b"] * spec.target_std + spec.target_mean
    assert float((pred["b"] - original).abs().mean()) < float((raw["b"] - original).abs().mean())


def test_export_a_given_trial(searched: tuple[SearchConfig, optuna.Study], tmp_path: Path) -> None:
    config, study = searched
    metrics = export_trial(study, config.storage, tmp_path / "t1", trial_number=1, trust_code=True)
    record = TrialRecord.of(study.trials[1])
    assert metrics["trial"] == 1 and metrics["val"] == record.val_metrics and metrics["weights_from"] == "trial 1's run"
    assert load(tmp_path / "t1").tree == BranchTree.from_dict(record.candidate["tree"])  # type: ignore[index]
    with pytest.raises(LookupError, match="no trial 99"):
        export_trial(study, config.storage, tmp_path / "t99", trial_number=99, trust_code=True)


def test_missing_weights_and_files(searched: tuple[SearchConfig, optuna.Study], tmp_path: Path) -> None:
    config, study = searched
    with pytest.raises(FileNotFoundError, match="artifact folder .* does not exist"):
        export_trial(study, config.storage, tmp_path / "new" / "out", artifacts=tmp_path / "nowhere", trust_code=True)
    assert not (tmp_path / "new").exists()  # neither the bundle folder nor its parent was left behind
    with pytest.raises(FileNotFoundError, match="is missing"):
        load(tmp_path)


def test_unknown_split(bundle: Path) -> None:
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        evaluate_bundle(bundle, "holdout", trust_code=True)


def test_failed_trial_has_nothing_to_export(
    make_config: Callable[..., SearchConfig], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import automtl.screening as search_module  # the screening trials train through it

    def nan_in_screening(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("on_epoch") is not None:  # screening trials report epochs; baseline runs do not
            raise NonFiniteLossError("b", 0, 0, float("nan"))
        return real(*args, **kwargs)

    real = search_module.train_candidate
    monkeypatch.setattr(search_module, "train_candidate", nan_in_screening)
    config = make_config({"search.n_trials": 1, "search.objective": "mean_score"})
    study = run_search(config, progress=False)
    trained = [t for t in study.trials if not TrialRecord.of(t).answered_from]
    assert {t.state for t in trained} == {optuna.trial.TrialState.FAIL} and "confirmation" not in study.user_attrs
    with pytest.raises(LookupError, match="trial 0 is fail and has no weights"):
        export_trial(study, config.storage, tmp_path / "out", trial_number=0)
    assert not (tmp_path / "out").exists()
    # what is left is the single-task design, answered from the baselines' tuning run
    metrics = export_trial(study, config.storage, tmp_path / "out")
    assert metrics["design"] == "trial 1" and TrialRecord.of(study.trials[1]).answered_from == "baselines"


def test_export_of_a_config_file_without_name(tmp_path: Path, raw_config: dict) -> None:
    raw = dict(raw_config)
    raw.pop("name")
    path = tmp_path / "unnamed.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path, trust_code=True)
    study = run_search(config, n_trials=1, progress=False)
    metrics = export_trial(study, config.storage, tmp_path / "out", trust_code=True)
    assert evaluate_bundle(tmp_path / "out", "test", trust_code=True) == metrics["test"]
