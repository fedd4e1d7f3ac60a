"""Redis for tests: the shared one at 127.0.0.1:6379 (with a unique key prefix per test),
or a private ``redis-server`` on a free port that a test may stop and restart."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import redis

# .ci/run starts a Redis when none answers on 6379 and says where.
SHARED_URL = os.environ.get("WARDEN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def dead_url() -> str:
    """A Redis URL where nothing listens (connection refused at once)."""
    return f"redis://127.0.0.1:{free_port()}/0"


class RedisServer:
    """A private redis-server: no persistence, stoppable, restartable on the same port."""

    def __init__(self, workdir: Path, port: int | None = None, *extra: str) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.exe = exe
        self.port = port or free_port()
        self.workdir = workdir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    if client.ping():
                        break
                except redis.AuthenticationError:
                    break  # up, and wants a password
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise
                    time.sleep(0.05)
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise
        finally:
            client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def command_calls(self) -> dict[str, int]:
        """``INFO commandstats`` as {command: calls}."""
        with self.client() as c:
            stats = c.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


class Monitor:
    """``MONITOR`` on a raw socket: the commands clients sent, without the ones scripts
    ran (MONITOR tags those ``[db lua]``)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"MONITOR\r\n")
        self.buffer = b""
        while b"+OK\r\n" not in self.buffer:
            self.buffer += self.sock.recv(4096)
        self.buffer = self.buffer.split(b"+OK\r\n", 1)[1]

    def client_commands(self, settle_s: float = 0.3) -> list[str]:
        self.sock.settimeout(settle_s)
        try:
            while chunk := self.sock.recv(65536):
                self.buffer += chunk
        except TimeoutError:
            pass
        self.sock.close()
        commands = []
        for line in self.buffer.decode(errors="replace").splitlines():
            if "[" in line and " lua]" not in line:
                commands.append(line.split("] ", 1)[1].split(" ", 1)[0].strip('"').lower())
        return commands


class RedisCluster:
    """Three private masters in cluster mode (no replicas), on free ports."""

    def __init__(self, workdir: Path) -> None:
        options = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        self.nodes = [RedisServer(workdir / f"n{i}", free_cluster_port(), *options)
                      for i in range(3)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisCluster:
        try:
            for node in self.nodes:
                node.start()
            exe = shutil.which("redis-cli")
            if exe is None:
                raise RuntimeError("redis-cli is not installed")
            subprocess.run([exe, "--cluster", "create",
                            *(f"127.0.0.1:{n.port}" for n in self.nodes),
                            "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True, timeout=30)
            deadline = time.monotonic() + 15
            while not all(self._converged(n) for n in self.nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not converge")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _converged(node: RedisServer) -> bool:
        with node.client() as c:
            return b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
