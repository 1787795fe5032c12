"""Update a deployment without a gap: new adapters in place (same server), else the new version BESIDE the old one.

New LoRA adapters on the same base, engine and options are loaded into the running server
(``hotswap``: same port, same process). Anything else is started beside the old server.

Design of beside-then-switch (why the port changes): the new vLLM starts on another free port (the next one after the old
port), is health-checked there while the old server keeps answering, then the deployment's record is
switched to it and only then is the old server stopped. The same port cannot be shared during the
handover: vLLM's ``vllm.entrypoints.openai.api_server`` binds without SO_REUSEPORT (``setup_server(...,
reuse_port=False)`` in vllm 0.32), so keeping the port would mean stopping the old server first (a
40-90 s outage on CPU, several minutes on a GPU) or putting a proxy of ours in every request's path.
Clients that go through Model Garden (``model-garden generate/chat``, ``mlflow deployments predict``)
read the record and follow the switch; the new endpoint is printed and shown by ``deployments status``.

Every option of the old deployment is kept unless changed, the API key included: it is taken from
``--api-key`` / ``MG_API_KEY`` or else read back from the running server's environment (it is never
stored); an update of a protected deployment never starts an unprotected server. A new version that
fails to start is stopped and the old one keeps serving; the error carries the new log's last lines.
"""

from __future__ import annotations

import os
import time
from dataclasses import fields, replace
from typing import Any

from mg_mlflow.deploy import state
from mg_mlflow.deploy.hotswap import hot_swap, swap_plan
from mg_mlflow.deploy.launch import deploy, finish_start, prepare, resolve_all, start_server
from mg_mlflow.deploy.net import port_free
from mg_mlflow.deploy.plan import DeployOptions
from mg_mlflow.deploy.ports import Claim, claim_name
from mg_mlflow.deploy.state import Deployment, PendingVersion, PreviousVersion
from mg_mlflow.deploy.supervisor import stop_record, wait_healthy
from mg_mlflow.env import setup_env
from mg_mlflow.errors import InvalidInputError, MGError, ServerError
from mg_mlflow.proc import same_process, stop_group


def running_key(record: Deployment) -> str | None:
    """The API key of the running server of ``record`` (its VLLM_API_KEY), if this user can read it."""
    import psutil

    pid = record.pid
    try:
        if not pid or not same_process(pid, record.pid_start_time):
            return None
        return psutil.Process(pid).environ().get("VLLM_API_KEY") or None
    except (psutil.Error, OSError):
        return None


def _options(old: Deployment, changes: dict[str, Any], name: str) -> DeployOptions:
    known = {f.name for f in fields(DeployOptions)}
    return replace(old.options, **{k: v for k, v in changes.items() if k in known and k != "name"}, name=name)


def update(name: str, uris: list[str] | None = None, changes: dict[str, Any] | None = None,
           show_progress: bool | None = None, beside: bool = False) -> Deployment:
    """Replace deployment ``name`` by ``uris`` (default: the same URIs, e.g. a moved alias) and/or changed
    options; returns the new record (its ``previous`` tells the old port and pid, ``last_update`` whether
    the adapters were swapped in place or a new server started beside; ``beside``: always the latter)."""
    setup_env()
    changes = {k: v for k, v in (changes or {}).items() if v is not None}
    claim = claim_name(state.state_dir(), state.check_name(name))
    try:
        old = state.get_record(name)
        if old.corrupt:
            raise InvalidInputError(f"the record of deployment {name!r} is unreadable",
                                    hint=f"model-garden deployments stop {name}, then deploy again")
        uris = list(uris or old.uris)
        opts = _options(old, changes, name)
        alive = state.status_of(old, probe=False) in ("running", "starting")
        key = changes.get("api_key") or os.environ.get("MG_API_KEY") or (running_key(old) if alive else None)
        if old.api_key_required and not key:
            raise InvalidInputError(f"deployment {name!r} requires an API key and its key could not be read back",
                                    hint="pass the key again (--api-key, MG_API_KEY, or -C api_key=...): the new "
                                         "version is never started without the protection the old one had")
        opts = replace(opts, api_key=key)
        if alive:
            plan, why = _swap_plan(old, uris, opts, changes, beside)
            if plan is not None:
                return hot_swap(old, uris, plan, key, why)
            return _handover(name, old, uris, opts, changes, show_progress, why)
        resolve_all(uris)  # bad URIs fail here, before the dead record goes
        stop_record(old)  # a crashed server's leftovers (engine processes) end here
        state.remove_record(name)
        port = changes.get("port") or (old.port if old.port and port_free(opts.host, old.port) else None)
        opts = replace(opts, port=port)
    finally:
        claim.release()
    return deploy(uris, opts, show_progress=show_progress)


def _swap_plan(old: Deployment, uris: list[str], opts: DeployOptions, changes: dict[str, Any], beside: bool):
    """(plan, why) of an in-place adapter swap, or (None, why the update starts a server beside)."""
    if beside:
        return None, "asked to start beside"
    if bool(opts.api_key) != old.api_key_required or (
            changes.get("api_key") and running_key(old) not in (None, changes["api_key"])):
        return None, "the API key changes"
    return swap_plan(old, uris, opts)


def _handover(name: str, old: Deployment, uris: list[str], opts: DeployOptions, changes: dict[str, Any],
              show_progress: bool | None, why: str = "") -> Deployment:
    if changes.get("port") and int(changes["port"]) == int(old.port):
        raise InvalidInputError(f"port {old.port} is held by the running version of {name!r} until the new one "
                                "is healthy",
                                hint="leave --port out (the new version gets the next free port) or choose another port")
    claims: list[Claim] = []
    folder = state.state_dir()
    next_log, failed_log = folder / f"{name}.next.log", folder / f"{name}.failed.log"
    try:
        plan, opts = prepare(uris, replace(opts, port=changes.get("port")), claims=claims,
                             port_from=int(old.port) + 1, exclude="")
        proc, record = start_server(uris, plan, opts, next_log)
        old.updating = PendingVersion(pid=record.pid, pgid=proc.pid, pid_start_time=record.pid_start_time,
                                      port=opts.port, log_file=str(next_log), started_at=record.started_at)
        state.write_record(old)  # `stop` during the handover ends the new version too
        try:
            startup = wait_healthy(proc, opts.host, opts.port, next_log, opts.health_timeout, show_progress,
                                   label=f"starting the new version of {name} beside the old one")
        except BaseException as exc:
            stop_group(proc.pid, grace=10.0)
            os.replace(next_log, failed_log)
            current = state.read_record(name)
            if current is not None and not current.corrupt:
                current.updating = None
                state.write_record(current)
            if isinstance(exc, MGError):
                raise ServerError(f"the new version of {name!r} failed to start; the old version keeps serving at "
                                  f"{old.endpoint}.\n{exc.message}".replace(str(next_log), str(failed_log)),
                                  hint=exc.hint) from None
            raise
    finally:
        for claim in claims:
            claim.release()
    # switch: from this write on, clients that read the record talk to the new version
    record.startup_s = round(startup, 2)
    record.previous = PreviousVersion(port=old.port, pid=old.pid, uris=list(old.uris), stopped_at=None)
    record.last_update = {"method": "beside", "why": why, "at": time.time()}
    state.write_record(record)
    old.updating = None
    left = stop_record(old)
    record.previous.stopped_at = time.time()
    if left:
        record.notes.append(f"processes {left} of the previous version survived SIGKILL")
    log_file = state.log_path(name)
    if log_file.exists():
        os.replace(log_file, folder / f"{name}.prev.log")
    os.replace(next_log, log_file)
    record.log_file = str(log_file)
    return finish_start(record)
