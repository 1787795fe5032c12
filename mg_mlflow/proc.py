"""Processes: wait for a child so that signal handlers keep running, tell a process from a later one
given the same pid, and end a whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import time

SLICE_S = 0.2
_GONE = ("zombie", "dead")  # psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD: exited, not yet reaped


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


def process_start_time(pid: int) -> str | None:
    """When ``pid`` started, in clock ticks since boot (a string): with the pid, the identity that tells a
    server from a later process given the same pid. The value equals /proc/PID/stat's field 22 on Linux,
    which records written by earlier versions hold, so those records keep matching."""
    import psutil

    try:
        created = psutil.Process(pid).create_time()
    except (psutil.Error, ValueError, OverflowError):
        return None
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return str(round((created - psutil.boot_time()) * ticks))


def pid_alive(pid: int | None) -> bool:
    """True if ``pid`` runs (zombies count as dead)."""
    import psutil

    if not pid:
        return False
    try:
        return psutil.Process(pid).status() not in _GONE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def same_process(pid: int | None, start_time: str | None) -> bool:
    """True unless ``pid`` now names another process than the one that started at ``start_time``
    (an unknown start time, recorded or read, counts as the same)."""
    return not (pid and start_time and process_start_time(pid) not in (None, start_time))


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids whose process group is ``pgid``."""
    import psutil

    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() not in _GONE:
                members.append(proc.pid)
        except (psutil.Error, OSError):  # gone meanwhile, or not ours to inspect
            continue
    return members


def wait_gone(check, timeout: float) -> bool:
    """Poll ``check()`` until it is falsy (True) or ``timeout`` s pass (False, unless it just became so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not check():
            return True
        time.sleep(0.2)
    return not check()


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is an exited child of this process (no zombie left)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_process(pid: int | None, start_time: str | None, timeout: float = 15.0) -> None:
    """SIGTERM ``pid`` (unless it now names another process), SIGKILL it after ``timeout`` s."""
    if not pid or not pid_alive(pid) or not same_process(pid, start_time):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not wait_gone(lambda: (reap(pid), pid_alive(pid))[1], timeout):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reap(pid)


def stop_group(pgid: int, grace: float = 20.0) -> list[int]:
    """SIGTERM the process group, SIGKILL what is left after ``grace`` s; returns pids still alive."""
    def alive() -> list[int]:
        reap(pgid)
        return group_members(pgid)

    if not alive():
        return []
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return []
    if not wait_gone(alive, grace):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_gone(alive, 10.0)
    return alive()
