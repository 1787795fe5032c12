"""``model-garden runs`` and ``model-garden ui``: read jobs back from MLflow (MLflow is the job store)."""

from __future__ import annotations

import click

from mg_mlflow import metric_names as mn
from mg_mlflow.cli.base import console, print_kv
from mg_mlflow.env import default_tracking_uri, mg_home, setup_env
from mg_mlflow.errors import MGError
from mg_mlflow.proc import wait_interruptibly
from mg_mlflow.registry.debris import clean, find_leftovers
from mg_mlflow.registry.resolve import registry_version
from mg_mlflow.team.server import job_runner_off
from mg_mlflow.tracking import ui_links
from mg_mlflow.tracking.liveness import DEAD, process_state, repair
from mg_mlflow.tracking.query import get_run, list_runs, sample_tables
from mg_mlflow.tracking.run import use_tracking_uri
from mg_mlflow.tracking.spool import read_spool, replay
from mg_mlflow.tracking.ui_links import base_url

KEY_PARAMS = ("base_model", "dataset", "backend", "method", "save_method", "max_steps", "learning_rate", "lora_r")
KEY_METRICS = (mn.LOSS_FIRST, mn.LOSS_FINAL, mn.EVAL_LOSS_FINAL, "train_seconds")
KEY_CARBON = (mn.EMISSIONS_MG, mn.ENERGY_J)  # in mg and J, a run logged in kg/kWh converted


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

    runs = list_runs(experiment, max_results)
    dead = 0
    table = Table(title=f"runs in experiment {experiment!r}", title_justify="left")
    for col in ("run id", "name", "status", "backend/method", "loss", "registered", "started"):
        table.add_column(col)
    for r in runs:
        loss = mn.value(r["metrics"], mn.LOSS_FINAL)
        status = r["status"]
        if status == "RUNNING" and process_state(r["tags"])[0] == DEAD:
            status, dead = "RUNNING (dead)", dead + 1
        elif r["tags"].get("mg.trial_state") == "PRUNED":  # a sweep trial stopped by its pruner (ends KILLED)
            status = "pruned"
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
@click.option("--dry-run", is_flag=True, help="only list the dead runs and registry leftovers, change nothing")
@click.option("--fix", is_flag=True, help="also delete the registry leftovers of dead or failed runs (versions "
                                          "an alias points at are kept)")
def repair_cmd(experiment, dry_run, fix):
    """End runs left RUNNING by a killed or crashed training as FAILED, with the reason (after sending the
    metrics the run kept in its local spool), and report the registry leftovers of dead or failed runs
    (--fix deletes them).

    A run records its process (mg.pid, mg.pid_start, mg.host); a RUNNING run of this machine whose
    process is gone (SIGKILL, out of memory, power loss) is dead. Runs of other hosts are left alone.

    Registry leftovers: a registered model with no versions, a version whose run ended FAILED or
    KILLED (or died), a logged model still PENDING after its run. A version with an alias is only
    reported.

    \b
    Examples:
      model-garden runs repair --dry-run
      model-garden runs repair --experiment model-garden
      model-garden runs repair --fix
    """
    fixed = repair(experiment, dry_run=dry_run)
    out = console()
    verb = "would mark" if dry_run else "marked"
    for run_id, why in fixed:
        out.print(f"{verb} run {run_id} FAILED: {why}", soft_wrap=True)
    out.print(f"{len(fixed)} dead run(s) {'found' if dry_run else 'marked FAILED'} in experiment {experiment!r}")
    leftovers = find_leftovers()
    for item in leftovers:
        out.print(f"registry leftover: {item.what}: {item.why}", soft_wrap=True, markup=False)
    fixable = [i for i in leftovers if i.fixable]
    if fix and not dry_run:
        for item in clean(leftovers):
            out.print(f"deleted {item.what}", markup=False)
    elif fixable:
        out.print(f"{len(fixable)} registry leftover(s): `model-garden runs repair --fix` deletes them", markup=False)
    if not leftovers:
        out.print("no registry leftovers")


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
@click.option("--samples", is_flag=True, help="also print the last table of sampled completions of a grpo run, "
                                             "with each reward's score (artifacts samples/step_NNNNN.json)")
def show_cmd(run_id, samples):
    """Show one run: status, key params, final metrics, registered version, artifacts.

    RUN_ID is a run id (or a unique prefix of one), or a registered version, models:/NAME/VERSION
    or models:/NAME@ALIAS, for the run that trained it.

    \b
    Examples:
      model-garden runs show 3f2a9c
      model-garden runs show models:/tiny-lora@champion
      model-garden runs show 3f2a9c --samples
    """
    if run_id.startswith("models:/"):
        use_tracking_uri()
        run_id = registry_version(run_id)[1].run_id
    r = get_run(run_id)
    status = r["status"]
    if r["tags"].get("mg.trial_state") == "PRUNED":
        status = f"pruned (MLflow status {status}): {r['tags'].get('mg.sweep.pruned_reason', 'stopped by the sweep pruner')}"
    rows = [("run id", r["run_id"]), ("status", status), ("experiment", r["experiment"]),
            ("started", r["start"]), ("error", r["tags"].get("mg.error")),
            ("backend", f"{r['tags'].get('mg.backend', '')} ({r['tags'].get('mg.backend_reason', '')})"),
            ("registered", r["registered"]), ("git commit", r["tags"].get("mg.git_commit"))]
    rows += [(k, r["params"].get(k)) for k in KEY_PARAMS]
    rows += [(k, f"{value:.5g}") for k in KEY_METRICS if (value := mn.value(r["metrics"], k)) is not None]
    rows += [(mn.carbon(k), f"{value:.5g}") for k in KEY_CARBON
             if (value := mn.carbon_value(r["metrics"], k)) is not None]
    rows += [("datasets", ", ".join(r["datasets"]))]
    print_kv(f"run {r['run_id']}", rows)
    if samples:
        _print_samples(r["run_id"])


def _print_samples(run_id: str) -> None:
    from rich.table import Table

    tables = sample_tables(run_id)
    if not tables:
        console().print("no sampled completions (samples/*.json): the run is not a grpo run, or sample_steps=0")
        return
    path, last = tables[-1]
    table = Table(title=f"{path} ({len(tables)} table(s) logged)")
    for column in last["columns"]:
        table.add_column(str(column), overflow="fold")
    for row in last["data"]:
        table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row))
    console().print(table)


def _links(experiment: str, compare: tuple[str, ...], base: str) -> list[tuple[str, str]]:
    """(label, URL) pairs: the experiment's training-runs view, and the compare view of given runs."""
    import mlflow

    use_tracking_uri()
    links = []
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is not None:
        links.append((f"training runs of {experiment!r}", ui_links.runs_url(base, exp.experiment_id, "training")))
    if compare:
        runs = [get_run(r) for r in compare]
        exp_ids = [mlflow.get_run(r["run_id"]).info.experiment_id for r in runs]
        links.append((f"compare {len(runs)} runs", ui_links.compare_url(base, [r["run_id"] for r in runs], exp_ids)))
    return links


def _wait_healthy(url: str, proc, timeout: float = 120.0) -> bool:
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


@click.command("ui")
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--experiment", "-e", default="model-garden", show_default=True,
              help="experiment whose training-runs view is linked (and opened with --open)")
@click.option("--compare", "compare", multiple=True, metavar="RUN_ID",
              help="also link (and open) the compare view of these runs; repeat: --compare 3f2a --compare 81be")
@click.option("--open", "open_browser", is_flag=True, help="open the link in a browser once the server answers")
@click.option("--links-only", is_flag=True, help="print the links and exit (a server already runs)")
def ui_cmd(port, host, experiment, compare, open_browser, links_only):
    """Start the MLflow UI on the Model Garden store and print direct links into it.

    The printed link opens the experiment's training-runs table (#/experiments/<id>/runs) on MLflow's
    "Model training" sidebar (workflowType=machine_learning): a fresh browser otherwise lands on the
    GenAI sidebar, which MLflow 3 keeps per browser whatever the experiment's kind.

    \b
    Examples:
      model-garden ui                                   # server on 127.0.0.1:5000 + the links
      model-garden ui --open --compare 3f2a9c --compare 81be07
      model-garden ui --links-only --port 5000          # links to a server that already runs
    """
    import os
    import subprocess
    import sys

    setup_env()
    if compare and len(compare) < 2:
        raise MGError("--compare needs at least two runs", hint="repeat it: --compare RUN_A --compare RUN_B")
    base = base_url(host, port)
    links = _links(experiment, compare, base)
    out = console()
    for label, url in links:
        out.print(f"{label}: {url}", soft_wrap=True)
    if not links:
        out.print(f"no experiment {experiment!r} yet: {base}", soft_wrap=True)
    if links_only:
        return
    uri = default_tracking_uri()
    # the store URI travels in the environment, not on the command line: a database URI may hold a
    # password, and every user of the machine can read command lines (`ps`)
    env = {**os.environ, **job_runner_off(), "MLFLOW_BACKEND_STORE_URI": uri}
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port)]
    if uri.startswith("sqlite"):
        cmd += ["--default-artifact-root", (mg_home() / "mlartifacts").as_uri()]
    out.print("running: " + " ".join(cmd) + "  (store from MLFLOW_BACKEND_STORE_URI)", soft_wrap=True)
    sys.stdout.flush()
    if not open_browser:
        os.execve(sys.executable, cmd, env)
    proc = subprocess.Popen(cmd, env=env)
    try:
        if _wait_healthy(base, proc):
            import webbrowser

            target = links[-1][1] if links else base
            if not webbrowser.open(target):
                out.print(f"no browser found here; open {target}", soft_wrap=True)
        wait_interruptibly(proc)
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=30)


def register(group: click.Group) -> None:
    group.add_command(runs_group)
    group.add_command(ui_cmd)
