"""``model-garden submit``: validate a training job here, then hand it to Ray's job queue.

The job is the very ``model-garden train`` (or ``train-vision``, or any other command) the user would
run, with every option resolved (YAML and ``--set`` folded in, local paths made absolute), wrapped by
:mod:`mg_mlflow.team.entry`. Ray queues it on one ``mg_train_slot`` (or its GPUs). What travels in the
runtime environment: ``MLFLOW_TRACKING_URI`` and the credentials of the submitting shell (never argv),
``MLFLOW_RUN_CONTEXT`` = ``{"mg.job_id": ID}`` (MLflow tags every run the job starts with it, which is
how ``jobs list`` joins Ray states with MLflow runs), and on the local instance ``MG_HOME`` and the
import path of this code.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import click

import mg_mlflow
from mg_mlflow.env import default_tracking_uri, mg_home
from mg_mlflow.errors import MGError
from mg_mlflow.options import to_argv
from mg_mlflow.training.recipe import modality_for
from mg_mlflow.team.jobs import client_for
from mg_mlflow.team.ray_local import SLOT

JOB_PREFIX = "mg-"
# Passed to the job when set in the submitting shell (the runtime environment, never argv or logs).
FORWARDED_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                 "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_S3_ENDPOINT_URL",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                 "AWS_REGION", "AWS_PROFILE", "HF_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                 "OMP_NUM_THREADS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
LOCAL_ONLY_ENV = ("MG_HOME", "HF_HOME")
STOP_WAIT_S = 60  # Ray's SIGTERM -> SIGKILL grace period (RAY_JOB_STOP_WAIT_TIME_S): time to end the run KILLED
PATH_FIELDS = ("base_model", "dataset", "eval_dataset", "output_dir")


@dataclass
class JobSpec:
    command: list[str]                 # model-garden argv, e.g. ["train", "--base-model", "/abs/tiny", ...]
    gpus: float = 0                    # > 0: entrypoint_num_gpus; else one mg_train_slot
    address: str | None = None         # Ray dashboard/cluster address; None = local instance
    working_dir: str | None = None     # runtime_env working_dir (uploaded by Ray)
    ship_code: bool | None = None      # runtime_env py_modules=[mg_mlflow] (default: for a remote cluster)
    run_name: str = ""
    experiment: str = ""


def absolute_paths(cfg) -> None:
    """Make local paths in the config absolute (the job does not run in this shell's directory)."""
    for name in PATH_FIELDS:
        value = getattr(cfg, name, "")
        if not value or value.startswith(("models:/", "runs:/")):
            continue
        path = Path(value).expanduser()
        if path.exists() or value.startswith((".", "/", "~")) or name == "output_dir":
            setattr(cfg, name, str(path.absolute()))


def validate_training(cfg) -> None:
    """What ``train`` checks before loading a model: every record (and image) the way the run's
    modality and objective load them (a file of the wrong shape is refused), the base folder."""
    modality_for(cfg).load_data()
    base = cfg.base_model
    if base.startswith("/") and not Path(base).is_dir():
        raise MGError(f"base model folder {base} does not exist",
                      hint="give an existing folder, a hub id, or a models:/ URI")
    if base.startswith("/") and not (Path(base) / "config.json").is_file():
        raise MGError(f"base model folder {base} has no config.json",
                      hint="point base_model at a Hugging Face model folder")


def training_argv(command: str, cfg) -> list[str]:
    """``model-garden COMMAND`` options that rebuild ``cfg`` exactly (fields that differ from defaults)."""
    return [command, "--no-progress", *to_argv(cfg)]


def check_command(argv: list[str], cli: click.Group) -> None:
    """Parse a generic ``model-garden`` command line (options and arguments) against the ``cli``
    group (the ``model-garden`` command) without running it."""
    if not argv:
        raise MGError("no command given", hint="e.g. model-garden submit-command evaluate models:/x@prod ...")
    ctx = click.Context(cli)
    cmd = cli.get_command(ctx, argv[0])
    if cmd is None:
        raise MGError(f"unknown model-garden command {argv[0]!r}",
                      hint=f"commands: {', '.join(sorted(cli.list_commands(ctx)))}")
    if argv[0] in ("submit", "submit-vision", "submit-command", "jobs", "server", "ui"):
        raise MGError(f"`{argv[0]}` cannot run as a job")
    name, args = argv[0], list(argv[1:])
    try:
        while True:  # down through groups (`runs list ...`) to the command that runs
            sub = cmd.make_context(name, args, parent=ctx)
            if not isinstance(cmd, click.Group):
                break
            rest = [*sub._protected_args, *sub.args]
            if not rest:
                break
            name, cmd, args = cmd.resolve_command(sub, rest)
            ctx = sub
    except click.exceptions.Exit:
        pass
    except click.UsageError as exc:
        raise MGError(f"model-garden {' '.join(argv[:2])}: {exc.format_message()}") from None


def tracking_uri_for_job(remote: bool) -> str:
    uri = default_tracking_uri()
    if remote and urlsplit(uri).scheme in ("", "file", "sqlite"):
        raise MGError(f"the Ray cluster cannot reach this machine's tracking store {uri}",
                      hint="start `model-garden server` and export MLFLOW_TRACKING_URI=http://HOST:PORT")
    return uri


def public_uri(uri: str) -> str:
    """The URI without user:password (for Ray's job metadata, which anyone with access can read)."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()
    return uri


def _package_root() -> Path:
    return Path(mg_mlflow.__file__).resolve().parent


def runtime_env(job_id: str, tracking_uri: str, spec: JobSpec, remote: bool) -> dict:
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "MG_JOB_ID": job_id,
           "MLFLOW_RUN_CONTEXT": json.dumps({"mg.job_id": job_id}),
           "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S), "PYTHONUNBUFFERED": "1"}
    for key in FORWARDED_ENV + (() if remote else LOCAL_ONLY_ENV):
        if os.environ.get(key):
            env[key] = os.environ[key]
    renv: dict = {"env_vars": env}
    if not remote:
        env.setdefault("MG_HOME", str(mg_home()))
        # this very code, whether installed or a source checkout
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_package_root().parent),
                                                         os.environ.get("PYTHONPATH", "")) if p)
    ship = spec.ship_code if spec.ship_code is not None else remote
    if ship:
        renv["py_modules"] = [str(_package_root())]
    if spec.working_dir:
        if not Path(spec.working_dir).is_dir():
            raise MGError(f"--working-dir {spec.working_dir}: no such folder")
        renv["working_dir"] = str(Path(spec.working_dir).absolute())
    return renv


def new_job_id() -> str:
    return f"{JOB_PREFIX}{uuid.uuid4().hex[:10]}"


def submit(spec: JobSpec) -> dict:
    """Submit a validated job; returns {"job_id", "address", "entrypoint", "local"} at once."""
    client, address, local = client_for(spec.address, start=True)
    job_id = new_job_id()
    uri = tracking_uri_for_job(remote=not local)
    python = sys.executable if local else "python"
    entrypoint = shlex.join([python, "-m", "mg_mlflow.team.entry", *spec.command])
    resources = {}
    kwargs = {}
    if spec.gpus > 0:
        kwargs["entrypoint_num_gpus"] = spec.gpus
    else:
        resources = {SLOT: 1}
        kwargs["entrypoint_resources"] = resources
    metadata = {"mg.command": spec.command[0], "mg.run_name": spec.run_name, "mg.experiment": spec.experiment,
                "mg.tracking_uri": public_uri(uri), "mg.resources": json.dumps(resources or {"GPU": spec.gpus})}
    try:
        client.submit_job(entrypoint=entrypoint, submission_id=job_id,
                          runtime_env=runtime_env(job_id, uri, spec, remote=not local),
                          metadata=metadata, **kwargs)
    except MGError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray's SDK raises RuntimeError / requests errors
        raise MGError(f"Ray refused the job: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                      hint=f"Ray address: {address}") from None
    return {"job_id": job_id, "address": address, "entrypoint": entrypoint, "local": local,
            "resources": resources or {"GPU": spec.gpus}}
