"""Writing one benchmark's section of ``benchmarks/RESULTS.md``, and the machine line every table carries.

Several benchmark scripts may run at once; :func:`write_section` holds an exclusive lock on
``RESULTS.md.lock`` while it reads, replaces its own ``## `` section and writes the file back, so
one script never overwrites another's section.
"""

from __future__ import annotations

import fcntl
import os
import platform
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"

__all__ = ["RESULTS", "ROOT", "machine", "write_section"]


def machine() -> str:
    """CPU model, visible cores, torch version and intra-op threads, Python version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = f"; GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "; CPU only"
    return (
        f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} "
        f"({torch.get_num_threads()} thread(s)), Python {platform.python_version()}{gpu}"
    )


def write_section(text: str, path: Path = RESULTS) -> None:
    """Replace the section of ``path`` whose heading is ``text``'s first line (``## ...``), or append it.

    Raises:
        ValueError: ``text`` does not start with a ``## `` heading.
    """
    heading = text.splitlines()[0] if text else ""
    if not heading.startswith("## "):
        raise ValueError(f"a section starts with a '## ' heading, got {heading!r}")
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = path.read_text() if path.exists() else "# Benchmark results\n"
        start = old.find(heading + "\n")
        if start < 0:
            new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
        else:
            nxt = old.find("\n## ", start + len(heading))
            new = old[:start] + text.rstrip("\n") + "\n" + ("\n" + old[nxt + 1 :] if nxt >= 0 else "")
        path.write_text(new)
