"""Start a deployment: resolve URIs, inspect, plan, claim name and port, launch, wait for health, record.

``manager`` (the library's entry points) and ``update`` (a new version beside the old one) start
servers through these functions.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from mg_mlflow.deploy import keyguard, state
from mg_mlflow.deploy.net import is_loopback
from mg_mlflow.deploy.plan import DeployOptions, Plan, plan_deployment
from mg_mlflow.deploy.ports import Claim, claim_name, claim_port, pick_port
from mg_mlflow.deploy.state import Deployment
from mg_mlflow.deploy.supervisor import check_memory, launch, log_tail, served_pid, stop_record, wait_healthy
from mg_mlflow.deploy.vision import prepare_vision_runtime
from mg_mlflow.env import setup_env
from mg_mlflow.errors import AlreadyExistsError, InvalidInputError, ServerError
from mg_mlflow.inspect import inspect_model
from mg_mlflow.proc import pid_alive, process_start_time, stop_group, wait_interruptibly
from mg_mlflow.registry.resolve import resolve_model_uri
from mg_mlflow.tracking.serving_monitor import start_serving_monitor

SECRET_FLAGS = ("--api-key",)


def _pull_api_key(opts: DeployOptions) -> DeployOptions:
    """A ``--api-key`` among extra vLLM args moves to the environment (never argv, logs or state)."""
    extra, key, skip = [], opts.api_key, False
    for i, token in enumerate(opts.extra_args):
        if skip:
            skip = False
            continue
        if token == "--api-key" and i + 1 < len(opts.extra_args):
            key, skip = opts.extra_args[i + 1], True
        elif token.startswith("--api-key="):
            key = token.split("=", 1)[1]
        else:
            extra.append(token)
    return replace(opts, api_key=key, extra_args=extra)


def _with_package_root(pythonpath: str) -> str:
    """``pythonpath`` ending with the folder that holds ``mg_mlflow``: vLLM (maybe another environment's
    Python) imports the key guard from it; appended, so that environment's own packages come first."""
    root = str(Path(keyguard.__file__).resolve().parents[2])
    parts = [p for p in pythonpath.split(os.pathsep) if p]
    return os.pathsep.join(parts if root in parts else [*parts, root])


def resolve_all(uris: list[str]) -> tuple[list, list]:
    resolved = [resolve_model_uri(u) for u in uris]
    return resolved, [inspect_model(r.local_dir) for r in resolved]


def running_ports(exclude: str | None = None) -> set[int]:
    """Ports held by recorded deployments that still run (and by versions being started beside them)."""
    ports = set()
    for r in state.all_records():
        if r.name == exclude or r.corrupt:
            continue
        if r.port and state.status_of(r, probe=False) in ("running", "starting"):
            ports.add(int(r.port))
        pending = r.updating
        if pending is not None and pending.port and pid_alive(pending.pid):
            ports.add(int(pending.port))
    return ports


def prepare(uris: list[str], opts: DeployOptions, check_port: bool = True, claims: list[Claim] | None = None,
            port_from: int | None = None, exclude: str | None = None) -> tuple[Plan, DeployOptions]:
    """Resolve, inspect and plan (ports chosen, nothing started). Raises MGError on bad input.

    ``check_port=False`` (dry runs) plans the wanted port without checking that it is free. With a
    ``claims`` list the port is claimed atomically (``ports.claim_port``) and the held claim is appended:
    the caller releases it once its server is healthy or has failed."""
    setup_env()
    opts = _pull_api_key(opts)
    if not opts.api_key and os.environ.get("MG_API_KEY"):
        opts = replace(opts, api_key=os.environ["MG_API_KEY"])  # the CLI, the plugin and the library alike
    if not opts.api_key and not is_loopback(opts.host) and not opts.allow_unauthenticated:
        raise InvalidInputError(f"--host {opts.host} would expose the server to the network without an API key",
                                hint="pass --api-key KEY (or set MG_API_KEY): every route but /health then needs "
                                     "it; or --allow-unauthenticated to serve it open on purpose")
    if opts.name:
        state.check_name(opts.name)
    resolved, inspections = resolve_all(list(uris))
    reserved = running_ports(exclude=opts.name if exclude is None else exclude)
    if claims is not None:
        port, claim = claim_port(opts.host, opts.port, reserved, start=port_from or 8000)
        claims.append(claim)
    elif check_port or not opts.port:
        port = pick_port(opts.host, opts.port, reserved)
    else:
        port = opts.port
    opts = replace(opts, port=port)
    plan = plan_deployment(resolved, inspections, opts)
    name = opts.name or plan.default_model.replace("/", "-")
    opts = replace(opts, name=state.check_name(name[:64]))
    return plan, opts


def _free_name(name: str) -> None:
    old = state.read_record(name)
    if old is None:
        return
    status = state.status_of(old, probe=False)
    if status in ("running", "starting"):
        raise AlreadyExistsError(f"deployment {name!r} is already running on port {old.port}",
                                 hint=f"stop it first (model-garden deployments stop {name}) or pick another --name")
    stop_record(old)  # dead leader: end orphans left in its group
    state.remove_record(name)


def _monitor(record: Deployment) -> tuple[int | None, str | None]:
    """Start the serving carbon monitor; (pid, error)."""
    deployment = {"name": record.name, "uris": record.uris,
                  "resolved": [{"uri": m.uri, "name": m.name, "version": m.version, "run_id": m.run_id}
                               for m in record.models],
                  "port": record.port, "host": record.host, "pid": record.pid,
                  "served_model_names": record.served_names}
    try:
        proc = start_serving_monitor(deployment, record.metrics_url, record.pid)
    except Exception as exc:  # noqa: BLE001 - carbon tracking must never take the server down
        return None, f"serving monitor failed to start: {exc}"
    return (proc.pid if proc is not None else None), None


def start_server(uris: list[str], plan: Plan, opts: DeployOptions, log_file,
                 foreground: bool = False) -> tuple:
    """Launch vLLM and its crash guard; (process, record). Nothing is written to the state folder here."""
    if plan.engine == "vllm-cpu" and opts.check_memory:
        check_memory(plan.weight_bytes, float(plan.env.get("VLLM_CPU_KVCACHE_SPACE", 1)))
    if plan.modality == "vision" and not opts.engine_cmd:  # an engine command's environment is its own
        extra, notes = prepare_vision_runtime(opts.vllm_python or sys.executable, {**os.environ, **plan.env})
        plan.env.update(extra)
        plan.notes.extend(notes)
    env = {**os.environ, **plan.env}
    env.pop("MG_API_KEY", None)  # vLLM reads VLLM_API_KEY only; the guard and vLLM need no other copy
    if opts.api_key:
        env["VLLM_API_KEY"] = opts.api_key
        env["PYTHONPATH"] = _with_package_root(env.get("PYTHONPATH", ""))  # --middleware imports keyguard
    proc = launch(plan.argv, env, log_file, header=plan.display())  # the guard, leading vLLM's group
    pid = served_pid(proc) or proc.pid
    record = Deployment(name=opts.name, uris=list(uris), models=[replace(m) for m in plan.models],
                        default_model=plan.default_model, engine=plan.engine, host=opts.host, port=opts.port,
                        pid=pid, pgid=proc.pid, guard_pid=proc.pid, pid_start_time=process_start_time(pid),
                        log_file=str(log_file), started_at=time.time(), command=plan.display(),
                        notes=list(plan.notes), api_key_required=bool(env.get("VLLM_API_KEY")),
                        options=replace(opts, api_key=None), foreground=foreground)
    return proc, record


def finish_start(record: Deployment) -> Deployment:
    """Start the serving monitor (when asked) and write the record of a healthy server."""
    if record.options.carbon:
        record.monitor_pid, error = _monitor(record)
        if record.monitor_pid:
            record.monitor_start_time = process_start_time(record.monitor_pid)
        if error:
            record.notes.append(error)
    state.write_record(record)
    return record


def deploy(uris: list[str], opts: DeployOptions, foreground: bool = False,
           show_progress: bool | None = None, on_ready=None) -> Deployment:
    """Launch vLLM for ``uris``; returns the state record once /health answers.

    The name and the port are claimed atomically first: a second deploy asking for the same port (or
    name) at the same time errors before launching anything."""
    claims: list[Claim] = []
    try:
        named = bool(opts.name)
        if named:
            claims.append(claim_name(state.state_dir(), state.check_name(opts.name)))
        plan, opts = prepare(uris, opts, claims=claims)
        if not named:
            claims.append(claim_name(state.state_dir(), opts.name))
        _free_name(opts.name)
        log_file = state.log_path(opts.name)
        proc, record = start_server(uris, plan, opts, log_file, foreground)
        try:
            state.write_record(record)
            record.startup_s = round(wait_healthy(proc, opts.host, opts.port, log_file, opts.health_timeout,
                                                  show_progress, label=f"starting vLLM ({opts.name})"), 2)
        except BaseException:
            stop_group(proc.pid, grace=10.0)
            state.remove_record(opts.name)
            raise
    finally:
        for claim in claims:
            claim.release()
    finish_start(record)
    if on_ready is not None:
        on_ready(record)
    if foreground:
        _run_foreground(proc, record)
    return record


def _run_foreground(proc, record: Deployment) -> None:
    """Block until vLLM exits; Ctrl-C or SIGTERM stops the whole group and removes the record."""
    def _term(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _term)
    try:
        code = wait_interruptibly(proc)
        tail = log_tail(record.log_file)
        stop_record(record)
        state.remove_record(record.name)
        raise ServerError(f"vLLM exited with code {code}; last lines of {record.log_file}:\n{tail}")
    except KeyboardInterrupt:
        stop_record(record)
        state.remove_record(record.name)
    finally:
        signal.signal(signal.SIGTERM, previous)

