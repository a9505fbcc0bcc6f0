"""Bad input fails before training: exit code 2, one line on stderr naming the culprit, no
traceback, and nothing written (no ``runs/``, no output directory)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli import main
from tests.conftest import DELETE, set_key, tiny_raw

pytest.importorskip("pandas", reason="the csv cases need the data extra: pip install 'automtl[data]'")

# 40 rows, random split 28 / 6 / 6: two numeric features, a text feature, a binary, a
# multiclass and a regression target
TABLE = "a,b,city,y,k,z\n" + "".join(
    f"{i},{2 * i},{['paris', 'rome'][i % 2]},{i % 2},{['u', 'v', 'w'][i % 3]},{0.5 * i}\n" for i in range(40)
)
CSV_TARGETS = {"y": {"type": "binary"}, "k": {"type": "multiclass"}, "z": {"type": "regression"}}


def _cell(text: str, row: int, column: str, value: str) -> str:
    """``text`` with the cell at 1-based data row ``row`` replaced."""
    lines = text.splitlines()
    cells = lines[row].split(",")
    cells[lines[0].split(",").index(column)] = value
    lines[row] = ",".join(cells)
    return "\n".join(lines) + "\n"


def _tiny(tmp: Path, *changes: tuple[str, Any]) -> dict[str, Any]:
    """The tiny config with the default storage (``runs/`` under the working directory)."""
    raw = set_key(tiny_raw(tmp), "search.storage", DELETE)
    for dotted, value in changes:
        set_key(raw, dotted, value)
    return raw


def _csv(tmp: Path, table: str = TABLE, *changes: tuple[str, Any], **options: Any) -> dict[str, Any]:
    (tmp / "t.csv").write_text(table)
    data = {"name": "csv", "options": {"path": "t.csv", "targets": copy.deepcopy(CSV_TARGETS), **options}}
    return _tiny(tmp, ("data", data), ("train.batch_size", 8), *changes)


def _write(tmp: Path, raw: dict[str, Any] | str) -> str:
    path = tmp / "config.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    return str(path)


# id -> (setup: tmp -> argv, the texts the error line must hold)
CASES: dict[str, tuple[Callable[[Path], list[str]], list[str]]] = {
    "non-numeric-cell": (
        lambda t: ["train", _write(t, _csv(t, _cell(TABLE, 7, "b", "abc"))), "--epochs", "1"],
        ["t.csv", "column 'b'", "data row 7 ", "'abc'"],
    ),
    "unseen-val-label": (
        # rows 2 and 6 (1-based) land in validation under seed 0
        lambda t: ["train", _write(t, _csv(t, _cell(TABLE, _val_row(t), "k", "x"))), "--epochs", "1"],
        ["column 'k'", "'x' at data row", "in the val split", "never in the training split"],
    ),
    "label-outside-declared-classes": (
        lambda t: ["train", _write(t, _csv(t, _cell(TABLE, 3, "y", "2"))), "--epochs", "1"],
        ["column 'y'", "data row 3 ", "'2'", "classes"],
    ),
    "malformed-csv": (
        lambda t: ["train", _write(t, _csv(t, TABLE.replace("\n3,", "\n3,0,", 1))), "--epochs", "1"],
        ["cannot read", "t.csv", "Expected 6 fields in line 5, saw 7"],
    ),
    "missing-csv-file": (
        lambda t: ["train", _write(t, set_key(_csv(t), "data.options.path", "nope.csv")), "--epochs", "1"],
        ["nope.csv", "does not exist"],
    ),
    "absent-target-column": (
        lambda t: ["train", _write(t, set_key(_csv(t), "data.options.targets", {"w": {"type": "regression"}})), "--epochs", "1"],
        ["target column 'w' is absent"],
    ),
    "categorical-column-absent": (
        lambda t: ["train", _write(t, _csv(t, categorical=["zip"])), "--epochs", "1"],
        ["categorical column 'zip' is absent"],
    ),
    "data-declared-loss-wrong-signature": (
        lambda t: [
            "train",
            _write(t, set_key(_csv(t), "data.options.targets.z.loss", "tests.helpers:loss_of_one_argument")),
            "--epochs",
            "1",
        ],
        ["config key 'data.options.targets.z.loss'", "loss_of_one_argument(output)", "fn(output, target)"],
    ),
    "max-groups-too-big": (
        lambda t: ["train", _write(t, _tiny(t, ("space.max_groups", 5))), "--epochs", "1"],
        ["config key 'space.max_groups'", "5 groups", "only 4 tasks"],
    ),
    "max-groups-too-big-search": (
        lambda t: ["search", _write(t, _tiny(t, ("space.max_groups", 5))), "--no-progress"],
        ["config key 'space.max_groups'", "5 groups", "only 4 tasks"],
    ),
    "batch-size-too-big": (
        lambda t: ["train", _write(t, _tiny(t, ("train.batch_size", 97))), "--epochs", "1"],
        ["config key 'train.batch_size'", "97", "only 96 rows"],
    ),
    "default-batch-size-too-big": (
        lambda t: ["train", _write(t, _csv(t, TABLE, ("train.batch_size", DELETE))), "--epochs", "1"],
        ["config key 'train.batch_size'", "128 (the default)", "only 28 rows"],
    ),
    "backbone-wrong-signature": (
        lambda t: ["train", _write(t, _tiny(t, ("backbone", {"name": "tests.helpers:backbone_without_shape"}))), "--epochs", "1"],
        ["config key 'backbone.name'", "backbone_without_shape(*, width=4)", "fn(input_shape, **options) -> Backbone"],
    ),
    "loss-wrong-signature": (
        lambda t: ["train", _write(t, _tiny(t, ("tasks", {"b": {"loss": "tests.helpers:loss_of_one_argument"}}))), "--epochs", "1"],
        ["config key 'tasks.b.loss'", "loss_of_one_argument(output)"],
    ),
    "metric-not-a-metric": (
        lambda t: ["train", _write(t, _tiny(t, ("tasks", {"b": {"metric": "tests.helpers:plain_metric"}}))), "--epochs", "1"],
        ["config key 'tasks.b.metric'", "not an automtl.metrics.Metric"],
    ),
    "missing-config-file": (lambda t: ["train", str(t / "nope.yaml"), "--epochs", "1"], ["nope.yaml"]),
    "bad-yaml": (lambda t: ["train", _write(t, "data: [unclosed\n"), "--epochs", "1"], ["config key '(file)'", "not valid YAML"]),
    "unknown-key": (lambda t: ["train", _write(t, _tiny(t, ("bogus", 1))), "--epochs", "1"], ["config key 'bogus'", "unknown key"]),
    "nan-learning-rate": (
        lambda t: ["search", _write(t, _tiny(t, ("train.lr", float("nan")))), "--no-progress"],
        ["config key 'train.lr'", "finite"],
    ),
    "unknown-device": (lambda t: ["train", _write(t, _tiny(t, ("device", "gpu"))), "--epochs", "1"], ["config key 'device'", "'gpu'"]),
    "unknown-data-set": (
        lambda t: ["train", _write(t, _tiny(t, ("data.name", "no_such_data_set"))), "--epochs", "1"],
        ["config key 'data.name'", "no_such_data_set"],
    ),
    "affinity-bad-config": (
        lambda t: ["affinity", _write(t, _tiny(t, ("train.batch_size", 500))), "--out", str(t / "aff")],
        ["config key 'train.batch_size'", "500", "only 96 rows"],
    ),
}


def _val_row(tmp: Path) -> int:
    """A 1-based data row of TABLE that the seeded random split puts in validation."""
    from automtl.data._tabular import random_split

    rows = random_split(40, val_fraction=0.15, test_fraction=0.15, seed=0, source="test")["val"]
    return int(rows[0]) + 1


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_naming_the_culprit(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    setup, expected = CASES[case]
    argv = setup(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"automtl {argv[0]}: error: ")
    for part in expected:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    assert "Traceback" not in out + err
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "__pycache__" not in p.parts)
    assert after == before, "nothing is written for bad input"
