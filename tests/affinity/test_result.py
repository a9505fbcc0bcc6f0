"""AffinityResult: graph, JSON/GraphML/DOT round trips, the terminal table, the picture."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from automtl.affinity import (
    AffinityResult,
    format_affinity,
    load_affinity,
    plot_affinity,
    to_dot,
)
from automtl.tree import BranchTree


def _result(symmetric: bool = False) -> AffinityResult:
    tasks = ["a", "b", "c"]
    m = np.array([[0.03, 0.002, -0.004], [0.001, 0.02, np.nan], [-0.003, 0.0005, 0.05]])
    if symmetric:
        m = np.where(np.isnan(m), 0.0, m)
        m = (m + m.T) / 2
    return AffinityResult(
        measure="cosine" if symmetric else "lookahead",
        tasks=tasks,
        matrix=m,
        counts=np.array([[4, 4, 4], [4, 4, 0], [4, 4, 4]]),
        convention="M[i, j] = Z_{i->j}",
        source="TAG",
        symmetric=symmetric,
        history=[m, m / 2],
        history_epochs=[0, 1],
        every=5,
        tree=BranchTree.hard_sharing(tasks, 2),
        cost={"fit_seconds": 2.0, "measure_seconds": 0.5, "measurements": 4.0, "overhead": 4 / 3},
        info={"config": "toy"},
        baseline=None if symmetric else np.array([0.001, np.nan, -0.002]),
    )


def test_graph_has_one_edge_per_measured_off_diagonal_entry() -> None:
    g = _result().to_networkx()
    assert isinstance(g, nx.DiGraph) and set(g.nodes) == {"a", "b", "c"}
    assert g.number_of_edges() == 5  # 6 off-diagonal entries, one NaN
    assert g.edges["a", "c"]["weight"] == -0.004 and g.edges["a", "c"]["sign"] == -1
    assert g.edges["c", "a"]["count"] == 4
    assert g.nodes["a"]["self_affinity"] == 0.03
    assert g.graph["measure"] == "lookahead"


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    result = _result()
    paths = result.save(tmp_path / "out")
    assert {p.name for p in paths.values()} == {"affinity.json", "affinity.graphml", "affinity.dot"}
    back = load_affinity(tmp_path / "out")
    np.testing.assert_array_equal(back.matrix, result.matrix)  # NaN survives as null
    np.testing.assert_array_equal(back.counts, result.counts)
    assert back.tasks == result.tasks and back.tree == result.tree and back.every == 5
    assert back.history_epochs == [0, 1] and len(back.history) == 2
    np.testing.assert_array_equal(back.history[1], result.history[1])
    assert back.cost == result.cost and back.info == result.info
    np.testing.assert_array_equal(back.baseline, result.baseline)
    graph = nx.read_graphml(paths["graphml"])
    assert graph.edges["a", "b"]["weight"] == pytest.approx(0.002)
    assert graph.graph["convention"] == result.convention


def test_dot_is_graphviz_text() -> None:
    directed = to_dot(_result())
    assert directed.startswith("digraph affinity {") and '"a" -> "c"' in directed and "#b2182b" in directed
    undirected = to_dot(_result(symmetric=True))
    assert undirected.startswith("graph affinity {") and '"a" -- "b"' in undirected and '"b" -- "a"' not in undirected


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="affinity.json"):
        load_affinity(tmp_path)
    (tmp_path / "affinity.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        load_affinity(tmp_path)
    (tmp_path / "affinity.json").write_text("{}")
    with pytest.raises(ValueError, match="key"):
        load_affinity(tmp_path)


def test_shape_is_checked() -> None:
    with pytest.raises(ValueError, match=r"\[2, 2\]"):
        AffinityResult("lookahead", ["a", "b"], np.zeros((3, 3)), np.zeros((3, 3)), convention="")


def test_pairs_and_table() -> None:
    result = _result()
    assert result.pairs(sign=1, top=2) == [("a", "b", 0.002), ("b", "a", 0.001)]
    assert [p[:2] for p in result.pairs(sign=-1)] == [("a", "c"), ("c", "a")]
    text = format_affinity(result)
    assert "M[i, j] = Z_{i->j}" in text and "rows: source task i" in text
    assert "x10^3" in text and "+2.00" in text and "[+30.0]" in text  # values shown x1000, diagonal bracketed
    assert "Strongest positive" in text and "a -> b: +0.002" in text
    assert "Strongest negative" in text and "a -> c: -0.004" in text
    assert "x1.33 the run without measuring" in text
    assert "momentum only" in text and "-2.00" in text
    sym = format_affinity(_result(symmetric=True))
    assert "a <-> b" in sym and "b <-> a" not in sym


def test_without_momentum_subtracts_the_baseline() -> None:
    result = _result()
    own = result.without_momentum()
    assert own.measure == "lookahead (own part)" and own.baseline is None and "zero gradient" in own.convention
    assert own.value("b", "a") == pytest.approx(0.001 - 0.001)
    assert own.value("a", "c") == pytest.approx(-0.004 + 0.002)
    assert own.value("a", "b") == pytest.approx(0.002)  # unknown baseline: left as is
    with pytest.raises(ValueError, match="no momentum baseline"):
        _result(symmetric=True).without_momentum()


def test_default_reading_removes_the_momentum_term() -> None:
    raw = _result()
    own = raw.reading()
    np.testing.assert_array_equal(own.matrix, raw.without_momentum().matrix)
    assert own.baseline is None and own.info["momentum_baseline"][0] == 0.001
    assert raw.reading(with_momentum=True) is raw
    assert own.reading() is own  # already the own part
    cosine = _result(symmetric=True)
    assert cosine.reading() is cosine  # no momentum term to remove


def test_the_headline_says_which_reading_it_shows() -> None:
    def headline(result: AffinityResult) -> str:
        return format_affinity(result).splitlines()[1]

    assert headline(_result()).startswith("  reading: raw, momentum term included")
    own = _result().reading()
    assert headline(own).startswith("  reading: own part") and format_affinity(own).startswith("Task affinity: lookahead (own part)")
    assert "momentum only" not in format_affinity(own)
    assert headline(_result(symmetric=True)).startswith("  reading: as measured")
    # the strongest pairs follow the reading: a -> c is -0.004 raw, -0.002 once momentum (-0.002) is removed
    assert "a -> c: -0.004" in format_affinity(_result()) and "a -> c: -0.002" in format_affinity(own)


def test_symmetrized_uses_the_known_direction() -> None:
    s = _result().symmetrized()
    assert s[1, 2] == s[2, 1] == 0.0005
    assert s[0, 1] == pytest.approx(0.0015)
    assert not np.isnan(s).any()


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plotting needs the plot extra: pip install 'automtl[plot]'")
    path = plot_affinity(_result(), tmp_path / "fig" / "affinity.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("flags", "reading"),
    [([], "own part"), (["--without-momentum"], "own part"), (["--with-momentum"], "raw, momentum term included")],
)
def test_cli_shows_the_own_part_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], reading: str
) -> None:
    from cli import main

    _result().save(tmp_path)
    assert main(["affinity", "show", str(tmp_path), "--groups", "2", *flags]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith(f"  reading: {reading}")
    assert ("momentum only" in out) == ("--with-momentum" in flags)


def test_cli_momentum_flags_exclude_each_other(tmp_path: Path) -> None:
    from cli import main

    with pytest.raises(SystemExit) as exc:
        main(["affinity", "show", str(tmp_path), "--with-momentum", "--without-momentum"])
    assert exc.value.code == 2
