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
    argv = [*setup(tmp_path), "--trust-code"]  # the tiny data set and the test's own functions are import paths
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


# --------------------------------------------------------------------------- against a study
# id -> (argv from (tmp, storage URL, config path), the texts the error line must hold); each
# runs against the finished tiny study of ``searched``, which must come out untouched
STUDY_CASES: dict[str, tuple[Callable[[Path, str, str], list[str]], list[str]]] = {
    "negative-n-trials": (lambda t, s, c: ["search", c, "--storage", s, "--n-trials", "-3"], ["'--n-trials'", "-3"]),
    "zero-workers": (lambda t, s, c: ["search", c, "--storage", s, "--workers", "0"], ["'--workers'", ">= 1"]),
    "unknown-scheme": (lambda t, s, c: ["show", "--storage", "foo://bar"], ["foo://bar", "unknown URL scheme 'foo'"]),
    "file-url": (lambda t, s, c: ["show", "--storage", f"file://{t}/x.db"], ["file://", "unknown URL scheme 'file'"]),
    "plain-path": (lambda t, s, c: ["show", "--storage", str(t / "x.db")], ["x.db", "not a storage URL", "sqlite:///"]),
    "sqlite-directory": (lambda t, s, c: ["show", "--storage", f"sqlite:///{t}"], ["work is a directory"]),
    "sqlite-not-a-database": (
        lambda t, s, c: ["show", "--storage", f"sqlite:///{_text_file(t)}"],
        ["notes.txt", "is not a SQLite database"],
    ),
    "sqlite-missing": (lambda t, s, c: ["show", "--storage", f"sqlite:///{t}/missing.db"], ["missing.db", "does not exist"]),
    "journal-directory": (lambda t, s, c: ["show", "--storage", f"journal:{t}"], ["work is a directory"]),
    "no-such-study": (lambda t, s, c: ["show", "--storage", s, "--study-name", "nope"], ["no study 'nope'", "tiny"]),
    "no-such-trial": (lambda t, s, c: ["export", "--storage", s, "--out", str(t / "b"), "--trial", "99"], ["no trial 99"]),
    "missing-artifacts": (
        lambda t, s, c: ["export", "--storage", s, "--out", str(t / "b"), "--artifacts", str(t / "gone")],
        ["artifact folder", "gone", "does not exist"],
    ),
    "changed-space-on-resume": (
        lambda t, s, c: ["search", _write(t, set_key(_study_raw(c), "train.lr", 0.01)), "--storage", s, "--no-progress"],
        ["config key 'train'", "study 'tiny'", "different 'train'"],
    ),
    "changed-strategy-on-resume": (
        lambda t, s, c: ["search", _write(t, set_key(_study_raw(c), "search.strategy", "supernet")), "--storage", s],
        ["config key 'search.strategy'", "different 'search.strategy'"],
    ),
    "affinity-dir-missing": (
        lambda t, s, c: ["search", c, "--storage", s, "--seed-from-affinity", str(t / "nowhere")],
        ["no affinity.json in", "nowhere"],
    ),
    "unknown-strategy": (
        lambda t, s, c: ["search", _write(t, set_key(_study_raw(c), "search.strategy", "grid")), "--storage", s],
        ["config key 'search.strategy'", "'grid'"],
    ),
    "negative-supernet-budget": (
        lambda t, s, c: ["search", _write(t, set_key(_study_raw(c), "search.supernet", {"budget": -1})), "--storage", s],
        ["config key 'search.supernet.budget'", "-1"],
    ),
    "confirm-top-k-zero": (
        lambda t, s, c: ["search", _write(t, set_key(_study_raw(c), "search.confirm", {"top_k": 0})), "--storage", s],
        ["config key 'search.confirm.top_k'", ">= 1"],
    ),
    "unknown-pruner": (
        lambda t, s, c: ["search", _write(t, set_key(_study_raw(c), "search.pruner", "hyperband")), "--storage", s],
        ["config key 'search.pruner'", "'hyperband'"],
    ),
    "arch-file-missing": (
        lambda t, s, c: ["train", c, "--arch", str(t / "tree.yaml"), "--epochs", "1"],
        ["--arch", "tree.yaml", "hps, single or a tree YAML file"],
    ),
}


def _text_file(tmp: Path) -> Path:
    path = tmp / "notes.txt"
    path.write_text("not a database\n")
    return path


def _study_raw(config_path: str) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(Path(config_path).read_text())
    return raw


def _finished(storage: str) -> list[tuple[int, str, Any]]:
    import optuna

    study = optuna.load_study(study_name="tiny", storage=storage)
    return [(t.number, t.state.name, t.values) for t in study.trials]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(STUDY_CASES))
def test_bad_input_against_a_study_leaves_it_intact(
    case: str,
    searched: tuple[Any, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, _ = searched
    config_path = tmp_path / "study.yaml"
    config_path.write_text(yaml.safe_dump(set_key(copy.deepcopy(config.raw), "search.storage", DELETE), sort_keys=False))
    before_study = _finished(config.storage)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    setup, expected = STUDY_CASES[case]
    argv = setup(work, config.storage, str(config_path))
    if argv[0] in ("search", "train", "export"):
        argv.append("--trust-code")  # the tiny data set is an import path
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"automtl {argv[0]}: error: ")
    for part in expected:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    assert "Traceback" not in out + err
    after = sorted(p.relative_to(work) for p in work.rglob("*") if "__pycache__" not in p.parts)
    assert after == before, "nothing is written for bad input"
    assert _finished(config.storage) == before_study, "the study's trials are untouched"
