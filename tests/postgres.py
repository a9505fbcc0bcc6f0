"""A private PostgreSQL server for the tests: its own cluster in a temporary folder, on a free
port of 127.0.0.1, stopped at the end of the session whatever happens.

:func:`find_server` looks for ``pg_ctl`` and ``initdb`` on ``PATH``, then in Debian's
``/usr/lib/postgresql/<version>/bin`` (the ``postgresql`` package; ``.ci/run`` installs it).
:class:`PostgresServer` runs ``initdb`` and ``pg_ctl`` as the ``postgres`` user when the tests run
as root (``initdb`` refuses root), with trust authentication on loopback only, and without
``fsync`` (a throwaway cluster: the tests need its concurrency, not its durability).

The fixtures ``postgres_server`` (session) and ``postgres_url`` (a new, empty database per test)
live in ``tests/conftest.py``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

__all__ = ["NO_SERVER", "PostgresServer", "find_server"]

#: The skip reason of a test that needs the server where none is installed.
NO_SERVER = (
    "no PostgreSQL server binaries (pg_ctl, initdb) on PATH or in /usr/lib/postgresql/*/bin: "
    "apt-get install -y postgresql (.ci/run installs it, so CI never skips this)"
)


def find_server() -> Path | None:
    """The folder holding ``pg_ctl`` and ``initdb`` (the newest Debian version first); ``None`` if absent."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version(p.parent.name), reverse=True)
    for folder in versions:
        if (folder / "pg_ctl").is_file() and (folder / "initdb").is_file():
            return folder
    return None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A PostgreSQL cluster of its own; :meth:`start` it, :meth:`stop` it (idempotent).

    Args:
        bin_dir: The folder of ``initdb``, ``pg_ctl`` and ``createdb`` (:func:`find_server`).
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = 0
        self.root: Path | None = None
        self._started = False
        self._as_postgres = os.geteuid() == 0 if hasattr(os, "geteuid") else False

    # ----------------------------------------------------------------------------------- running
    def _run(self, args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, cwd="/")
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip() or result.stdout.strip()}")
        return result

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def start(self, attempts: int = 3) -> None:
        """``initdb`` in a new temporary folder, then ``pg_ctl start`` on a free loopback port
        (another port when that one was taken meanwhile)."""
        self.root = Path(tempfile.mkdtemp(prefix="automtl-pg-"))
        atexit.register(self.stop)  # also when the session ends without the fixture's finalizer
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(["initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"], timeout=120)
        options = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        error: Exception | None = None
        for _ in range(attempts):
            self.port = _free_port()
            try:
                self._run(
                    ["pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir), "-l", str(self.root / "server.log"),
                     "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root} {options}"],
                    timeout=90,
                )  # fmt: skip
            except RuntimeError as exc:
                error = exc
                continue
            self._started = True
            return
        raise RuntimeError(f"PostgreSQL did not start: {error}; log: {self.log_tail()}")

    def stop(self) -> None:
        """Stop the server (fast shutdown, then immediate) and delete its folder."""
        if self.root is None:
            return
        if self._started:
            for mode in ("fast", "immediate"):
                try:
                    self._run(["pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "30"], timeout=45)
                    break
                except (RuntimeError, subprocess.TimeoutExpired):
                    continue
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log (for error messages)."""
        if self.root is None or not (self.root / "server.log").is_file():
            return "(no log)"
        return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-lines:])

    # ---------------------------------------------------------------------------------- databases
    def url(self, database: str = "postgres") -> str:
        """``postgresql://postgres@127.0.0.1:PORT/DATABASE``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create a new database (a fresh name by default); returns its URL."""
        name = name or f"automtl_{uuid.uuid4().hex[:12]}"
        deadline = time.monotonic() + 30
        while True:
            try:
                self._run(["createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name])
                return self.url(name)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
