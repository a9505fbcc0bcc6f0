"""Deployment formats: ONNX and ``torch.export``, each checked against the eager network.

``automtl export --format onnx,pt2`` writes, beside the safetensors weights,

* ``model.onnx``: ``torch.onnx.export`` with the dynamo exporter; one input ``x``
  ``[batch, *input_shape]`` float32 and one output per task, named after it, in task order
  (the network's raw outputs: logits, or standardized regression values);
* ``model.pt2``: a ``torch.export`` program (``torch.export.save``) with the same input and
  outputs (a tuple in task order).

Both have a dynamic batch size. At export each file is read back (ONNX by ONNX Runtime, the
program by ``torch.export.load``) and run on held-out inputs, the validation split's rows (at
most :data:`PARITY_ROWS`); the largest absolute difference from the eager network is reported,
and the export fails above :data:`PARITY_TOLERANCE`.

ONNX needs the ``deploy`` extra (``pip install 'automtl[deploy]'``: onnx, onnxscript,
onnxruntime); it is imported only when asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from automtl.build import BranchedNet
from automtl.errors import ParityError

__all__ = [
    "FORMATS",
    "PARITY_ROWS",
    "PARITY_TOLERANCE",
    "TaskOutputs",
    "export_onnx",
    "export_program",
    "format_deployment",
    "max_abs_difference",
    "onnx_session",
    "parse_formats",
    "run_onnx",
    "write_deployment",
]

#: Export formats; ``safetensors`` (the weights) is always written.
FORMATS: tuple[str, ...] = ("safetensors", "onnx", "pt2")
#: Largest absolute difference from the eager network an export may show on held-out inputs.
PARITY_TOLERANCE = 1e-4
#: At most this many validation rows are compared.
PARITY_ROWS = 2048


def require_deploy(module: str) -> ModuleType:
    """Import a module of the ``deploy`` extra.

    Raises:
        ImportError: It is not installed; the message says ``pip install 'automtl[deploy]'``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"ONNX export and inference need '{module}': pip install 'automtl[deploy]'") from exc


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """``"onnx,pt2"`` or ``["onnx"]`` to the formats to write, ``safetensors`` first, each once.

    Raises:
        ValueError: An unknown format (named, with the known ones).
    """
    names = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats)]
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise ValueError(f"unknown export format(s) {unknown or names}; expected some of {list(FORMATS)}")
    return ("safetensors", *(f for f in FORMATS[1:] if f in names))


class TaskOutputs(nn.Module):
    """A network's outputs as a tuple in task order (what the exporters trace)."""

    def __init__(self, net: BranchedNet) -> None:
        super().__init__()
        self.net = net
        self.names = [t.name for t in net.tasks]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(x)
        return tuple(out[name] for name in self.names)


def _dynamic_batch() -> dict[str, dict[int, Any]]:
    return {"x": {0: torch.export.Dim("batch")}}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' warnings and log lines (e.g. optional torchvision ops) stay off the terminal."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _example(held_out: torch.Tensor) -> torch.Tensor:
    """Two samples to trace with (a batch of 1 would fix the batch size)."""
    return held_out[:2] if len(held_out) >= 2 else held_out[:1].repeat(2, *([1] * (held_out.dim() - 1)))


def export_program(net: BranchedNet, held_out: torch.Tensor, path: Path) -> None:
    """Write ``net`` (eval mode) as a ``torch.export`` program with a dynamic batch size."""
    module = TaskOutputs(net).eval()
    with _quiet(), torch.no_grad():
        program = torch.export.export(module, (_example(held_out),), dynamic_shapes=_dynamic_batch())
        torch.export.save(program, str(path))


def export_onnx(net: BranchedNet, held_out: torch.Tensor, path: Path) -> None:
    """Write ``net`` (eval mode) as ONNX (dynamo exporter): input ``x``, one output per task.

    Raises:
        ImportError: ``onnx`` or ``onnxscript`` is not installed.
    """
    require_deploy("onnx")
    require_deploy("onnxscript")
    module = TaskOutputs(net).eval()
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            module,
            (_example(held_out),),
            str(path),
            dynamo=True,
            input_names=["x"],
            output_names=list(module.names),
            dynamic_shapes=_dynamic_batch(),
            external_data=False,  # one self-contained file (the networks are far below protobuf's 2 GB)
            verbose=False,
        )


def onnx_session(path: str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads.

    Raises:
        ImportError: ``onnxruntime`` is not installed.
    """
    ort = require_deploy("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """``{task: output}`` of an ONNX session on float32 ``x``."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"x": np.ascontiguousarray(x, dtype=np.float32)})))


def max_abs_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Largest absolute difference between two ``{task: array}`` of the same tasks (NaN counts as inf)."""

    def array(value: Any) -> np.ndarray:
        value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        return np.asarray(value, dtype=np.float64)

    worst = 0.0
    for task, value in a.items():
        diff = np.abs(array(value) - array(b[task]))
        worst = max(worst, float(np.nan_to_num(diff, nan=math.inf).max(initial=0.0)))
    return worst


def write_deployment(
    folder: Path, net: BranchedNet, formats: Sequence[str], held_out: torch.Tensor, files: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Export ``net`` in each of ``formats`` (``onnx``, ``pt2``) into ``folder`` and check parity.

    Args:
        folder: The bundle folder being written.
        net: The network, in eval mode, on the CPU.
        formats: Deployment formats to write (others, e.g. ``safetensors``, are skipped).
        held_out: Inputs to compare on (validation rows); at most :data:`PARITY_ROWS` are used.
        files: Format name to file name.

    Returns:
        Per format: its file, the largest absolute difference from the eager network, the
        number of inputs compared and the tolerance.

    Raises:
        ParityError: A format differs from the eager network by more than the tolerance.
        ImportError: ONNX asked for without the ``deploy`` extra.
    """
    x = held_out[:PARITY_ROWS].detach().cpu().float()
    with torch.no_grad():
        eager = {t: v.numpy() for t, v in net.eval()(x).items()}
    report: dict[str, dict[str, Any]] = {}
    for fmt in formats:
        if fmt == "safetensors":
            continue
        path = folder / files[fmt]
        if fmt == "onnx":
            export_onnx(net, x, path)
            outputs = run_onnx(onnx_session(path), x.numpy())
        else:
            export_program(net, x, path)
            with _quiet(), torch.no_grad():
                program = torch.export.load(str(path)).module()  # our own file, written just now
                outputs = dict(zip(TaskOutputs(net).names, (v.numpy() for v in program(x))))
        if set(outputs) != set(eager):
            raise ParityError(f"{fmt}: outputs {sorted(outputs)} differ from the tasks {sorted(eager)}")
        diff = max_abs_difference(eager, outputs)
        if not diff <= PARITY_TOLERANCE:
            raise ParityError(
                f"{fmt}: max abs difference {diff:.3g} from the eager network on {len(x)} validation inputs "
                f"exceeds {PARITY_TOLERANCE:g}; nothing was written"
            )
        report[fmt] = {"file": files[fmt], "max_abs_diff": diff, "inputs": len(x), "tolerance": PARITY_TOLERANCE}
    return report


def format_deployment(metrics: Mapping[str, Any]) -> str:
    """What ``export`` adds to its report: each deployment file's parity, and a task subset's cost."""
    lines = []
    for fmt, entry in (metrics.get("deployment") or {}).items():
        lines.append(
            f"{fmt}: {entry['file']}; max abs difference from the eager network on {entry['inputs']} validation "
            f"inputs {entry['max_abs_diff']:.3g} (lower is better; limit {entry['tolerance']:g})"
        )
    subset = metrics.get("subset")
    if subset:
        lines.append(
            f"task subset {subset['tasks']} of {len(subset['of'])} tasks: {subset['n_params']:,} parameters "
            f"(full tree {subset['n_params_full']:,}, {subset['n_params'] / subset['n_params_full']:.1%}), "
            f"{subset['flops']:,} FLOPs per sample (full tree {subset['flops_full']:,}, "
            f"{subset['flops'] / max(subset['flops_full'], 1):.1%}); lower is cheaper"
        )
    return "\n".join(lines)
