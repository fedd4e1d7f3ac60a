"""What the machine itself costs: the round trip between two processes on loopback.

Every figure in a run goes through such hops (client -> proxy -> mock and back), and on a
virtual machine the time to wake a sleeping process can dominate them: one run measured
~130 µs per round trip where bare metal takes ~20. Printed with each run's conditions so
runs on different machines can be compared by their ratios, not their milliseconds.
"""

from __future__ import annotations

import multiprocessing
import socket
import statistics
import time


def _echo(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := conn.recv(256):
        conn.sendall(data)


def loopback_rtt_us(round_trips: int = 2000) -> float:
    """Median microseconds for 100 bytes to another process and back over TCP loopback,
    each side blocking on its socket (so every hop includes waking the other side)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    child = multiprocessing.get_context("fork").Process(target=_echo, args=(listener,))
    child.start()
    try:
        with socket.create_connection(listener.getsockname()) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            samples = []
            for _ in range(round_trips):
                started = time.perf_counter()
                conn.sendall(b"x" * 100)
                got = 0
                while got < 100:
                    got += len(conn.recv(256))
                samples.append(time.perf_counter() - started)
    finally:
        listener.close()
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
    return statistics.median(samples) * 1e6
