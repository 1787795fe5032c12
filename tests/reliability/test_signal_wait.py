"""Ctrl-C or SIGTERM while a Model Garden process waits for its child (vLLM in the foreground, torchrun,
the team server, a job) is handled at once, whichever thread the kernel hands the signal to.

The race this pins down (seen once in CI-like runs: `mlflow deployments run-local` ignored SIGINT for
over 60 s): a process-directed signal goes to any thread; MLflow's artifact-download pool leaves four
threads in the run-local process; if one of them gets it, CPython runs the Python handler only when the
main thread next executes bytecode, which a blocking ``waitpid`` never does. ``signal.pthread_kill`` on
the other thread makes the kernel's unlucky choice every time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = r"""
import signal, subprocess, sys, threading, time
sys.path.insert(0, {root!r})
from mg_mlflow.proc import wait_interruptibly

child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

def another_thread():
    time.sleep(0.5)
    signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # delivered to THIS thread, not the main one
    time.sleep(60)

threading.Thread(target=another_thread, daemon=True).start()
try:
    {wait}(child)
    print("the child ended first", flush=True)
except KeyboardInterrupt:
    child.kill()
    print("interrupted", flush=True)
    sys.exit(3)
"""


def start(wait: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PROGRAM.format(root=str(ROOT), wait=wait)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)


def test_a_signal_taken_by_another_thread_still_interrupts_the_wait():
    t0 = time.monotonic()
    proc = start("wait_interruptibly")
    out, _ = proc.communicate(timeout=30)
    assert (proc.returncode, out.strip()) == (3, "interrupted")
    assert time.monotonic() - t0 < 15  # ~0.5 s after the signal, plus the interpreter's start


def test_control_a_blocking_wait_misses_it():
    """Without the helper the same program is still waiting seconds later: the test above can fail."""
    proc = start("(lambda p: p.wait())")
    try:
        time.sleep(4)
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
