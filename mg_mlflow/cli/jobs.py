"""``model-garden submit`` and ``model-garden jobs``: training jobs queued and run by Ray Jobs."""

from __future__ import annotations

import os

import click

from mg_mlflow.cli.base import console, print_kv
from mg_mlflow.config import TrainConfig
from mg_mlflow.env import setup_env
from mg_mlflow.options import GroupedCommand, build_config, click_options, recipe_options
from mg_mlflow.team import ray_local
from mg_mlflow.team.jobs import cancel, follow_logs, list_jobs, logs, shutdown, watch
from mg_mlflow.team.submit import (JobSpec, absolute_paths, check_command, submit, training_argv,
                                   validate_training)
from mg_mlflow.vision_config import VisionTrainConfig

ADDRESS_HELP = "Ray dashboard address of a cluster, e.g. http://ray-head:8265 (default: RAY_ADDRESS, else a local Ray started on demand)"


def job_options(func):
    func = click.option("--address", default=None, help=ADDRESS_HELP)(func)
    func = click.option("--gpus", type=float, default=None,
                        help="GPUs the job asks for (default: 1 on a local GPU machine, else one mg_train_slot)")(func)
    func = click.option("--working-dir", default=None, type=click.Path(file_okay=False),
                        help="folder Ray uploads as the job's working directory (runtime_env working_dir)")(func)
    func = click.option("--ship-code/--no-ship-code", default=None,
                        help="upload this mg_mlflow package with the job (default: on for a remote cluster)")(func)
    return func


def _train_options(func, cls, example: str):
    func = click.option("--progress/--no-progress", default=None, hidden=True,
                        help="accepted for symmetry with train; jobs never draw a progress bar")(func)
    return recipe_options(example)(click_options(cls, typed=False)(func))


def _gpus(gpus, address) -> float:
    if gpus is not None:
        return gpus
    if address or os.environ.get("RAY_ADDRESS"):
        return 0
    return 1 if ray_local.gpu_count() else 0


def _submit_training(command, cls, vision, config_file, set_args, options, address, gpus, working_dir, ship_code):
    setup_env()
    cfg = build_config(cls, config_file, options, set_args)  # the same rules and errors as train
    absolute_paths(cfg)
    validate_training(cfg)                                   # every bad record, file:line, before queueing
    spec = JobSpec(command=training_argv(command, cfg), gpus=_gpus(gpus, address), address=address,
                   working_dir=working_dir, ship_code=ship_code, run_name=cfg.run_name, experiment=cfg.experiment)
    _report(submit(spec))


def _report(info: dict) -> None:
    err = console(stderr=True)
    where = "local Ray" if info["local"] else "Ray"
    err.print(f"queued on {where} at {info['address']} (asks for {info['resources']})", markup=False)
    err.print(f"follow it: model-garden jobs watch {info['job_id']}", markup=False)
    click.echo(info["job_id"])  # the last line on stdout: id=$(model-garden submit ... | tail -1)


def _make_submit(name: str, cls, command: str, vision: bool, example: str, doc: str):
    def run(config_file, set_args, progress, address, gpus, working_dir, ship_code, **options):
        _submit_training(command, cls, vision, config_file, set_args, options, address, gpus, working_dir, ship_code)

    run.__doc__ = doc
    run = _train_options(run, cls, example)
    run = job_options(run)
    return click.command(name, cls=GroupedCommand, context_settings={"max_content_width": 110})(run)


submit_cmd = _make_submit("submit", TrainConfig, "train", False, "projects/tiny-lora/config.yaml", """\
Queue `model-garden train` as a Ray job and return at once (the last stdout line is the job id).

Takes exactly the options of `train`. The configuration and every dataset record are checked here,
with the same file:line errors as train: a bad job is refused before it is queued. The job records
to the tracking store this shell points at (MLFLOW_TRACKING_URI and its credentials travel in Ray's
runtime environment, never in argv or logs); each job asks Ray for one mg_train_slot (or GPUs), so
jobs queue while the slots are busy and start by themselves.

\b
Examples:
  id=$(model-garden submit --base-model ./tiny --dataset data.jsonl --max-steps 60 | tail -1)
  model-garden jobs watch $id
  model-garden submit --config projects/tiny-lora/config.yaml --set lora_r=8 --run-name r8
  MLFLOW_TRACKING_URI=http://mlflow:5000 model-garden submit --address http://ray-head:8265 \\
      --gpus 1 --base-model Qwen/Qwen2.5-0.5B-Instruct --dataset /shared/data.jsonl
""")

submit_vision_cmd = _make_submit("submit-vision", VisionTrainConfig, "train-vision", True,
                                 "projects/tiny-vision/config.yaml", """\
Queue `model-garden train-vision` as a Ray job (options of train-vision; images checked here).

\b
Example:
  model-garden submit-vision --config projects/tiny-vision/config.yaml --base-model ./tiny-vl \\
      --dataset shapes/data.jsonl --set max_steps=300
""")


@click.command("submit-command", context_settings={"max_content_width": 110, "ignore_unknown_options": True})
@job_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def submit_command_cmd(address, gpus, working_dir, ship_code, command):
    """Queue any other model-garden COMMAND (evaluate, sweep, ...) as a Ray job.

    Its options are parsed here (a typo is refused before queueing); runs it starts carry the job id.

    \b
    Examples:
      model-garden submit-command -- runs list
      model-garden submit-command -- evaluate models:/tiny-lora@champion --dataset eval.jsonl
      model-garden submit-command -- sweep --config sweep.yaml
    """
    setup_env()
    argv = list(command)
    check_command(argv, click.get_current_context().find_root().command)
    _report(submit(JobSpec(command=argv, gpus=_gpus(gpus, address), address=address, working_dir=working_dir,
                           ship_code=ship_code)))


@click.group("jobs")
def jobs_group():
    """Jobs queued on Ray, joined with their MLflow runs (list, watch, logs, cancel, shutdown)."""


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


@jobs_group.command("list")
@click.option("--address", default=None, help=ADDRESS_HELP)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_cmd(address, as_json):
    """Ray's job states (PENDING/RUNNING/SUCCEEDED/FAILED/STOPPED) with each job's MLflow run:
    status, loss, tokens/s, emissions and the registered version.

    \b
    Example:
      model-garden jobs list
    """
    setup_env()
    rows = list_jobs(address)
    if as_json:
        import json

        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="jobs", title_justify="left")
    for col in ("job id", "state", "command", "run", "run status", "loss", "tok/s", "CO2 kg", "registered",
                "submitted", "run started", "run s"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["job_id"], r["state"], r["command"], (r["run_name"] or "") if r["run_id"] else "",
                      r["run_status"] or "", _fmt(r["loss"], ".4f"), _fmt(r["tokens_per_second"], ".0f"),
                      _fmt(r["emissions_kg"], ".3g"), r["registered"] or "", r["submitted"],
                      r["run_started"] or "", _fmt(r["run_seconds"], ".0f"))
    console().print(table)
    if not rows:
        console().print("no jobs yet: try `model-garden submit --help`")


@jobs_group.command("watch")
@click.argument("job_id")
@click.option("--address", default=None, help=ADDRESS_HELP)
@click.option("--interval", type=float, default=2.0, show_default=True, help="seconds between polls")
@click.option("--timeout", type=float, default=None, help="stop watching after N seconds")
def watch_cmd(job_id, address, interval, timeout):
    """Follow a job's live loss, tokens/s and carbon (read from MLflow) until it ends.

    \b
    Example:
      model-garden jobs watch mg-3f2a9c01de
    """
    setup_env()
    row = watch(job_id, address, interval, timeout, emit=lambda line: click.echo(line))
    if row["state"] == "FAILED":
        raise SystemExit(1)


@jobs_group.command("logs")
@click.argument("job_id")
@click.option("--address", default=None, help=ADDRESS_HELP)
@click.option("--follow", "-f", is_flag=True, help="keep printing until the job ends")
def logs_cmd(job_id, address, follow):
    """Print a job's output (stdout and stderr of its process, kept by Ray).

    \b
    Example:
      model-garden jobs logs mg-3f2a9c01de --follow
    """
    if follow:
        follow_logs(job_id, address)
    else:
        click.echo(logs(job_id, address), nl=False)


@jobs_group.command("cancel")
@click.argument("job_id")
@click.option("--address", default=None, help=ADDRESS_HELP)
def cancel_cmd(job_id, address):
    """Stop a queued or running job; a queued one never starts, a running one's run ends KILLED.

    \b
    Example:
      model-garden jobs cancel mg-3f2a9c01de
    """
    setup_env()
    row = cancel(job_id, address)
    state = row["state"]
    if row["was"] == "PENDING":
        state = "stop requested while queued: Ray ends it STOPPED before it starts"
    print_kv(f"job {job_id}", [("Ray state", state), ("MLflow run", row["run_id"] or "none (never started)"),
                               ("run status", row["run_status"])])


@jobs_group.command("start")
@click.option("--slots", type=int, default=1, show_default=True, help="trainings that may run at once (mg_train_slot)")
@click.option("--num-cpus", type=int, default=1, show_default=True, help="CPUs Ray may hand to tasks")
def start_cmd(slots, num_cpus):
    """Start the local Ray instance now (submit starts it on demand with one slot).

    \b
    Example:
      model-garden jobs start --slots 2
    """
    setup_env()
    state = ray_local.ensure_started(slots=slots, num_cpus=num_cpus)
    print_kv("local Ray", [("dashboard", state["dashboard_url"]), ("slots", state["slots"]),
                           ("GPUs", state["gpus"]), ("temp dir", state["temp_dir"]), ("pid", state["pid"])])


@jobs_group.command("shutdown")
def shutdown_cmd():
    """Stop the local Ray instance: running jobs are stopped first (runs end KILLED), no process is left.

    \b
    Example:
      model-garden jobs shutdown
    """
    setup_env()
    state = shutdown()
    if state is None:
        console().print("no local Ray instance is running")
        return
    console().print(f"local Ray (pid {state['pid']}) stopped; jobs stopped: {len(state['stopped_jobs'])}")


def register(group: click.Group) -> None:
    group.add_command(submit_cmd)
    group.add_command(submit_vision_cmd)
    group.add_command(submit_command_cmd)
    group.add_command(jobs_group)
