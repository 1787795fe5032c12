"""Helpers of the deployment reliability tests: deploy the stand-in engine, inspect processes."""

from __future__ import annotations

import os
import shlex
import stat
import sys
import time
from pathlib import Path

FAKE = Path(__file__).with_name("fake_vllm.py")


def fake_engine_args(markers: Path, bind_delay: float = 0.0) -> list[str]:
    """`model-garden deploy` options that launch fake_vllm.py instead of vLLM (no vLLM import, ~0.1 s)."""
    cmd = f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE))} --bind-delay {bind_delay} --marker-dir {shlex.quote(str(markers))}"
    return ["--engine", "vllm-cpu", "--engine-cmd", cmd, "--skip-memory-check", "--no-carbon", "--health-timeout", "60"]


def wait_for(check, timeout: float, what: str):
    """Poll ``check`` until it returns a truthy value (returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def cmdlines(pids: list[int]) -> list[bytes]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            pass
    return out


def listening_addresses(pids: list[int], port: int) -> set[str]:
    import psutil

    found = set()
    for pid in pids:
        try:
            for conn in psutil.Process(pid).net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                    found.add(conn.laddr.ip)
        except psutil.Error:
            pass
    return found


def processes_with(needle: str) -> list[int]:
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if needle in " ".join(proc.info.get("cmdline") or []):
            pids.append(proc.info["pid"])
    return pids
