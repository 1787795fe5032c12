"""Deployment state records: one JSON file per deployment under ``$MG_HOME/deployments/``.

A record holds the name, URIs and resolved versions, pid / process group, port, log file and start
time; never the API key. ``status_of`` tells running / starting / dead / stale apart:
- dead: the recorded pid is gone (or a zombie);
- stale: the pid exists but is another process (pid reused: its start time differs).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from mg_mlflow.errors import MGError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def state_dir() -> Path:
    from mg_mlflow.env import mg_home

    from mg_mlflow.deploy.ports import private_dir

    return private_dir(mg_home() / "deployments")  # 0700: records, logs and claims are private


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise MGError(f"invalid deployment name {name!r}",
                      hint="use letters, digits, '.', '_' or '-' (up to 64 characters)")
    return name


def record_path(name: str) -> Path:
    return state_dir() / f"{check_name(name)}.json"


def log_path(name: str) -> Path:
    return state_dir() / f"{check_name(name)}.log"


def write_record(record: dict[str, Any]) -> Path:
    assert "api_key" not in record, "the API key is never stored"
    path = record_path(record["name"])
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(record, indent=2, sort_keys=True))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def private_file(path: Path, mode: str = "wb"):
    """Open ``path`` for writing ("wb") or appending ("ab"), created 0600."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.chmod(path, 0o600)
    return os.fdopen(fd, mode)


def read_record(name: str) -> dict[str, Any] | None:
    path = record_path(name)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {"name": name, "corrupt": True}


def remove_record(name: str) -> None:
    record_path(name).unlink(missing_ok=True)


def all_records() -> list[dict[str, Any]]:
    out = []
    for path in sorted(state_dir().glob("*.json")):
        rec = read_record(path.stem)
        if rec is not None:
            out.append(rec)
    return out


def get_record(name: str) -> dict[str, Any]:
    rec = read_record(name)
    if rec is None:
        known = ", ".join(r["name"] for r in all_records()) or "(none)"
        raise MGError(f"no deployment named {name!r}", hint=f"deployments: {known}")
    return rec


# --- processes (psutil) ---------------------------------------------------------------------------

_GONE = ("zombie", "dead")  # psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD: exited, not yet reaped


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


def status_of(record: dict[str, Any], probe: bool = True) -> str:
    """running | starting | dead | stale | corrupt."""
    if record.get("corrupt"):
        return "corrupt"
    pid = record.get("pid")
    if not pid_alive(pid):
        return "dead"
    started = record.get("pid_start_time")
    if started and process_start_time(pid) not in (None, started):
        return "stale"
    if not probe:
        return "running"
    from mg_mlflow.deploy.supervisor import health_ok

    return "running" if health_ok(record["host"], record["port"]) else "starting"


def uptime(record: dict[str, Any]) -> str:
    seconds = max(0, int(time.time() - record.get("started_at", time.time())))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
