"""Stopping the processes a test started (servers, browsers, trainings): one helper for every module."""

from __future__ import annotations

import os
import signal
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
