"""Server processes for the benchmark: start, wait until ready, measure RSS, stop.

Each server runs in its own session (process group) so stopping it also stops any
worker it forked, and nothing else; every process started here is stopped by the
``Servers`` context manager, also on Ctrl-C or an error.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    """A port free on loopback right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get_status(host: str, port: int, path: str, timeout: float = 0.5) -> int | None:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Field 4 (ppid) follows the ")" that ends the command name, which may hold spaces.
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    tree = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident memory of these processes added up (VmRSS; gone processes count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time these processes have used so far (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _TICK


@dataclass
class Server:
    """One started server: what it is, where it listens, its log, its readiness probe."""

    name: str
    argv: Sequence[str]
    port: int
    ready_path: str
    log_path: Path
    env: Mapping[str, str]
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_s: float | None = None
    pids: list[int] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            list(self.argv), env=dict(self.env), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()  # the child holds its own copy

    def wait_ready(self, timeout: float) -> float:
        """Seconds from spawn until the readiness probe answered 200."""
        assert self.proc is not None
        deadline = self.started_at + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before "
                                   f"it was ready; log:\n{self.log_tail()}")
            if http_get_status(self.host, self.port, self.ready_path) == 200:
                self.ready_s = time.perf_counter() - self.started_at
                self.pids = process_tree(self.proc.pid)
                return self.ready_s
            time.sleep(0.01)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s; log:\n"
                           f"{self.log_tail()}")

    def rss(self) -> int:
        assert self.proc is not None
        # Re-read the tree: a server may fork workers after its readiness probe answers.
        self.pids = process_tree(self.proc.pid)
        return rss_bytes(self.pids)

    def cpu(self) -> float:
        return cpu_seconds(self.pids)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


class Servers:
    """Owns every server of one run; stops them all on exit, in reverse start order."""

    def __init__(self) -> None:
        self._started: list[Server] = []

    def __enter__(self) -> Servers:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()

    def start(self, server: Server, timeout: float) -> Server:
        self._started.append(server)
        server.start()
        server.wait_ready(timeout)
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        if server in self._started:
            self._started.remove(server)

    def stop_all(self) -> None:
        while self._started:
            self._started.pop().stop()

    def __iter__(self) -> Iterator[Server]:
        return iter(self._started)
