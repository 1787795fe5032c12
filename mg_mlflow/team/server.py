"""``model-garden server``: MLflow's own tracking server with artifact proxying.

Embedded default: the sqlite store and artifact folder of ``$MG_HOME`` (the same ones every command
uses without a server). At scale: ``--backend-store-uri postgresql://...`` and
``--artifacts-destination s3://BUCKET/PREFIX``. Secrets never reach argv or logs: a database password
in the URI moves to ``PGPASSWORD`` (libpq's variable), S3 credentials stay in boto3's variables or
profile, the basic-auth admin comes from MLflow's ``MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD``. The schema
is created and upgraded by ``mlflow db upgrade`` (MLflow's alembic migrations) before the server starts.
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mg_mlflow.env import mg_home, private_sqlite_file, sqlite_path
from mg_mlflow.errors import MGError, MissingExtra
from mg_mlflow.proc import wait_interruptibly

DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


@dataclass
class ServerPlan:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # extra variables for the server process only
    backend_store_uri: str = ""  # without any password
    artifacts_destination: str = ""
    url: str = ""
    auth: bool = False
    auth_database_uri: str = ""  # as given (may hold a password): never printed
    admin: str = ""              # the basic-auth admin's user name


def split_password(uri: str) -> tuple[str, str | None]:
    """(uri without the password, password or None) for ``scheme://user:password@host/db``."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri, None
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc)), parts.password


def redact(uri: str) -> str:
    """The URI with any password replaced by ``***`` (for messages)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    user_info, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user_info.split(':', 1)[0]}:***@{host}"))


def _check_backend(uri: str) -> None:
    scheme = urlsplit(uri).scheme.split("+", 1)[0]
    if scheme not in DATABASE_SCHEMES:
        raise MGError(f"--backend-store-uri {redact(uri)!r}: expected a database URI "
                      f"({', '.join(s + '://' for s in DATABASE_SCHEMES)})",
                      hint="e.g. postgresql://mlflow@db:5432/mlflow (password through PGPASSWORD)")
    if scheme == "postgresql":
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            raise MissingExtra("psycopg2", "team", "the PostgreSQL driver") from None


def _check_artifacts(dest: str) -> None:
    scheme = urlsplit(dest).scheme
    if scheme in ("s3",):
        if not urlsplit(dest).netloc:
            raise MGError(f"--artifacts-destination {dest!r}: no bucket", hint="s3://BUCKET/PREFIX")
        if "@" in dest or "aws_secret" in dest.lower():
            raise MGError("--artifacts-destination must not carry credentials",
                          hint="use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE (boto3)")
    elif scheme not in ("", "file", "gs", "wasbs", "hdfs", "mlflow-artifacts"):
        raise MGError(f"--artifacts-destination {dest!r}: unsupported scheme {scheme!r}",
                      hint="s3://BUCKET/PREFIX, a folder, gs://, wasbs:// or hdfs://")


def _auth_env(home: Path, auth_database_uri: str | None) -> dict[str, str]:
    """MLflow basic-auth app settings: a config file under $MG_HOME/server (no password in it),
    the admin from MLflow's own variables (or, for convenience, the starting user's tracking
    credentials), and a persistent Flask secret key."""
    server_dir = home / "server"
    server_dir.mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = {}
    user = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") or os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not user or not password:
        raise MGError("--auth needs an admin account",
                      hint="export MLFLOW_AUTH_ADMIN_USERNAME=... MLFLOW_AUTH_ADMIN_PASSWORD=... (or "
                           "MLFLOW_TRACKING_USERNAME/PASSWORD, which the CLI then also uses as a client)")
    if len(password) < 12:  # MLflow refuses to create the admin with a shorter one, after a slow start
        raise MGError("the basic-auth admin password must be at least 12 characters (MLflow's rule)",
                      hint="set a longer MLFLOW_AUTH_ADMIN_PASSWORD")
    env["MLFLOW_AUTH_ADMIN_USERNAME"] = user
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = password
    db_uri = auth_database_uri or f"sqlite:///{server_dir / 'basic_auth.db'}"
    private_sqlite_file(db_uri)  # password hashes: readable by the owner only
    ini = server_dir / "basic_auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = {split_password(db_uri)[0]}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
    key = os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
    if not key:
        key_file = server_dir / "flask_secret_key"
        if not key_file.is_file():
            key_file.touch(mode=0o600)
            key_file.write_text(secrets.token_hex(32))
        key = key_file.read_text().strip()
    env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = key
    return env



def job_runner_off() -> dict[str, str]:
    """MLflow 3's server also starts a job runner (8 Huey worker processes for GenAI scorer and trace
    jobs) that Model Garden never uses: ~10-20 s of start-up and idle polling on a small machine.
    Off unless the user set ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` themselves."""
    return {} if "MLFLOW_SERVER_ENABLE_JOB_EXECUTION" in os.environ else {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

def plan_server(host: str = "127.0.0.1", port: int = 5000, backend_store_uri: str | None = None,
                artifacts_destination: str | None = None, auth: bool = False, workers: int = 1,
                auth_database_uri: str | None = None, allowed_hosts: str | None = None) -> ServerPlan:
    """The ``mlflow server`` argv and the environment it needs (nothing secret in argv)."""
    home = mg_home()
    home.mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = job_runner_off()
    backend = backend_store_uri or f"sqlite:///{home / 'mlflow.db'}"
    _check_backend(backend)
    private_sqlite_file(backend)
    backend, password = split_password(backend)
    if password is not None:
        if not urlsplit(backend).scheme.startswith("postgresql"):
            raise MGError(f"--backend-store-uri {redact(backend_store_uri)!r}: put the password in the "
                          "database driver's variable, not in the URI")
        env["PGPASSWORD"] = password  # libpq (psycopg2) reads it; argv and logs never see it
    dest = artifacts_destination or str(home / "mlartifacts")
    _check_artifacts(dest)
    if urlsplit(dest).scheme in ("", "file"):
        Path(urlsplit(dest).path if dest.startswith("file:") else dest).mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
            "--artifacts-destination", dest, "--serve-artifacts", "--host", host, "--port", str(port),
            "--workers", str(workers)]
    if allowed_hosts:
        argv += ["--allowed-hosts", allowed_hosts]
    if auth:
        argv += ["--app-name", "basic-auth"]
        env.update(_auth_env(home, auth_database_uri))
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return ServerPlan(argv=argv, env=env, backend_store_uri=backend, artifacts_destination=dest,
                      url=f"http://{shown_host}:{port}", auth=auth,
                      auth_database_uri=auth_database_uri or f"sqlite:///{home / 'server' / 'basic_auth.db'}",
                      admin=env.get("MLFLOW_AUTH_ADMIN_USERNAME", ""))


def _auth_store(plan: ServerPlan):
    """MLflow's basic-auth user store on the plan's database (schema migrated by MLflow)."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(plan.auth_database_uri)
    return store


def _auth_db_exists(plan: ServerPlan) -> bool:
    path = sqlite_path(plan.auth_database_uri)
    return path is None or (path.is_file() and path.stat().st_size > 0)


def stale_admin_password(plan: ServerPlan) -> str | None:
    """A warning when the auth database already holds the admin with another password than the one
    given (MLflow creates the admin once and then keeps its password); None when it is in effect."""
    if not plan.auth or not _auth_db_exists(plan):
        return None
    store = _auth_store(plan)
    if not store.has_user(plan.admin) or store.authenticate_user(plan.admin, plan.env["MLFLOW_AUTH_ADMIN_PASSWORD"]):
        return None
    return (f"the auth database {redact(plan.auth_database_uri)} already has the admin {plan.admin!r} with another "
            "password: MLflow keeps the first one, so the MLFLOW_AUTH_ADMIN_PASSWORD given now is NOT in effect. "
            "Change it with `model-garden server --reset-admin-password` (same variables), then start again")


def reset_admin_password(plan: ServerPlan) -> str:
    """Set the admin's password in the auth database to the one given (creating the admin when
    absent) through MLflow's auth store; what was done."""
    store = _auth_store(plan)
    password = plan.env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    if store.has_user(plan.admin):
        store.update_user(plan.admin, password=password, is_admin=True)
        return f"admin {plan.admin!r}: password changed in {redact(plan.auth_database_uri)}"
    store.create_user(plan.admin, password, is_admin=True)
    return f"admin {plan.admin!r}: created in {redact(plan.auth_database_uri)}"


def upgrade_schema(backend_store_uri: str, extra_env: dict[str, str]) -> None:
    """Create or migrate the tracking schema with MLflow's own migrations (``mlflow db upgrade``)."""
    import subprocess

    if backend_store_uri.startswith("sqlite:"):
        Path(backend_store_uri.split("sqlite:///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", backend_store_uri],
                          env={**os.environ, **extra_env}, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise MGError(f"could not create or upgrade the tracking schema in {redact(backend_store_uri)}:\n{tail}",
                      hint="check that the database exists and the user may create tables")


def run_server(plan: ServerPlan) -> int:
    """Run the server in the foreground; SIGINT/SIGTERM stop it. Returns its exit code."""
    import signal
    import subprocess

    proc = subprocess.Popen(plan.argv, env={**os.environ, **plan.env}, start_new_session=True)

    def stop_group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # the server and its uvicorn/gunicorn workers
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, lambda *_: stop_group(signal.SIGTERM))
    signal.signal(signal.SIGINT, lambda *_: stop_group(signal.SIGTERM))
    try:
        code = wait_interruptibly(proc)
    finally:
        if proc.poll() is None:
            stop_group(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                stop_group(signal.SIGKILL)
                proc.wait()
    stop_group(signal.SIGKILL)  # no worker outlives the server
    return code
