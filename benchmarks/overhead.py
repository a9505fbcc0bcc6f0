"""Framework overhead: automtl's training epoch against a hand-written PyTorch loop on the same model.

Two contestants train copies of one network, hard parameter sharing (``hps``), equal weighting:

* **automtl**: :func:`automtl.train.fit` for one epoch (``TrainConfig(epochs=1)``), the real code
  path: it moves the splits to the device, builds the AdamW optimizer, iterates
  ``Split.batches`` (shuffled by a seeded generator), runs ``BranchedNet.features`` and
  ``heads_forward``, :func:`automtl.train.task_losses` (masked losses), the non-finite-loss
  check, :class:`automtl.balance.EqualWeighting`'s backward, ``optimizer.step()``, the per-task
  loss and weight bookkeeping and ``balancer.on_epoch_end``. Per-epoch **validation is
  disabled** while timing (``automtl.train.evaluate`` is replaced by a stub that returns 0 for
  every metric; its cost is measured separately and reported below the table, not in the ratio).
* **plain PyTorch**: a hand-written loop over the same tensors and the same batches
  (``torch.randperm`` with the same seeded generator, ``tensor[idx]``), an ``nn.Module``
  with identical parameters (``nn.Sequential`` of the same blocks, ``nn.ModuleList`` of the
  same heads), per task ``loss(out[mask], y[mask])`` where the batch has a label, summed, one
  ``backward()``, AdamW (built once per epoch, as ``fit`` does) ``step()``. No bookkeeping, no
  NaN check.
* **plain PyTorch, index_select**: the same loop picking the batch's rows with
  ``tensor.index_select(0, idx)`` instead of ``tensor[idx]``, the faster call automtl's
  ``Split.subset`` uses. The goal is judged against the faster of the two plain loops, so
  automtl gets no credit for a faster row selection than the hand-written loop it is held to.

With ``--loss-attribution`` another contestant is the plain loop with automtl's registered
per-sample loss functions followed by ``.mean()`` (what :func:`automtl.losses.masked_loss` runs)
in place of PyTorch's fused mean losses: the share of the overhead that the loss contract costs.
With ``--reference FILE`` a further contestant runs the ``fit`` of another version of
``automtl/train.py`` (say, the one before an optimisation) on a third copy of the network, in the
same rounds, so a before/after comparison is side by side too.

Each timed region is one whole epoch, optimizer construction included for every contestant,
timed by two clocks: wall (``time.perf_counter``) and this thread's CPU time
(``time.thread_time``; with one intra-op thread it is all the work done, and, unlike wall time,
it leaves out the waits for a core that other processes on a shared machine hold). Every round
runs each contestant once, in an order that reverses every other round, so load from other
processes hits all alike; after the warm-up rounds the table reports the median epoch time
over the timed rounds divided by the number of steps (ms per step), the ratio of the medians,
and the median of the per-round ratios. Networks:

* ``quickstart CNN``: ``search_spaces/quickstart.yaml`` (``small_cnn`` 8/16/32, hidden 32;
  ``fashion_scenes``, 11 tasks, 3,000 training scenes), batch 64: 47 steps per epoch;
* ``STAR MLP``: ``mlp`` 256/128/64 on ``star`` (8 regression tasks, 8,118 students), batch 128:
  64 steps per epoch.

Goal (issue 5): automtl at most 1.05x the faster hand-written loop.

Usage::

    python benchmarks/overhead.py                    # print the table (2-3 minutes on an idle CPU)
    python benchmarks/overhead.py --write            # also update benchmarks/RESULTS.md
    python benchmarks/overhead.py --rounds 5 --warmup 1   # a quick look
    git show HEAD~1:automtl/train.py > /tmp/train_before.py
    python benchmarks/overhead.py --reference /tmp/train_before.py   # also time an older fit, interleaved
    python benchmarks/overhead.py --loss-attribution  # also the plain loop with automtl's loss functions
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import automtl.train
from automtl.balance import create_balancer
from automtl.build import BranchedNet, build_model
from automtl.config import SearchConfig
from automtl.data import MultiTaskData, Split
from automtl.experiment import prepare
from automtl.fixed import default_train_config
from automtl.losses import LOSSES
from automtl.tasks import TaskSpec
from automtl.train import TrainConfig, evaluate, seed_everything
from automtl.tree import BranchTree
from benchmarks.affinity_common import quickstart_config, star_config
from benchmarks.results_md import machine, write_section

SECTION = "## Framework overhead"
GOAL = 1.05
STRICT = "plain, index_select"
NETWORKS: dict[str, Callable[[], SearchConfig]] = {"quickstart CNN": quickstart_config, "STAR MLP": star_config}
PLAIN_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bce": lambda out, y: F.binary_cross_entropy_with_logits(out, y.to(out.dtype)),
    "mse": F.mse_loss,
}


class PlainNet(nn.Module):
    """Hard parameter sharing written by hand: a trunk and one linear head per task."""

    def __init__(self, trunk: nn.Sequential, heads: nn.ModuleList) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = heads

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.trunk(x)
        return [head(h).squeeze(-1) for head in self.heads]


def plain_copy(net: BranchedNet) -> PlainNet:
    """A :class:`PlainNet` with deep copies of ``net``'s blocks (in tree order) and heads."""
    blocks = [copy.deepcopy(net.node_module(node)) for node in net.tree.nodes()]
    heads = [copy.deepcopy(net.heads[t.name]) for t in net.tasks]
    return PlainNet(nn.Sequential(*blocks), nn.ModuleList(heads))


def automtl_loss_functions() -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """automtl's registered per-sample losses followed by ``.mean()``, as :func:`automtl.losses.masked_loss` runs them."""

    def mean_of(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        per_sample = LOSSES.get(name)
        return lambda out, y: per_sample(out, y).mean()

    return {name: mean_of(name) for name in PLAIN_LOSSES}


def plain_epoch(
    model: PlainNet,
    split: Split,
    tasks: Sequence[TaskSpec],
    config: TrainConfig,
    losses: Mapping[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = PLAIN_LOSSES,
    index_select: bool = False,
) -> int:
    """One epoch of the hand-written loop (same batches as ``fit`` with ``config.seed``); returns steps.

    Rows are picked with ``tensor[idx]``, as most hand-written loops do, or, with
    ``index_select=True``, with ``tensor.index_select(0, idx)`` as :meth:`automtl.data.Split.subset` does.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    x, ys, masks = split.x, [split.y[t.name] for t in tasks], [split.mask[t.name] for t in tasks]
    loss_fns = [losses[t.loss] for t in tasks]
    model.train()
    order = torch.randperm(len(x), generator=generator)
    steps = 0
    for start in range(0, len(x), config.batch_size):
        idx = order[start : start + config.batch_size]
        rows = (lambda t: t.index_select(0, idx)) if index_select else (lambda t: t[idx])
        outputs = model(rows(x))
        total = None
        for out, y, mask, loss_fn in zip(outputs, ys, masks, loss_fns):
            m = rows(mask)
            if m.any():
                loss = loss_fn(out[m], rows(y)[m])
                total = loss if total is None else total + loss
        if total is None:
            continue
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        steps += 1
    return steps


@contextlib.contextmanager
def validation_disabled(train_module: ModuleType) -> Iterator[None]:
    """Inside, ``train_module.fit``'s per-epoch validation returns metrics of 0 at once (nothing else changes)."""
    real = train_module.evaluate

    def stub(net: BranchedNet, split: Split, tasks: Sequence[TaskSpec], batch_size: int = 2048) -> dict[str, float]:
        return {t.name: 0.0 for t in tasks}

    train_module.evaluate = stub
    try:
        yield
    finally:
        train_module.evaluate = real


def automtl_epoch(net: BranchedNet, data: MultiTaskData, config: TrainConfig, train_module: ModuleType = automtl.train) -> None:
    """One epoch through the real ``fit`` of ``train_module`` (:mod:`automtl.train`), validation stubbed out."""
    with validation_disabled(train_module):
        train_module.fit(net, data, create_balancer("equal", data.task_names), config)


def load_train_module(path: Path) -> ModuleType:
    """Import another version of ``automtl/train.py`` (e.g. ``git show REV:automtl/train.py > FILE``)."""
    spec = importlib.util.spec_from_file_location("reference_train", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@dataclass
class Timing:
    """Per-round epoch times (seconds) of every contestant: wall clock and this thread's CPU time."""

    network: str
    steps: int
    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    validation: list[float] = field(default_factory=list)

    def ms_per_step(self, clock: str, who: str) -> float:
        return 1000.0 * statistics.median(getattr(self, clock)[who]) / self.steps

    def ratio(self, clock: str, who: str = "automtl", against: str = "plain") -> float:
        """Median epoch of ``who`` over the median epoch of ``against``."""
        times = getattr(self, clock)
        return statistics.median(times[who]) / statistics.median(times[against])

    def paired_ratio(self, clock: str, who: str = "automtl", against: str = "plain") -> float:
        """Median over rounds of the epoch of ``who`` over the epoch of ``against`` in the same round."""
        times = getattr(self, clock)
        return statistics.median(a / p for a, p in zip(times[who], times[against]))


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and thread CPU seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


def measure(
    network: str,
    config: SearchConfig,
    rounds: int,
    warmup: int,
    reference: ModuleType | None = None,
    loss_attribution: bool = False,
) -> Timing:
    """Interleave one epoch of each contestant per round; the order reverses every other round."""
    experiment = prepare(config)
    data = experiment.data
    train = default_train_config(config, 0, epochs=1)
    tree = BranchTree.hard_sharing(data.task_names, experiment.backbone.n_blocks)
    seed_everything(0)
    net = build_model(tree, experiment.backbone, data.tasks, "cpu")
    plain = plain_copy(net)
    plain_strict = copy.deepcopy(plain)
    steps = plain_epoch(copy.deepcopy(plain), data.train, data.tasks, train)
    timing = Timing(network, steps)
    contestants: dict[str, Callable[[], object]] = {
        "automtl": lambda: automtl_epoch(net, data, train),
        "plain": lambda: plain_epoch(plain, data.train, data.tasks, train),
        STRICT: lambda: plain_epoch(plain_strict, data.train, data.tasks, train, index_select=True),
    }
    if reference is not None:
        reference_net = copy.deepcopy(net)
        contestants["reference"] = lambda: automtl_epoch(reference_net, data, train, reference)
    if loss_attribution:
        plain_with_automtl_losses = copy.deepcopy(plain)
        automtl_losses = automtl_loss_functions()
        contestants["plain + automtl losses"] = lambda: plain_epoch(
            plain_with_automtl_losses, data.train, data.tasks, train, automtl_losses
        )
    for name in contestants:
        timing.wall[name], timing.cpu[name] = [], []
    for r in range(warmup + rounds):
        order = list(contestants) if r % 2 == 0 else list(contestants)[::-1]
        seconds = {name: _timed(contestants[name]) for name in order}
        val, _ = _timed(lambda: evaluate(net, data.val, data.tasks, train.eval_batch_size))
        if r >= warmup:
            for name, (wall, cpu) in seconds.items():
                timing.wall[name].append(wall)
                timing.cpu[name].append(cpu)
            timing.validation.append(val)
        times = ", ".join(f"{name} {w:.3f} s (CPU {c:.3f} s)" for name, (w, c) in seconds.items())
        print(f"  {network} round {r}{' (warm-up)' if r < warmup else ''}: {times}, validation {val:.3f} s", flush=True)
    return timing


def _goal(ratio: float) -> str:
    return "met" if ratio <= GOAL else "NOT met"


def _judged(t: Timing, clock: str) -> float:
    """automtl against the faster of the two hand-written loops (median epochs)."""
    return max(t.ratio(clock), t.ratio(clock, against=STRICT))


def table(timings: list[Timing]) -> str:
    """One row per network and clock; every extra contestant (``--reference``, ``--loss-attribution``)
    gets a column with its ms per step and its ratio to the plain loop."""
    extras = [name for name in timings[0].wall if name not in ("automtl", "plain", STRICT)]
    extra_head = "".join(f" {name} (ms / step, ratio to plain) |" for name in extras)
    lines = [
        ("| network | steps / epoch | clock | automtl `fit` (ms / step) | plain `t[idx]` (ms / step) "
        f"| plain `index_select` (ms / step) | ratio to plain `t[idx]` | ratio to plain `index_select` "
        f"| median per-round ratio (`t[idx]`, `index_select`) | goal <= {GOAL}x against the faster plain loop |{extra_head}"),
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(extras),
    ]
    for t in timings:
        for clock, label in (("wall", "wall"), ("cpu", "thread CPU")):
            extra = "".join(f" {t.ms_per_step(clock, name):.2f} ({t.ratio(clock, name):.3f}x) |" for name in extras)
            strict, paired_strict = t.ratio(clock, against=STRICT), t.paired_ratio(clock, against=STRICT)
            lines.append(
                f"| {t.network} | {t.steps} | {label} | {t.ms_per_step(clock, 'automtl'):.2f} | "
                f"{t.ms_per_step(clock, 'plain'):.2f} | {t.ms_per_step(clock, STRICT):.2f} | {t.ratio(clock):.3f}x | "
                f"{strict:.3f}x | {t.paired_ratio(clock):.3f}x, {paired_strict:.3f}x | "
                f"{_goal(_judged(t, clock))} ({_judged(t, clock):.3f}x) |{extra}"
            )
    validation = ", ".join(f"{t.network} {1000 * statistics.median(t.validation):.0f} ms" for t in timings)
    return "\n".join(lines) + f"\n\nValidation per epoch (wall, median; in `fit` but not in the ratio): {validation}."


def section(timings: list[Timing], command: str, seconds: float, rounds: int, warmup: int, notes: str) -> str:
    return "\n".join(
        [
            SECTION,
            "",
            ("Time of one training epoch through `automtl.train.fit` (hard parameter sharing, `equal`) against a "
            "hand-written PyTorch loop on the same parameters and the same batches, interleaved in one run; "
            f"median over {rounds} rounds after {warmup} warm-up rounds, per step (lower is better); ratio = automtl / plain "
            f"(goal <= {GOAL}x against the faster of the two hand-written loops)."),
            "",
            f"- command: `{command}`",
            f"- machine: {machine()}",
            f"- date: {datetime.date.today().isoformat()}; run time {seconds:.0f} s",
            ("- clocks: wall (`time.perf_counter`) and this thread's CPU time (`time.thread_time`; one intra-op "
            "thread, so it is all the work done, and it does not count time spent waiting for a core the other "
            "processes on this shared machine hold)."),
            ("- inside automtl's timed region: the whole `fit(net, data, equal, TrainConfig(epochs=1))` call (split "
            "`.to(device)`, optimizer construction, shuffled `Split.batches`, `features` + `heads_forward`, masked "
            "`task_losses`, the non-finite check, `EqualWeighting.backward`, `AdamW.step`, loss/weight bookkeeping, "
            "`on_epoch_end`), with per-epoch validation replaced by a stub (timed on its own, below the table)."),
            ("- inside the plain loop's timed region: AdamW construction, `randperm` with the same seeded generator, "
            "index the tensors (`t[idx]`, or `t.index_select(0, idx)` in the second plain loop), forward through `nn.Sequential(blocks)` + `ModuleList(heads)` (deep copies of the same "
            "modules), per task `loss(out[m], y[m])` where labelled, summed, `backward`, `step`."),
            ("- networks: quickstart CNN = `small_cnn` (8/16/32, hidden 32) on `fashion_scenes` (11 tasks, 3,000 "
            "training scenes), batch 64, lr 1.7e-3; STAR MLP = `mlp` (256/128/64) on `star` (8 tasks, 8,118 students), "
            "batch 128, lr 1e-3."),
            "",
            table(timings),
            "",
            notes,
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    parser.add_argument("--notes", type=Path, default=None, help="a file whose text ends the section")
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="another automtl/train.py (e.g. from `git show REV:automtl/train.py`) whose fit runs as a third contestant",
    )
    parser.add_argument(
        "--loss-attribution",
        action="store_true",
        help="add the plain loop with automtl's per-sample loss functions (+ .mean()) as a contestant",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    reference = load_train_module(args.reference) if args.reference else None
    timings = [
        measure(name, make(), args.rounds, args.warmup, reference, args.loss_attribution)
        for name, make in NETWORKS.items()
    ]
    notes = args.notes.read_text().strip() if args.notes else ""
    command = "python benchmarks/overhead.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = section(timings, command.strip(), time.perf_counter() - start, args.rounds, args.warmup, notes)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
