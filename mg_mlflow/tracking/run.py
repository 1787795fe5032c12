"""The MLflow run of a job: attach to the one ``mlflow run`` created, or start one.

The run ends FINISHED on success, FAILED with the error as a tag and an ``error.txt`` artifact on
an exception, and KILLED on Ctrl-C.
"""

from __future__ import annotations

import os
import re
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mg_mlflow.env import default_tracking_uri, mg_home, private_sqlite_file, sqlite_path
from mg_mlflow.tracking.spool import flush_all, flush_timeout


def artifact_location_for(tracking_uri: str, experiment: str) -> str | None:
    """Explicit artifact location for local stores (else MLflow uses ./mlruns of the cwd)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent.absolute() / "mlartifacts" / experiment).as_uri()
    if tracking_uri.startswith("sqlite:"):  # in-memory or relative forms
        return (mg_home() / "mlartifacts" / experiment).as_uri()
    return None  # a server (or database store) decides where artifacts go


# How MLflow classifies training experiments: its UI shows them as "Model training", not GenAI traces.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
GENERATED_NAME = re.compile(r"[a-z]+-[a-z]+-\d+")  # MLflow's own run names, e.g. nebulous-pug-395


def ensure_experiment(name: str) -> str:
    """Return the id of experiment ``name``, creating it with a sensible artifact location and the
    training-experiment kind."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            mlflow.tracking.MlflowClient().restore_experiment(exp.experiment_id)
        mark_training_experiment(exp.experiment_id, exp.tags)
        return exp.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_location_for(uri, name), tags=EXPERIMENT_KIND)


def mark_training_experiment(experiment_id: str, tags: dict | None = None) -> None:
    """Tag an experiment as a training experiment unless it already has a kind."""
    import mlflow

    if tags is None:
        tags = mlflow.tracking.MlflowClient().get_experiment(experiment_id).tags
    if "mlflow.experimentKind" not in (tags or {}):
        mlflow.tracking.MlflowClient().set_experiment_tag(experiment_id, *next(iter(EXPERIMENT_KIND.items())))


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(URI without ``user:password@``, user, password) for an http(s) tracking URI."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), unquote(user) or None, unquote(password) or None


def use_tracking_uri() -> str:
    """Point MLflow at the configured store. Credentials inside an http(s) URI move to
    ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (MLflow's own variables), so the
    password is never printed ("View run at ..."), tagged or put on a child's command line."""
    import mlflow

    uri, user, password = split_credentials(default_tracking_uri())
    if user or password:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", user or "")
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", password or "")
        os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    prepare_sqlite_store(uri)
    return uri


_PREPARED: set[str] = set()


def prepare_sqlite_store(uri: str) -> None:
    """Create (or migrate) a local sqlite store under a file lock, once per process.

    Two processes opening a fresh store at once both run MLflow's schema migrations and one fails
    ("Online migration expected to match one row"); later writes are safe (MLflow sets a 20 s
    busy timeout on every sqlite session, and metrics are spooled with retries).
    """
    if not uri.startswith("sqlite:///") or uri in _PREPARED:
        return
    import mlflow
    from filelock import FileLock

    db = sqlite_path(uri)
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock", timeout=600):
        private_sqlite_file(uri)
        client = mlflow.tracking.MlflowClient(uri, registry_uri=uri)
        client.search_experiments(max_results=1)       # tracking tables
        client.search_registered_models(max_results=1)  # registry tables (same file)
    _PREPARED.add(uri)


@contextmanager
def run_context(experiment: str, run_name: str = "", system_metrics: bool = True,
                tags: dict | None = None, name_given: bool = True, resume: str = "") -> Iterator["object"]:
    """Start (or attach to) the MLflow run of a job and end it with the right status.

    An attached run (``mlflow run``) keeps MLflow's source tags; it takes ``run_name`` when the user
    gave it (``name_given``) or when its current name is one MLflow generated. ``resume``: continue
    that earlier run (status RUNNING again); a run ``mlflow run`` created for it only points there."""
    import mlflow

    use_tracking_uri()
    env_run = os.environ.get("MLFLOW_RUN_ID")
    kwargs = {"log_system_metrics": bool(system_metrics)}
    if resume:
        if env_run and env_run != resume:
            mlflow.tracking.MlflowClient().set_tag(env_run, "mg.continues_run", resume)
        env_run = None
        run = mlflow.start_run(run_id=resume, **kwargs)
        mlflow.set_tag("mg.resumed", "true")
    elif env_run:
        run = mlflow.start_run(run_id=env_run, **kwargs)
    else:
        exp_id = ensure_experiment(experiment)
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name or None, tags=tags, **kwargs)
    if env_run:
        own = {k: v for k, v in (tags or {}).items() if not k.startswith("mlflow.source.")}
        if run_name and (name_given or GENERATED_NAME.fullmatch(run.info.run_name or "")):
            own["mlflow.runName"] = run_name
        if own:
            mlflow.set_tags(own)
    mlflow.set_tags(process_tags())  # `runs list` / `runs repair` tell a dead run from a live one
    try:
        mark_training_experiment(run.info.experiment_id)
    except Exception:  # noqa: BLE001 - a UI nicety never fails a run (e.g. no permission on a server)
        pass
    try:
        yield run
    except KeyboardInterrupt as exc:
        _flush()
        mlflow.set_tag("mg.error", str(exc) or "interrupted by the user (Ctrl-C)")
        _end_run("KILLED")
        raise
    except BaseException as exc:
        _flush()
        _record_failure(exc)
        _end_run("FAILED")
        raise
    else:
        _flush()
        _end_run("FINISHED")


def process_tags() -> dict[str, str]:
    """``mg.pid``, ``mg.pid_start`` (process start time, epoch seconds) and ``mg.host`` of this process."""
    import socket

    import psutil

    me = psutil.Process()
    return {"mg.pid": str(me.pid), "mg.pid_start": f"{me.create_time():.2f}", "mg.host": socket.gethostname()}


def _end_run(status: str) -> None:
    """End the active run, retrying while the tracking store is unreachable (bounded by
    ``MG_SPOOL_FLUSH_TIMEOUT``): a run must not stay RUNNING because the server blinked."""
    import mlflow

    deadline = time.monotonic() + flush_timeout()
    while True:
        try:
            mlflow.end_run(status)
            return
        except Exception:  # noqa: BLE001 - connection errors come in many types
            if time.monotonic() > deadline:
                raise
            time.sleep(5)


def _flush() -> None:
    """Write queued asynchronous and spooled metrics before the run's status changes (no lost points)."""
    import mlflow

    flush_all()
    try:
        mlflow.flush_async_logging()
    except Exception:  # noqa: BLE001
        pass


def _record_failure(exc: BaseException) -> None:
    import mlflow

    try:
        message = f"{type(exc).__name__}: {exc}"
        mlflow.set_tag("mg.error", message[:4000])
        mlflow.log_text("".join(traceback.format_exception(exc)), "error.txt")
    except Exception:  # noqa: BLE001 - never hide the original error
        pass
