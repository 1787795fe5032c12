"""Waiting for a child process so that this process's signal handlers always run meanwhile."""

from __future__ import annotations

import subprocess

SLICE_S = 0.2


def wait_interruptibly(proc: subprocess.Popen) -> int:
    """``proc.wait()``, in short slices, so that Ctrl-C or SIGTERM is handled at once.

    A blocking ``waitpid`` is interrupted only if the kernel delivers the signal to the waiting (main)
    thread. With other threads alive (MLflow's artifact download pool, say) it may pick one of them;
    CPython then runs the Python handler when the main thread next executes bytecode: never, while it
    blocks in ``waitpid``. A timed wait keeps the main thread executing bytecode."""
    while True:
        try:
            return proc.wait(timeout=SLICE_S)
        except subprocess.TimeoutExpired:
            continue
