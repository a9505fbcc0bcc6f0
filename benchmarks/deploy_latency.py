"""Deployment latency: the eager network, its ``torch.export`` program and ONNX Runtime, side by side.

For each of three bundles exported from real (small) searches, the three engines run the same
inputs on the CPU with one thread each (``torch.set_num_threads(1)``; ONNX Runtime
``intra_op_num_threads=1``, ``inter_op_num_threads=1``):

* **eager**: the bundle's :class:`~automtl.build.BranchedNet` (``automtl.load``), under
  ``torch.inference_mode()``;
* **torch.export**: ``model.pt2`` (``torch.export.load(...).module()``), under
  ``torch.inference_mode()``;
* **ONNX Runtime**: ``model.onnx`` in a CPU ``InferenceSession``.

Each engine gets the same input array: one sample (batch 1) and 1024 samples (batch 1024), taken
from the data set's validation and test rows (repeated where a data set has fewer, iris). Every
round times, for each engine in turn, a burst of consecutive calls (``--burst-1`` calls at batch 1,
``--burst-1024`` at batch 1024) and keeps the burst's time per call; the engines' order reverses
every other round, so load from other processes hits all alike. After ``--warmup`` rounds the
table reports, per engine and batch size, the median over ``--rounds`` rounds of the time per
sample (microseconds, lower is better), and the median over rounds of each engine's time over
eager's time in the same round (the ratio, lower is faster).

The bundles: ``search_spaces/quickstart.yaml`` (fashion_scenes, 11 tasks, small CNN),
``search_spaces/star.yaml`` (STAR, 8 regression tasks, MLP 256/128/64) and
``search_spaces/csv_example.yaml`` (iris, 2 tasks, MLP 32/32/16), each searched for ``--trials``
trials with ``search.objective: mean_score`` (no single-task baselines; otherwise each config as
written), the best exported with ``--format onnx,pt2``, and once more with ``--tasks`` (a subset:
its parameters and FLOPs against the whole tree's are the second table). Studies and bundles go
to ``runs/deploy_latency/`` and are reused when present.

Usage::

    python benchmarks/deploy_latency.py                  # print the tables
    python benchmarks/deploy_latency.py --write          # also update benchmarks/RESULTS.md
    python benchmarks/deploy_latency.py --rounds 5 --warmup 1   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from automtl import deploy
from automtl.bundle import load_program, read_bundle, read_config
from automtl.config import parse_config
from automtl.experiment import prepare
from automtl.export import export_trial
from automtl.search import run_search
from benchmarks.results_md import machine, write_section

SECTION = "## Deployment latency"
ENGINES = ("eager", "torch.export", "ONNX Runtime")
BATCHES = (1, 1024)
RUNS = ROOT / "runs" / "deploy_latency"


@dataclass(frozen=True)
class Model:
    """A search config to export from, and the task subset to export as well."""

    name: str
    config: Path
    subset: tuple[str, ...]


MODELS = (
    Model("quickstart CNN", ROOT / "search_spaces" / "quickstart.yaml", ("has_bag", "count")),
    Model("STAR MLP", ROOT / "search_spaces" / "star.yaml", ("readk", "math3")),
    Model("iris MLP (CSV example)", ROOT / "search_spaces" / "csv_example.yaml", ("species",)),
)


def export_bundles(model: Model, trials: int) -> tuple[Path, Path]:
    """The model's bundle and its subset bundle, searched and exported once (reused afterwards)."""
    folder = RUNS / model.config.stem
    full, part = folder / "bundle", folder / "subset"
    if (full / "bundle.json").is_file() and (part / "bundle.json").is_file():
        return full, part
    folder.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load(model.config.read_text())
    raw.setdefault("search", {}).update(n_trials=trials, objective="mean_score", storage=f"sqlite:///{folder / 'study.db'}")
    config = parse_config(raw, str(model.config))
    print(f"  searching {model.name}: {trials} trial(s) of {model.config.name}", flush=True)
    study = run_search(config, progress=False)
    export_trial(study, config.storage, full, formats="onnx,pt2")
    export_trial(study, config.storage, part, formats="onnx,pt2", tasks=model.subset)
    return full, part


def inputs(bundle: Path) -> np.ndarray:
    """1024 real inputs (validation, then test rows; repeated where there are fewer)."""
    data = prepare(read_config(bundle)).data
    x = torch.cat([data.val.x, data.test.x]).numpy()
    return np.ascontiguousarray(np.resize(x, (1024, *x.shape[1:])), dtype=np.float32)


def engines(bundle: Path) -> dict[str, Callable[[np.ndarray], Any]]:
    """One callable per engine, each taking the same float32 array."""
    net = read_bundle(bundle).net
    program = load_program(bundle, trust_code=True)  # written by this script just now
    session = deploy.onnx_session(bundle / "model.onnx", threads=1)

    def eager(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return net(torch.from_numpy(x))

    def exported(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return program(torch.from_numpy(x))

    return {"eager": eager, "torch.export": exported, "ONNX Runtime": lambda x: deploy.run_onnx(session, x)}


@dataclass
class Timing:
    """Per batch size and engine, the time per call of each timed round (seconds)."""

    model: str
    n_params: int
    seconds: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    max_diff: dict[str, float] = field(default_factory=dict)  # per engine, from eager on the 1024 inputs

    def us_per_sample(self, batch: int, engine: str) -> float:
        return 1e6 * statistics.median(self.seconds[batch][engine]) / batch

    def paired_ratio(self, batch: int, engine: str) -> float:
        """Median over rounds of this engine's time over eager's in the same round."""
        times = self.seconds[batch]
        return statistics.median(a / e for a, e in zip(times[engine], times["eager"]))


def measure(model: Model, bundle: Path, rounds: int, warmup: int, bursts: dict[int, int]) -> Timing:
    run = engines(bundle)
    x = inputs(bundle)
    batches = {b: x[:b].copy() for b in BATCHES}
    timing = Timing(model.name, read_bundle(bundle).net.num_parameters())
    for b, xb in batches.items():  # the three agree before they are timed
        outputs = {name: fn(xb) for name, fn in run.items()}
        eager = {t: v.numpy() for t, v in outputs["eager"].items()}
        names = list(eager)
        for name in ("torch.export", "ONNX Runtime"):
            got = outputs[name] if isinstance(outputs[name], dict) else dict(zip(names, outputs[name]))
            diff = deploy.max_abs_difference(eager, got)
            assert diff <= deploy.PARITY_TOLERANCE, (model.name, name, b, diff)
            timing.max_diff[name] = max(timing.max_diff.get(name, 0.0), diff)
    timing.seconds = {b: {name: [] for name in run} for b in BATCHES}
    for r in range(warmup + rounds):
        order = list(run) if r % 2 == 0 else list(run)[::-1]
        for b in BATCHES:
            for name in order:
                fn, xb = run[name], batches[b]
                start = time.perf_counter()
                for _ in range(bursts[b]):
                    fn(xb)
                per_call = (time.perf_counter() - start) / bursts[b]
                if r >= warmup:
                    timing.seconds[b][name].append(per_call)
        if r == warmup - 1 or (r >= warmup and (r - warmup) % 10 == 9):
            print(f"  {model.name}: round {r + 1} of {warmup + rounds}", flush=True)
    return timing


def latency_table(timings: Sequence[Timing]) -> str:
    lines = [
        ("| model | parameters | engine | batch 1: us / sample | ratio to eager (batch 1) | batch 1024: us / sample "
         "| ratio to eager (batch 1024) | max abs difference from eager (batch 1 and 1024 inputs) |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in timings:
        for engine in ENGINES:
            ratios = [f"{t.paired_ratio(b, engine):.2f}x" if engine != "eager" else "1" for b in BATCHES]
            diff = f"{t.max_diff[engine]:.1e}" if engine in t.max_diff else "-"
            lines.append(
                f"| {t.model} | {t.n_params:,} | {engine} | {t.us_per_sample(1, engine):.1f} | {ratios[0]} | "
                f"{t.us_per_sample(1024, engine):.2f} | {ratios[1]} | {diff} |"
            )
    return "\n".join(lines)


def reading(timings: Sequence[Timing]) -> str:
    """What the table says, computed from it (so the words always match the numbers)."""
    lines = ["Reading:", ""]
    for b in BATCHES:
        fastest = {t.model: min(ENGINES, key=lambda e: t.us_per_sample(b, e)) for t in timings}
        ort = [t.paired_ratio(b, "ONNX Runtime") for t in timings]
        pt2 = [t.paired_ratio(b, "torch.export") for t in timings]
        winners = sorted(set(fastest.values()))
        lines.append(
            f"- Batch {b}: fastest engine {', '.join(f'{m}: {e}' for m, e in fastest.items())}"
            + (" (the same on every model)" if len(winners) == 1 else "")
            + f". ONNX Runtime takes {min(ort):.2f}x to {max(ort):.2f}x eager's time, the torch.export program "
            f"{min(pt2):.2f}x to {max(pt2):.2f}x (median per-round ratios)."
        )
    lines += [
        ("- The torch.export program, called as `ExportedProgram.module()`, is generated Python that calls the ATen "
         "operators one at a time, behind the program's input checks, so it brings no speed of its own on the CPU; "
         "it is the input of ahead-of-time compilers (AOTInductor, ExecuTorch). ONNX Runtime runs the whole graph "
         "in C++, which matters most at batch 1, where eager PyTorch's per-operator Python overhead dominates."),
        ("- Absolute times move with the load of this shared machine; the ratios are measured in the same "
         "rounds, so they are what to compare. A task subset costs the blocks of its own subtree only: the "
         "parameter and FLOP shares above."),
    ]
    return "\n".join(lines)


def subset_table(parts: Sequence[tuple[Model, Path]]) -> str:
    lines = [
        "| model | subset | parameters (subset / whole tree) | FLOPs per sample (subset / whole tree) | max abs difference at export (ONNX, torch.export) |",
        "|---|---|---|---|---|",
    ]
    for model, part in parts:
        metrics = json.loads((part / "metrics.json").read_text())
        s, d = metrics["subset"], metrics["deployment"]
        lines.append(
            f"| {model.name} | {', '.join(s['tasks'])} of {len(s['of'])} tasks | {s['n_params']:,} / {s['n_params_full']:,} "
            f"({s['n_params'] / s['n_params_full']:.0%}) | {s['flops']:,} / {s['flops_full']:,} "
            f"({s['flops'] / s['flops_full']:.0%}) | {d['onnx']['max_abs_diff']:.1e}, {d['pt2']['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def section(timings: Sequence[Timing], parts: Sequence[tuple[Model, Path]], command: str, seconds: float,
            rounds: int, warmup: int, bursts: dict[int, int], load: tuple[float, float], notes: str) -> str:  # fmt: skip
    trees = []
    for model, _ in parts:
        bundle = RUNS / model.config.stem / "bundle"
        trees.append(f"{model.name} `{read_bundle(bundle).tree.compact()}`")
    return "\n".join(
        [
            SECTION,
            "",
            ("Inference time of one exported model in three engines on the CPU, one thread each (torch "
             "`set_num_threads(1)`; ONNX Runtime `intra_op_num_threads=1`, `inter_op_num_threads=1`), on the same "
             "real inputs: the eager `BranchedNet` (`torch.inference_mode`), its `torch.export` program (`model.pt2`) "
             "and ONNX Runtime (`model.onnx`), per sample at batch 1 and at batch 1024 (lower is better). Each "
             f"round times a burst of {bursts[1]} calls at batch 1 and {bursts[1024]} at batch 1024 per engine, "
             "the engines' order reversing every other round; the table gives the median over "
             f"{rounds} rounds (after {warmup} warm-up rounds) of the time per call divided by the batch size, and "
             "the median over rounds of each engine's time over eager's in the same round."),
            "",
            f"- command: `{command}`",
            (f"- machine: {machine()}; onnxruntime {_version('onnxruntime')}; load average before the timing "
             f"{load[0]:.1f}, after {load[1]:.1f} (1 min; other processes share these cores)"),
            f"- date: {datetime.date.today().isoformat()}; run time {seconds:.0f} s (searches reused when present)",
            ("- bundles: the best of a small `mean_score` search of each config (runs/deploy_latency/), exported with "
             "`--format onnx,pt2`; trees (task indices per block): " + "; ".join(trees) + "."),
            "",
            latency_table(timings),
            "",
            ("Task subsets (`automtl export --tasks`), against the whole tree of the same trial; the parity columns "
             "are the largest absolute difference from the eager network on the validation rows, checked at export "
             "(limit 1e-4):"),
            "",
            subset_table(parts),
            "",
            reading(timings),
            "",
            notes,
        ]
    ).rstrip() + "\n"


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return "not installed"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--burst-1", type=int, default=50, help="calls per burst at batch 1")
    parser.add_argument("--burst-1024", type=int, default=3, help="calls per burst at batch 1024")
    parser.add_argument("--trials", type=int, default=2, help="trials per search (when the bundles are built)")
    parser.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    parser.add_argument("--notes", type=Path, help="a file whose text ends the section")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    bursts = {1: args.burst_1, 1024: args.burst_1024}
    built = [(m, *export_bundles(m, args.trials)) for m in MODELS]
    before = os.getloadavg()[0]
    timings = [measure(m, full, args.rounds, args.warmup, bursts) for m, full, _ in built]
    load = (before, os.getloadavg()[0])
    command = "python benchmarks/deploy_latency.py " + " ".join(sys.argv[1:] if argv is None else argv)
    notes = args.notes.read_text().strip() if args.notes else ""
    text = section(timings, [(m, part) for m, _, part in built], command.strip(), time.perf_counter() - start,
                   args.rounds, args.warmup, bursts, load, notes)  # fmt: skip
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
