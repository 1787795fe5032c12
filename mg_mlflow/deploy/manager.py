"""Deployments end to end: deploy (``launch``), update (``update``), list, status, stop.

The CLI (``model-garden deploy``) and the MLflow plugin (``-t vllm``) both call these functions; they
take and return :class:`~mg_mlflow.deploy.state.Deployment` records.
"""

from __future__ import annotations

from typing import Any

from mg_mlflow.deploy import state
from mg_mlflow.deploy.launch import deploy, finish_start, prepare, resolve_all, running_ports, start_server
from mg_mlflow.deploy.state import Deployment
from mg_mlflow.deploy.supervisor import stop_record
from mg_mlflow.deploy.update import update
from mg_mlflow.errors import ServerError

__all__ = ["deploy", "endpoint", "finish_start", "list_all", "prepare", "redeploy", "resolve_all",
           "running_ports", "start_server", "status", "stop", "update"]


def stop(name: str, grace: float = 20.0) -> Deployment:
    """Stop a deployment (monitor, then the vLLM process group) and remove its record."""
    record = state.get_record(name)
    left = stop_record(record, grace)
    if left:
        raise ServerError(f"processes {left} of deployment {name!r} survived SIGKILL",
                          hint="they may be in uninterruptible sleep; check `ps -o pid,stat,cmd -g "
                               f"{record.pgid}`")
    state.remove_record(name)
    return record


def list_all(probe: bool = True) -> list[Deployment]:
    """Every record, each with its ``status``."""
    out = []
    for record in state.all_records():
        record.status = state.status_of(record, probe=probe)
        out.append(record)
    return out


def status(name: str) -> Deployment:
    record = state.get_record(name)
    record.status = state.status_of(record)
    return record


def endpoint(record: Deployment) -> str:
    """The OpenAI base URL of ``record`` (``record.endpoint``)."""
    return record.endpoint


def redeploy(name: str, uris: list[str] | None, changes: dict[str, Any], api_key: str | None = None,
             show_progress: bool | None = None) -> Deployment:
    """Deprecated name of :func:`mg_mlflow.deploy.update.update` (kept for callers of the library)."""
    return update(name, uris, {**changes, **({"api_key": api_key} if api_key else {})}, show_progress=show_progress)
