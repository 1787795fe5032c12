"""``model-garden server``: a shared MLflow tracking server (sqlite or PostgreSQL, local or S3 artifacts)."""

from __future__ import annotations

import click

from mg_mlflow.cli.base import console, print_kv
from mg_mlflow.env import setup_env
from mg_mlflow.team.server import plan_server, redact, run_server, stale_admin_password, upgrade_schema
from mg_mlflow.team.server import reset_admin_password as reset_password


@click.command("server", context_settings={"max_content_width": 110})
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to bind (0.0.0.0 for a team)")
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--backend-store-uri", default=None, metavar="URI",
              help="database for runs and the registry (default: sqlite $MG_HOME/mlflow.db); "
                   "postgresql://USER@HOST:5432/DB with the password in PGPASSWORD")
@click.option("--artifacts-destination", default=None, metavar="URI",
              help="where the server stores artifacts it proxies (default: $MG_HOME/mlartifacts); "
                   "s3://BUCKET/PREFIX with boto3's credentials (AWS_* variables or AWS_PROFILE; "
                   "MLFLOW_S3_ENDPOINT_URL for S3-compatible stores)")
@click.option("--auth/--no-auth", default=False, show_default=True,
              help="MLflow's basic-auth app; the admin account comes from MLFLOW_AUTH_ADMIN_USERNAME/"
                   "PASSWORD (or MLFLOW_TRACKING_USERNAME/PASSWORD)")
@click.option("--auth-database-uri", default=None, metavar="URI",
              help="users and permissions store (default: sqlite $MG_HOME/server/basic_auth.db)")
@click.option("--workers", type=int, default=1, show_default=True)
@click.option("--allowed-hosts", default=None, help="Host headers MLflow accepts (needed behind a DNS name)")
@click.option("--upgrade-db/--no-upgrade-db", default=True, show_default=True,
              help="create or migrate the schema with `mlflow db upgrade` before starting")
@click.option("--dry-run", is_flag=True, help="print the server command and exit")
@click.option("--reset-admin-password", is_flag=True,
              help="set the basic-auth admin's password in the auth database to MLFLOW_AUTH_ADMIN_PASSWORD and "
                   "exit (MLflow keeps the first admin password it was started with); then start with --auth")
def server_cmd(host, port, backend_store_uri, artifacts_destination, auth, auth_database_uri, workers,
               allowed_hosts, upgrade_db, dry_run, reset_admin_password):
    """Run MLflow's tracking server for a team, with artifact proxying, until Ctrl-C.

    Clients (train, submit, deploy, the UI) only need MLFLOW_TRACKING_URI=http://HOST:PORT, plus
    MLFLOW_TRACKING_USERNAME/PASSWORD when --auth is on; artifacts go through the server.

    \b
    Examples:
      model-garden server                                 # sqlite + artifacts in $MG_HOME, 127.0.0.1:5000
      export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... PGPASSWORD=...
      model-garden server --host 0.0.0.0 --backend-store-uri postgresql://mlflow@db:5432/mlflow \\
          --artifacts-destination s3://team-models/mlflow
      MLFLOW_AUTH_ADMIN_USERNAME=admin MLFLOW_AUTH_ADMIN_PASSWORD=... model-garden server --auth
      MLFLOW_AUTH_ADMIN_PASSWORD=... model-garden server --reset-admin-password
    """
    setup_env()
    plan = plan_server(host, port, backend_store_uri, artifacts_destination, auth or reset_admin_password, workers,
                       auth_database_uri, allowed_hosts)
    out = console(stderr=True)
    if reset_admin_password:
        console().print(reset_password(plan), markup=False)
        return
    if dry_run:
        console().print(" ".join(plan.argv), markup=False, soft_wrap=True)
        return
    if upgrade_db:
        out.print(f"schema: mlflow db upgrade {redact(plan.backend_store_uri)}", markup=False)
        upgrade_schema(plan.backend_store_uri, plan.env)
    stale = stale_admin_password(plan)
    if stale:
        out.print(f"[bold yellow]warning:[/] {stale}", soft_wrap=True)
    print_kv("MLflow tracking server", [
        ("URL", plan.url), ("runs and registry", redact(plan.backend_store_uri)
                              + (" (password passed as PGPASSWORD)" if "PGPASSWORD" in plan.env else "")),
        ("artifacts", plan.artifacts_destination), ("auth", "basic-auth" if plan.auth else "off"),
        ("clients", f"export MLFLOW_TRACKING_URI={plan.url}")])
    raise SystemExit(run_server(plan))


def register(group: click.Group) -> None:
    group.add_command(server_cmd)
