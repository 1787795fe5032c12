"""``model-garden runs`` and ``model-garden ui``: read jobs back from MLflow (MLflow is the job store)."""

from __future__ import annotations

import click

from mg_mlflow.cli.base import console, print_kv

KEY_PARAMS = ("base_model", "dataset", "backend", "method", "save_method", "max_steps", "learning_rate", "lora_r")
KEY_METRICS = ("loss_first", "loss_final", "eval_loss_final", "train_seconds", "carbon/emissions_kg",
               "carbon/energy_kwh")


@click.group("runs")
def runs_group():
    """List and inspect training runs recorded in MLflow."""


@runs_group.command("list")
@click.option("--experiment", "-e", default="model-garden", show_default=True, help="experiment name")
@click.option("--max", "max_results", type=int, default=20, show_default=True)
def list_cmd(experiment, max_results):
    """List recent runs: status, backend, loss and the version each registered.

    \b
    Example:
      model-garden runs list --experiment model-garden
    """
    from rich.table import Table

    from mg_mlflow.tracking.liveness import DEAD, process_state
    from mg_mlflow.tracking.query import list_runs

    runs = list_runs(experiment, max_results)
    dead = 0
    table = Table(title=f"runs in experiment {experiment!r}", title_justify="left")
    for col in ("run id", "name", "status", "backend/method", "loss", "registered", "started"):
        table.add_column(col)
    for r in runs:
        loss = r["metrics"].get("loss_final")
        status = r["status"]
        if status == "RUNNING" and process_state(r["tags"])[0] == DEAD:
            status, dead = "RUNNING (dead)", dead + 1
        table.add_row(r["run_id"][:12], r["name"] or "", status,
                      f"{r['params'].get('backend', '')}/{r['params'].get('method', '')}",
                      f"{loss:.4f}" if loss is not None else "", r["registered"] or "", r["start"])
    console().print(table)
    if not runs:
        console().print("no runs yet: try `model-garden train --help`")
    if dead:
        console().print(f"{dead} run(s) marked RUNNING have no live process on this machine: "
                        "`model-garden runs repair` ends them FAILED")


@runs_group.command("repair")
@click.option("--experiment", "-e", default="model-garden", show_default=True, help="experiment name")
@click.option("--dry-run", is_flag=True, help="only list the dead runs, change nothing")
def repair_cmd(experiment, dry_run):
    """End runs left RUNNING by a killed or crashed training as FAILED, with the reason.

    A run records its process (mg.pid, mg.pid_start, mg.host); a RUNNING run of this machine whose
    process is gone (SIGKILL, out of memory, power loss) is dead. Runs of other hosts are left alone.

    \b
    Examples:
      model-garden runs repair --dry-run
      model-garden runs repair --experiment model-garden
    """
    from mg_mlflow.tracking.liveness import repair

    fixed = repair(experiment, dry_run=dry_run)
    verb = "would mark" if dry_run else "marked"
    for run_id, why in fixed:
        console().print(f"{verb} run {run_id} FAILED: {why}")
    console().print(f"{len(fixed)} dead run(s) {'found' if dry_run else 'marked FAILED'} in experiment {experiment!r}")


@runs_group.command("sync-spool")
@click.argument("spool", type=click.Path(exists=True, dir_okay=False))
@click.option("--run-id", default=None, help="run to send to (default: the id in the file name)")
def sync_spool_cmd(spool, run_id):
    """Send the metrics a training kept in its local spool (tracking store unreachable until the end).

    Sending twice is harmless: MLflow stores each point once.

    \b
    Example:
      model-garden runs sync-spool .model-garden/outputs/RUN/mlflow_spool_RUN.jsonl
    """
    from pathlib import Path

    from mg_mlflow.errors import MGError
    from mg_mlflow.tracking.run import use_tracking_uri
    from mg_mlflow.tracking.spool import read_spool, replay

    path = Path(spool)
    run_id = run_id or path.stem.removeprefix("mlflow_spool_")
    if not run_id or run_id == path.stem:
        raise MGError(f"{path}: cannot tell the run from the file name", hint="pass --run-id")
    _, bad = read_spool(path)
    use_tracking_uri()
    sent = replay(path, run_id)
    console().print(f"sent {sent} metric point(s) from {path} to run {run_id}"
                    + (f" ({bad} unreadable line(s) skipped)" if bad else ""))


@runs_group.command("show")
@click.argument("run_id")
def show_cmd(run_id):
    """Show one run: status, key params, final metrics, registered version, artifacts.

    \b
    Example:
      model-garden runs show 3f2a9c
    """
    from mg_mlflow.tracking.query import get_run

    r = get_run(run_id)
    rows = [("run id", r["run_id"]), ("status", r["status"]), ("experiment", r["experiment"]),
            ("started", r["start"]), ("error", r["tags"].get("mg.error")),
            ("backend", f"{r['tags'].get('mg.backend', '')} ({r['tags'].get('mg.backend_reason', '')})"),
            ("registered", r["registered"]), ("git commit", r["tags"].get("mg.git_commit"))]
    rows += [(k, r["params"].get(k)) for k in KEY_PARAMS]
    rows += [(k, f"{r['metrics'][k]:.5g}") for k in KEY_METRICS if k in r["metrics"]]
    rows += [("datasets", ", ".join(r["datasets"]))]
    print_kv(f"run {r['run_id']}", rows)


@click.command("ui")
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def ui_cmd(port, host):
    """Open the MLflow UI on the Model Garden store (compare runs, promote versions).

    \b
    Example:
      model-garden ui --port 5000   # then open http://127.0.0.1:5000
    """
    import os
    import sys

    from mg_mlflow.env import default_tracking_uri, mg_home, setup_env

    setup_env()
    uri = default_tracking_uri()
    # the store URI travels in the environment, not on the command line: a database URI may hold a
    # password, and every user of the machine can read command lines (`ps`)
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri}
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port)]
    if uri.startswith("sqlite"):
        cmd += ["--default-artifact-root", (mg_home() / "mlartifacts").as_uri()]
    console().print("running: " + " ".join(cmd) + "  (store from MLFLOW_BACKEND_STORE_URI)")
    os.execve(sys.executable, cmd, env)


def register(group: click.Group) -> None:
    group.add_command(runs_group)
    group.add_command(ui_cmd)
