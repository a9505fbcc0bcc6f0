"""The command line: a thin shell over the Python API, with exit code 2 for bad input."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from automtl.backbones import BACKBONES
from automtl.balance import BALANCERS
from automtl.data import DATASETS
from automtl.losses import LOSSES
from automtl.metrics import METRICS
from cli import main
from tests.conftest import DELETE, set_key, tiny_raw

ROOT = Path(__file__).resolve().parent.parent


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _refuse(token: str) -> None:
    """``json.loads`` hook: NaN and Infinity are not JSON."""
    raise ValueError(f"not valid JSON: {token}")


@pytest.fixture(scope="module")
def searched_cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``automtl search`` on a tiny config file, with the storage given on the command line."""
    tmp = tmp_path_factory.mktemp("cli")
    raw = set_key(tiny_raw(tmp), "search.storage", DELETE)  # the command line supplies it
    config = tmp / "tiny_cli.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    storage = f"sqlite:///{tmp / 'cli.db'}"
    code, out, err = run("search", str(config), "--storage", storage, "--no-progress", "--trust-code")
    return {"tmp": tmp, "config": config, "storage": storage, "code": code, "out": out, "err": err}


@pytest.mark.slow
def test_search(searched_cli: dict[str, Any]) -> None:
    assert searched_cli["code"] == 0, searched_cli["err"]
    out = searched_cli["out"]
    assert out.startswith("data 'tiny': 144 rows: train 96, val 48 (test: not read until export)")  # what was loaded, first
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("baselines: single-task networks choose"))
    assert lines[at + 1].startswith("trial   0 complete delta_m=") and "obvious: hard sharing + equal" in lines[at + 1]
    assert all(f" {t}=" in lines[at + 1] for t in "abcd")
    assert lines[at + 2].startswith("trial   1 complete") and "obvious: single-task networks + equal" in lines[at + 2]
    assert "answered with it, not trained again" in lines[at + 2]
    assert "study 'tiny': 3 complete" in out and "2 counted toward the total" in out and "higher is better" in out
    assert "\ncost: screening " in out and " TRE " in out and "wall time of this run" in out
    # the output ends with the verdict
    assert "\nverdict:\n" in out and out.rstrip().splitlines()[-1].startswith("(Δm differences are mean ± std")
    assert Path(searched_cli["storage"][len("sqlite:///") :]).is_file()
    # a second search resumes: nothing left to run
    code, out, _ = run("search", str(searched_cli["config"]), "--storage", searched_cli["storage"], "--no-progress", "--trust-code")
    assert code == 0 and "trial   3" not in out and "3 complete" in out and "confirmation:" not in out.split("study 'tiny'")[0]


@pytest.mark.slow
def test_show(searched_cli: dict[str, Any]) -> None:
    code, out, err = run("show", "--storage", searched_cli["storage"])
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("trial"))
    assert header.split()[:6] == ["trial", "state", "delta_m", "balancer", "params", "tree"]
    # one validation-metric column per task, each naming its metric
    assert header.split()[6:14] == ["a", "(auroc)", "b", "(r2)", "c", "(accuracy)", "d", "(auroc)"]
    assert "higher is better" in out and "trivial val" in out  # the baselines beside a constant predictor
    assert "\ninput\n" in out and "head a" in out and "head d" in out  # the answer's tree, drawn
    assert "task indices: 0=a  1=b  2=c  3=d" in out and "verdict:" in out and "cost: screening" in out
    # the config file locates the study too (with the same storage)
    code, by_config, _ = run("show", str(searched_cli["config"]), "--storage", searched_cli["storage"], "--top", "1")
    assert code == 0 and "study 'tiny'" in by_config
    rows = [line for line in by_config.splitlines() if line[:1].isdigit()]
    assert len(rows) == 1


@pytest.mark.slow
def test_export_then_evaluate(searched_cli: dict[str, Any]) -> None:
    out_dir = searched_cli["tmp"] / "bundle"
    code, out, err = run(
        "export", "--storage", searched_cli["storage"], "--study-name", "tiny", "--out", str(out_dir), "--trust-code"
    )
    assert code == 0, err
    assert f"to {out_dir}" in out and "(score)" in out and "direction" in out
    assert (out_dir / "weights.safetensors").is_file()
    metrics = json.loads((out_dir / "metrics.json").read_text())
    code, out, err = run("evaluate", str(out_dir), "--split", "test", "--trust-code")
    assert code == 0, err
    assert json.loads(out, parse_constant=_refuse) == metrics["test"]
    code, out, _ = run("evaluate", str(out_dir), "--split", "val", "--trust-code")
    assert code == 0 and json.loads(out) == metrics["val"]


@pytest.mark.parametrize(
    ("what", "registry"),
    [("balancers", BALANCERS), ("backbones", BACKBONES), ("datasets", DATASETS), ("metrics", METRICS), ("losses", LOSSES)],
)
def test_list(what: str, registry: Any) -> None:
    code, out, _ = run("list", what)
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[2:]]
    assert names == registry.list()
    if what == "metrics":
        assert "mae  " in out and "minimize" in out and "maximize" in out


BAD = [
    ("bogus", 1, "bogus"),
    ("train.lr", {"low": 1.0e-2, "high": 1.0e-3}, "train.lr"),
    ("space.balancers", ["equal", "no_such_balancer"], "space.balancers.no_such_balancer"),
    ("search.sampler", "grid", "search.sampler"),
    ("tasks", {"zzz": {"loss": "mse"}}, "tasks.zzz"),
    ("backbone.options", {"hidden": []}, "backbone.options"),
    ("data.name", "no_such_data_set", "data.name"),
]


@pytest.mark.parametrize(("dotted", "value", "key"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, dotted: str, value: Any, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(set_key(tiny_raw(tmp_path), dotted, value)))
    code, out, err = run("search", str(path), "--no-progress", "--trust-code")
    assert code == 2
    assert err.startswith("automtl search: error: ") and f"config key '{key}'" in err
    assert out == ""


def test_missing_inputs_exit_2(tmp_path: Path) -> None:
    code, _, err = run("search", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml" in err
    code, _, err = run("show", "--storage", f"sqlite:///{tmp_path / 'empty.db'}")
    assert code == 2 and "empty.db does not exist" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "empty.db").exists()  # reading a study never creates its storage
    code, _, err = run("evaluate", str(tmp_path))
    assert code == 2 and "is missing" in err


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        run("list", "planets")
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        run()
    assert exc.value.code == 2


@pytest.mark.slow
def test_module_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "cli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    for command in ("search", "show", "export", "evaluate", "list"):
        assert command in result.stdout


@pytest.mark.slow
def test_evaluate_prints_valid_json_for_a_nan_metric(tmp_path: Path) -> None:
    raw = set_key(tiny_raw(tmp_path), "data.options", {"hide": {"test": ["c"]}})
    raw = set_key(raw, "search.n_trials", 1)
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert run("search", str(path), "--no-progress", "--trust-code")[0] == 0
    assert run("export", str(path), "--out", str(tmp_path / "b"), "--trust-code")[0] == 0
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["test"]["c"] is None
    code, out, _ = run("evaluate", str(tmp_path / "b"), "--trust-code")

    assert code == 0 and json.loads(out, parse_constant=_refuse) == metrics["test"]


@pytest.mark.slow
def test_affinity_measure_show_and_seed(searched_cli: dict[str, Any]) -> None:
    tmp, config = searched_cli["tmp"], str(searched_cli["config"])
    out_dir = tmp / "affinity"
    code, _, err = run("affinity", config, "--measure", "cosine", "--every", "1", "--out", str(out_dir), "--trust-code")
    assert code == 0, err
    assert all((out_dir / f"affinity.{ext}").is_file() for ext in ("json", "graphml", "dot"))
    code, shown, err = run("affinity", "show", str(out_dir), "--groups", "2")
    assert code == 0, err
    assert "best grouping into at most 2 groups" in shown and all(t in shown for t in ("a", "b", "c", "d"))
    storage = f"sqlite:///{tmp / 'seeded.db'}"
    code, _, err = run(
        "search", config, "--storage", storage, "--no-progress", "--seed-from-affinity", str(out_dir), "--trust-code"
    )
    assert code == 0, err
    code, _, err = run("affinity", "show")
    assert code == 2 and "dir" in err
