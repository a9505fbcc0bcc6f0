"""Deployment formats: ONNX Runtime and the ``torch.export`` program match the eager network; a task
subset's outputs are the full model's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from automtl import deploy
from automtl.build import restrict_network
from automtl.bundle import load_program, read_bundle, read_config
from automtl.config import load_config
from automtl.errors import ConfigError
from automtl.experiment import prepare
from automtl.export import export_trial
from automtl.search import run_search
from automtl.study import load_study
from tests import bundles
from tests.conftest import deploy_formats
from tests.test_cli import run

pytestmark = pytest.mark.slow  # real (one-trial) searches, exported

TOLERANCE = 1e-5


def _held_out(bundle: Path) -> torch.Tensor:
    """The validation rows (the inputs the export's own check used) and the test rows."""
    data = prepare(read_config(bundle)).data
    return torch.cat([data.val.x, data.test.x])


def _eager(bundle: Path, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return read_bundle(bundle).net(x)


@pytest.mark.parametrize("name", ["csv", "scenes", "star"])
def test_exported_models_match_the_eager_network(name: str, request: pytest.FixtureRequest) -> None:
    bundle: Path = request.getfixturevalue(f"{name}_bundle")
    x = _held_out(bundle)
    eager = _eager(bundle, x)
    metrics = json.loads((bundle / "metrics.json").read_text())
    program = load_program(bundle, trust_code=True)
    for rows in (slice(0, 1), slice(0, 7), slice(None)):  # the batch size is dynamic
        with torch.no_grad():
            outputs = dict(zip(eager, program(x[rows])))
        assert deploy.max_abs_difference({t: v[rows] for t, v in eager.items()}, outputs) <= TOLERANCE
    assert metrics["deployment"]["pt2"]["max_abs_diff"] <= TOLERANCE
    if "onnx" not in deploy_formats():
        pytest.skip("the deploy extra (onnx, onnxscript, onnxruntime) is not installed")
    session = deploy.onnx_session(bundle / "model.onnx")
    assert [o.name for o in session.get_outputs()] == list(eager)  # one named output per task, in task order
    assert session.get_inputs()[0].shape[0] == "batch"
    for rows in (slice(0, 1), slice(0, 7), slice(None)):
        outputs = deploy.run_onnx(session, x[rows].numpy())
        assert deploy.max_abs_difference({t: v[rows] for t, v in eager.items()}, outputs) <= TOLERANCE
    assert 0 <= metrics["deployment"]["onnx"]["max_abs_diff"] <= TOLERANCE
    assert metrics["deployment"]["onnx"]["inputs"] == len(prepare(read_config(bundle)).data.val)


def test_a_task_subset_gives_the_full_models_outputs(scenes_bundle: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{scenes_bundle.parent / 'study.db'}"  # the study the full bundle came from
    wanted = ["has_bag", "count"]
    subset = tmp_path / "subset"
    export_trial(load_study(storage), storage, subset, formats=deploy_formats(), tasks=["count", "has_bag"])
    full = read_bundle(scenes_bundle)
    part = read_bundle(subset)
    assert [t.name for t in part.tasks] == wanted and part.tree == full.tree.restrict(wanted)
    x = _held_out(subset)
    with torch.no_grad():
        expected, got = full.net(x), part.net(x)
    assert list(got) == wanted and all(torch.equal(got[t], expected[t]) for t in wanted)
    if "onnx" in deploy_formats():
        outputs = deploy.run_onnx(deploy.onnx_session(subset / "model.onnx"), x.numpy())
        assert list(outputs) == wanted and deploy.max_abs_difference({t: expected[t] for t in wanted}, outputs) <= TOLERANCE
    metrics = json.loads((subset / "metrics.json").read_text())
    report = metrics["subset"]
    assert report["tasks"] == wanted and report["of"] == [t.name for t in full.tasks]
    assert report["n_params"] == part.net.num_parameters() < report["n_params_full"] == full.net.num_parameters()
    assert 0 < report["flops"] <= report["flops_full"]
    assert set(metrics["test"]) == set(wanted)
    full_metrics = json.loads((scenes_bundle / "metrics.json").read_text())
    assert all(metrics["test"][t] == full_metrics["test"][t] for t in wanted)  # the same trial, the same weights
    assert json.loads((subset / "bundle.json").read_text())["subset_of"] == report["of"]


def test_restricting_a_network_keeps_its_weights(scenes_bundle: Path) -> None:
    full = read_bundle(scenes_bundle)
    x = _held_out(scenes_bundle)[:64]
    for wanted in (["count"], ["has_tshirt", "has_boot"], [t.name for t in full.tasks]):
        part = restrict_network(full.net, full.backbone, wanted).eval()
        with torch.no_grad():
            assert all(torch.equal(part(x)[t], full.net(x)[t]) for t in wanted)


def test_export_fails_above_the_tolerance_and_writes_nothing(
    searched: tuple[object, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = searched[0].storage  # type: ignore[attr-defined]
    monkeypatch.setattr(deploy, "max_abs_difference", lambda a, b: 3e-4)
    code, out, err = run("export", "--storage", storage, "--out", str(tmp_path / "b"), "--format", "pt2", "--trust-code")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "pt2: max abs difference 0.0003 from the eager network on 48 validation inputs exceeds 0.0001" in err
    assert list(tmp_path.iterdir()) == []


def test_export_prints_parity_and_subset_cost(searched: tuple[object, object], tmp_path: Path) -> None:
    storage = searched[0].storage  # type: ignore[attr-defined]
    code, out, err = run(
        "export", "--storage", storage, "--out", str(tmp_path / "b"), "--format", "pt2", "--tasks", "d,a", "--trust-code"
    )
    assert code == 0, err
    assert "pt2: model.pt2; max abs difference from the eager network on 48 validation inputs" in out
    assert "task subset ['a', 'd'] of 4 tasks:" in out and "parameters (full tree" in out and "FLOPs per sample" in out


def test_parse_formats() -> None:
    assert deploy.parse_formats("onnx,pt2") == ("safetensors", "onnx", "pt2")
    assert deploy.parse_formats(["pt2", "safetensors", "pt2"]) == ("safetensors", "pt2")
    with pytest.raises(ValueError, match=r"unknown export format\(s\) \['tflite'\]"):
        deploy.parse_formats("onnx,tflite")


def test_an_import_path_in_a_search_config_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    raw = bundles.csv_example_raw()
    raw["data"] = {"name": "os:system", "options": {"command": f"touch {marker}"}}
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(raw))
    code, _, err = run("search", str(path), "--no-progress")
    assert code == 2 and "config key 'data.name': data set 'os:system' is a 'module:function' import path" in err
    assert "--trust-code" in err and not marker.exists()
    raw = bundles.csv_example_raw()
    raw["tasks"] = {"petal_width": {"loss": "os:system"}}
    path.write_text(json.dumps(raw))
    for command in ("search", "train", "affinity"):
        argv = [command, str(path)] + (["--out", str(tmp_path / "aff")] if command == "affinity" else [])
        code, _, err = run(*argv)
        assert code == 2 and "config key 'tasks.petal_width.loss': loss 'os:system'" in err, (command, err)
    with pytest.raises(ConfigError, match="tasks.petal_width.loss"):
        run_search(load_config(path), progress=False)
