"""What a candidate network costs: parameter count, forward FLOPs and measured inference latency.

These are the cost objectives of a multi-objective search (``search.cost``) and the quantities
of its hard budgets (``search.constraints``). Each is measured on the built network before it is
trained, so a candidate over budget is rejected without training.

* ``n_params``: trainable and frozen parameters of the whole network (heads included), a count.
* ``flops``: floating-point operations of one forward pass of **one sample**, as counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` (matrix multiplications and convolutions,
  two FLOPs per multiply-add; element-wise operations such as activations are not counted).
  A shared prefix is counted once, as :class:`~automtl.build.BranchedNet` computes it once.
* ``latency_ms``: median wall time in milliseconds of one eval-mode forward pass of a batch of
  ``batch_size`` samples (default 1) on the search device, over ``repeats`` runs after
  ``warmup`` untimed runs (CUDA is synchronized around each run). A measured time: it varies
  with the machine and its load, so a study that optimizes it compares trials measured on one
  machine only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from automtl.build import BranchedNet

__all__ = ["BUDGETS", "COSTS", "CostSpec", "count_flops", "measure_costs", "measure_latency_ms"]


@dataclass(frozen=True)
class CostSpec:
    """A cost objective: its name, unit, and the budget key (``search.constraints``) that caps it."""

    name: str
    unit: str
    budget: str


COSTS: dict[str, CostSpec] = {
    "n_params": CostSpec("n_params", "parameters", "max_params"),
    "flops": CostSpec("flops", "FLOPs per sample, forward pass", "max_flops"),
    "latency_ms": CostSpec("latency_ms", "ms per forward pass (median)", "max_latency_ms"),
}
BUDGETS: dict[str, str] = {spec.budget: name for name, spec in COSTS.items()}  # budget key -> cost name


def _example(net: BranchedNet, input_shape: Sequence[int], batch_size: int) -> torch.Tensor:
    device = next(net.parameters()).device
    return torch.zeros(batch_size, *input_shape, device=device)


def count_flops(net: BranchedNet, input_shape: Sequence[int]) -> int:
    """Forward FLOPs of one sample of shape ``input_shape`` (see the module docstring).

    The network is put in eval mode for the count and restored afterwards.
    """
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(_example(net, input_shape, 1))
    finally:
        net.train(was_training)
    return int(counter.get_total_flops())


def measure_latency_ms(
    net: BranchedNet, input_shape: Sequence[int], *, batch_size: int = 1, repeats: int = 30, warmup: int = 5
) -> float:
    """Median eval-mode forward time (ms) of a ``[batch_size, *input_shape]`` batch on the net's device.

    Raises:
        ValueError: ``repeats < 1``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    x = _example(net, input_shape, batch_size)
    cuda = x.device.type == "cuda"
    was_training = net.training
    net.eval()
    times: list[float] = []
    try:
        with torch.no_grad():
            for i in range(warmup + repeats):
                if cuda:
                    torch.cuda.synchronize(x.device)
                start = time.perf_counter()
                net(x)
                if cuda:
                    torch.cuda.synchronize(x.device)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1000.0)
    finally:
        net.train(was_training)
    return statistics.median(times)


def measure_costs(net: BranchedNet, input_shape: Sequence[int], names: Iterable[str]) -> dict[str, float]:
    """The costs ``names`` (keys of :data:`COSTS`) of ``net``; ``n_params`` is always included.

    Raises:
        KeyError: An unknown cost name.
    """
    wanted = set(names) | {"n_params"}
    unknown = wanted - set(COSTS)
    if unknown:
        raise KeyError(f"unknown cost {min(unknown)!r}; expected one of {sorted(COSTS)}")
    out: dict[str, float] = {"n_params": float(net.num_parameters())}
    if "flops" in wanted:
        out["flops"] = float(count_flops(net, input_shape))
    if "latency_ms" in wanted:
        out["latency_ms"] = measure_latency_ms(net, input_shape)
    return out
