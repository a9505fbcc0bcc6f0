"""The bundle format: self-contained, versioned; reading it runs no code; a corrupt one is one clear line."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import automtl
from automtl.bundle import FORMAT_VERSION, load, load_program, read_bundle
from automtl.errors import BundleError
from tests import bundles
from tests.test_cli import run

pytestmark = pytest.mark.slow  # the bundle comes from a real (one-trial) search

NEEDED = ["bundle.json", "tree.yaml", "model.yaml", "preprocess.json", "weights.safetensors"]


@pytest.fixture
def copy(csv_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the iris bundle, to tamper with."""
    return Path(shutil.copytree(csv_bundle, tmp_path / "bundle"))


def _edit_yaml(path: Path, edit: Callable[[dict], None]) -> None:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _iris_rows(tmp_path: Path) -> Path:
    return bundles.raw_lines(bundles.IRIS, np.arange(10), tmp_path / "rows.csv")


def _strings(data: object) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        return [s for k, v in data.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(data, list):
        return [s for v in data for s in _strings(v)]
    return []


def _refused(code: int, out: str, err: str, command: str) -> str:
    """Exit 2, nothing on stdout, one line on stderr, no traceback."""
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith(f"automtl {command}: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_the_folder_alone_is_enough(csv_bundle: Path, tmp_path: Path) -> None:
    moved = Path(shutil.copytree(csv_bundle, tmp_path / "elsewhere" / "model"))
    manifest = json.loads((moved / "bundle.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION == 1 and manifest["format"] == "automtl-bundle"
    for file in moved.iterdir():
        if file.suffix in (".json", ".yaml"):
            data = json.loads(file.read_text()) if file.suffix == ".json" else yaml.safe_load(file.read_text())
            assert not [v for v in _strings(data) if v.startswith("/")], file.name  # no absolute path
    config = yaml.safe_load((moved / "config.yaml").read_text())
    assert not Path(config["data"]["options"]["path"]).is_absolute()
    preprocess = json.loads((moved / "preprocess.json").read_text())
    assert [c["column"] for c in preprocess["input"]["columns"]] == ["sepal_length", "sepal_width", "petal_length"]
    assert preprocess["targets"]["species"]["classes"] == ["setosa", "versicolor", "virginica"]
    rows = _iris_rows(tmp_path)
    assert automtl.predict(moved, rows).table().equals(automtl.predict(csv_bundle, rows).table())


@pytest.mark.parametrize("entry", ["subprocess:run", "os:system"])
def test_a_tampered_backbone_runs_nothing(copy: Path, tmp_path: Path, entry: str) -> None:
    marker = tmp_path / "MARKER"

    def tamper(model: dict) -> None:  # on automtl before format 1 this ran `touch MARKER` in a shell
        model.update(backbone=entry, backbone_options={"shell": True}, input_shape=[f"touch {marker}"])

    _edit_yaml(copy / "model.yaml", tamper)
    with pytest.raises(BundleError, match=f"model.yaml: backbone '{entry}' is a 'module:function' import path"):
        load(copy)
    for argv, command in (
        (["evaluate", str(copy)], "evaluate"),
        (["predict", str(copy), str(_iris_rows(tmp_path)), "--out", str(tmp_path / "p.csv")], "predict"),
    ):
        err = _refused(*run(*argv), command)
        assert f"model.yaml: backbone '{entry}'" in err and "--trust-code" in err
    assert not marker.exists() and not (tmp_path / "p.csv").exists()


def test_a_tampered_data_set_or_metric_runs_nothing(copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    _edit_yaml(copy / "config.yaml", lambda c: c.update(data={"name": "os:system", "options": {"command": f"touch {marker}"}}))
    err = _refused(*run("evaluate", str(copy)), "evaluate")
    assert "config.yaml: config key 'data.name': data set 'os:system' is a 'module:function' import path" in err
    assert "--trust-code" in err and not marker.exists()

    def tamper(model: dict) -> None:
        model["tasks"][0]["metric"] = "os:system"

    _edit_yaml(copy / "model.yaml", tamper)
    err = _refused(*run("evaluate", str(copy)), "evaluate")
    assert "model.yaml: task 'species': metric 'os:system'" in err
    assert automtl.predict(copy, _iris_rows(tmp_path)).tasks[0].metric == "os:system"  # predicting reads no metric


def test_a_user_backbone_loads_only_with_trust(
    copy: Path, csv_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "user_backbones_b1.py").write_text(
        f"open({str(marker)!r}, 'w').close()  # importing this module is running code\n\n"
        "from automtl.backbones import mlp\n\n\n"
        "def make(input_shape, **options):\n    return mlp(input_shape, **options)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_backbones_b1", raising=False)
    _edit_yaml(copy / "model.yaml", lambda m: m.update(backbone="user_backbones_b1:make"))
    with pytest.raises(BundleError, match="model.yaml: backbone 'user_backbones_b1:make'"):
        load(copy)
    err = _refused(*run("predict", str(copy), str(_iris_rows(tmp_path)), "--out", str(tmp_path / "p.csv")), "predict")
    assert "user_backbones_b1:make" in err and "--trust-code" in err
    assert not marker.exists() and "user_backbones_b1" not in sys.modules
    net = load(copy, trust_code=True)
    assert marker.exists()
    x = torch.randn(5, 3)
    original = read_bundle(csv_bundle).net
    assert all(torch.equal(net(x)[t], original(x)[t]) for t in ("species", "petal_width"))
    assert run("predict", str(copy), str(_iris_rows(tmp_path)), "--out", str(tmp_path / "p.csv"), "--trust-code")[0] == 0


def test_the_torch_export_program_needs_trust(csv_bundle: Path) -> None:
    with pytest.raises(BundleError, match="model.pt2: torch.export.load unpickles"):
        load_program(csv_bundle)
    program = load_program(csv_bundle, trust_code=True)
    x = torch.randn(3, 3)
    eager = load(csv_bundle)(x)
    assert all(torch.equal(a, eager[t]) for a, t in zip(program(x), ("species", "petal_width")))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _widen(model: dict) -> None:
    model["backbone_options"]["hidden"][0] *= 2


def _set_version(path: Path) -> None:
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 2
    path.write_text(json.dumps(manifest))


CORRUPT: dict[str, tuple[Callable[[Path], object], str]] = {
    "truncated weights": (lambda b: _truncate(b / "weights.safetensors"), "weights.safetensors: cannot read it"),
    "empty weights": (lambda b: (b / "weights.safetensors").write_bytes(b""), "weights.safetensors: cannot read it"),
    "invalid model YAML": (lambda b: (b / "model.yaml").write_text("backbone: [mlp\n"), "model.yaml: invalid YAML"),
    "invalid tree YAML": (lambda b: (b / "tree.yaml").write_text("tasks: {a\n"), "tree.yaml: invalid YAML"),
    "invalid preprocess JSON": (lambda b: (b / "preprocess.json").write_text("{"), "preprocess.json: invalid JSON"),
    "edited width": (
        lambda b: _edit_yaml(b / "model.yaml", _widen),
        "weights.safetensors: tensor 'blocks.b0_0.1.weight' has shape [32, 3], but model.yaml and tree.yaml build [64, 3]",
    ),
    "edited scaling": (
        lambda b: (b / "preprocess.json").write_text((b / "preprocess.json").read_text().replace('"std": ', '"std": "x", "s": ', 1)),
        "preprocess.json: input.columns[0]: unknown field(s) ['s']",
    ),
    "missing tree": (lambda b: (b / "tree.yaml").unlink(), "tree.yaml is missing"),
    "missing manifest": (lambda b: (b / "bundle.json").unlink(), "bundle.json is missing"),
    "wrong format version": (lambda b: _set_version(b / "bundle.json"), "bundle.json: format_version 2 is not one this automtl reads"),
    "tree of other tasks": (
        lambda b: _edit_yaml(b / "tree.yaml", lambda t: t.update(tasks=["species", "sepal"])),
        "tree.yaml: block 0: unknown task 'petal_width'",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_a_corrupt_bundle_is_one_line_and_exit_2(copy: Path, tmp_path: Path, case: str) -> None:
    damage, message = CORRUPT[case]
    damage(copy)
    for argv, command in (
        (["predict", str(copy), str(_iris_rows(tmp_path)), "--out", str(tmp_path / "p.csv")], "predict"),
        (["evaluate", str(copy)], "evaluate"),
    ):
        err = _refused(*run(*argv), command)
        assert message in err, err
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises((BundleError, FileNotFoundError), match=message.split(": ", 1)[0]):
        load(copy)


def test_export_out_naming_an_existing_file(searched: tuple[automtl.SearchConfig, object], tmp_path: Path) -> None:
    storage = searched[0].storage
    taken = tmp_path / "taken.txt"
    taken.write_text("mine")
    err = _refused(*run("export", "--storage", storage, "--out", str(taken), "--trust-code"), "export")
    assert f"output {taken} is an existing file" in err and taken.read_text() == "mine"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.md").write_text("keep")
    err = _refused(*run("export", "--storage", storage, "--out", str(tmp_path / "notes"), "--trust-code"), "export")
    assert "holds files that are not part of a bundle (todo.md)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "taken.txt"]
    err = _refused(*run("export", "--storage", storage, "--out", str(tmp_path / "b"), "--format", "tflite", "--trust-code"), "export")
    assert "unknown export format(s) ['tflite']" in err and not (tmp_path / "b").exists()
    err = _refused(*run("export", "--storage", storage, "--out", str(tmp_path / "b"), "--tasks", "a,z", "--trust-code"), "export")
    assert "unknown task(s) ['z']" in err and not (tmp_path / "b").exists()
    # exporting again into a bundle replaces it whole
    assert run("export", "--storage", storage, "--out", str(tmp_path / "b"), "--format", "pt2", "--trust-code")[0] == 0
    assert (tmp_path / "b" / "model.pt2").is_file()
    assert run("export", "--storage", storage, "--out", str(tmp_path / "b"), "--trust-code")[0] == 0
    assert not (tmp_path / "b" / "model.pt2").exists() and (tmp_path / "b" / "bundle.json").is_file()
