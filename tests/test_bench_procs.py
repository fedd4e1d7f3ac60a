"""bench/procs.py: servers start, report readiness, RSS and CPU, and are always stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import procs
from bench.procs import Server, Servers

# A server that forks a child (as multi-worker servers do) and answers GET /ready.
SERVER = """
import http.server, os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
time.sleep(float(sys.argv[2]))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ready" else 404); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _server(tmp_path: Path, delay: float = 0.2, script: str = SERVER) -> Server:
    port = procs.free_port()
    return Server(name="t", argv=[sys.executable, "-c", script, str(port), str(delay)],
                  port=port, ready_path="/ready", log_path=tmp_path / "t.log",
                  env=dict(os.environ))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still has a pid until its parent reaps it.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_start_ready_measure_stop(tmp_path: Path) -> None:
    with Servers() as servers:
        srv = servers.start(_server(tmp_path, delay=0.3), timeout=20)
        assert srv.ready_s is not None and srv.ready_s >= 0.3
        time.sleep(0.2)
        tree = procs.process_tree(srv.proc.pid)  # type: ignore[union-attr]
        assert len(tree) == 2  # the server and the child it forked
        assert srv.rss() > 5 * 2**20  # two Python interpreters
        assert srv.cpu() > 0
    # Leaving the block stopped the whole process group, child included.
    time.sleep(0.2)
    assert not any(_alive(p) for p in tree)


def test_servers_stop_on_error(tmp_path: Path) -> None:
    pid = 0
    with pytest.raises(RuntimeError, match="boom"), Servers() as servers:
        srv = servers.start(_server(tmp_path), timeout=20)
        pid = srv.proc.pid  # type: ignore[union-attr]
        raise RuntimeError("boom")
    time.sleep(0.1)
    assert pid and not _alive(pid)


def test_server_that_dies_is_reported_with_its_log(tmp_path: Path) -> None:
    srv = _server(tmp_path, script="import sys; print('cannot bind'); sys.exit(3)")
    with Servers() as servers, pytest.raises(RuntimeError, match="exited with 3") as err:
        servers.start(srv, timeout=20)
    assert "cannot bind" in str(err.value)


def test_server_never_ready_times_out(tmp_path: Path) -> None:
    srv = _server(tmp_path, delay=30)
    with Servers() as servers, pytest.raises(TimeoutError):
        servers.start(srv, timeout=0.5)
    assert srv.proc is not None and srv.proc.poll() is not None


def test_rss_and_cpu_of_gone_processes_count_zero() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert procs.rss_bytes([p.pid]) == 0
    assert procs.cpu_seconds([p.pid]) == 0
    assert procs.rss_bytes([os.getpid()]) > 0
