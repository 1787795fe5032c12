"""Stopping the processes a test started (servers, browsers, trainings): one helper for every module."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20, group: bool = False) -> None:
    """Send ``sig`` (to the process group with ``group``, for a process started with
    ``start_new_session=True``), wait ``timeout`` s, then SIGKILL. Nothing happens to a process that ended."""
    if proc.poll() is not None:
        return

    def send(signum: int) -> None:
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)

    try:
        send(sig)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            send(signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


# Under pytest-xdist each worker takes its servers' ports from its own block below the kernel's
# ephemeral range (32768-60999 on Linux), so two workers never pick the same free port between one's
# check and its server's bind; without xdist the kernel picks one.
WORKER_PORT_BASE, WORKER_PORT_BLOCK = 20000, 2000
_next_port = itertools.count()


def free_port() -> int:
    """A port nobody listens on at 127.0.0.1, for a server a test starts."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    start = WORKER_PORT_BASE + int(worker[2:]) * WORKER_PORT_BLOCK
    for _ in range(WORKER_PORT_BLOCK):
        port = start + next(_next_port) % WORKER_PORT_BLOCK
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {start}-{start + WORKER_PORT_BLOCK - 1}")
