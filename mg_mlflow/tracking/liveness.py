"""Is the process behind a RUNNING run still alive? (runs killed with SIGKILL or OOM never end themselves)

Every run records the training process: ``mg.pid``, ``mg.pid_start`` (its start time, so a reused
pid is not mistaken for the trainer) and ``mg.host``. A RUNNING run of this machine whose process is
gone is *dead*; ``model-garden runs repair`` ends it FAILED with the reason in ``mg.error``.
Runs of other machines (or without the tags) cannot be checked from here: they are *unknown*.
"""

from __future__ import annotations

import socket
import time

from mg_mlflow.env import run_outputs
from mg_mlflow.errors import MGError
from mg_mlflow.tracking.run import use_tracking_uri
from mg_mlflow.tracking.spool import send_kept

ALIVE, DEAD, UNKNOWN = "alive", "dead", "unknown"
START_TOLERANCE_S = 1.0  # process start times are kept to 0.01 s; clock ticks make them drift a little


def process_state(tags: dict[str, str], host: str | None = None) -> tuple[str, str]:
    """(alive | dead | unknown, why) for the process named by a run's tags."""
    import psutil

    pid, started, run_host = tags.get("mg.pid"), tags.get("mg.pid_start"), tags.get("mg.host")
    if not pid or not started or not run_host:
        return UNKNOWN, "the run has no process tags (started by an older version or another tool)"
    if run_host != (host or socket.gethostname()):
        return UNKNOWN, f"the run's process is on host {run_host}"
    try:
        proc = psutil.Process(int(pid))
        if abs(proc.create_time() - float(started)) > START_TOLERANCE_S:
            return DEAD, f"process {pid} on {run_host} is gone (its pid now belongs to another process)"
        if proc.status() == psutil.STATUS_ZOMBIE:
            return DEAD, f"process {pid} on {run_host} exited without ending the run (zombie)"
    except psutil.NoSuchProcess:
        return DEAD, f"process {pid} on {run_host} is gone (killed, crashed or out of memory)"
    except (psutil.AccessDenied, ValueError):
        return UNKNOWN, f"process {pid} on {run_host} cannot be inspected"
    return ALIVE, f"process {pid} on {run_host} is running"


def dead_runs(experiment: str) -> list[tuple[object, str]]:
    """(run, why) for every RUNNING run of ``experiment`` whose process on this machine is gone."""
    import mlflow

    use_tracking_uri()
    client = mlflow.tracking.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise MGError(f"no experiment named {experiment!r}",
                      hint="see the experiments in `model-garden ui`, or pass --experiment")
    out = []
    for run in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                  max_results=1000):
        state, why = process_state(run.data.tags)
        if state == DEAD:
            out.append((run, why))
    return out


def end_open_run(client, run_id: str, status: str, why: str) -> None:
    """End a run its own process could not end (killed, or gone with its job) as ``status``, with the
    reason in the ``mg.error`` tag: the one way every repair path closes a run."""
    client.set_tag(run_id, "mg.error", why)
    client.set_terminated(run_id, status, end_time=int(time.time() * 1000))


def repair(experiment: str, dry_run: bool = False) -> list[tuple[str, str]]:
    """End every dead RUNNING run of ``experiment`` as FAILED with the reason; (run id, why) of each."""
    import mlflow

    dead = dead_runs(experiment)  # points MLflow at the configured store first
    client = mlflow.tracking.MlflowClient()
    repaired = []
    for run, why in dead:
        if not dry_run:
            # what the killed process kept in its spool and never sent (MLflow stores a point once)
            send_kept(run_outputs(run.info.run_id, run.data.params.get("output_dir", "")), run.info.run_id)
            end_open_run(client, run.info.run_id, "FAILED", f"{why}; marked FAILED by `model-garden runs repair`")
        repaired.append((run.info.run_id, why))
    return repaired

