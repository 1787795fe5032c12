"""Read and steer jobs: Ray's job states joined with the MLflow runs they record.

A job's runs carry the tag ``mg.job_id`` (set through ``MLFLOW_RUN_CONTEXT`` at submit), so everything
about progress comes from MLflow and works from any machine that reaches the tracking store.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

from mg_mlflow import metric_names as mn
from mg_mlflow.errors import MGError, MissingExtra
from mg_mlflow.team import ray_local
from mg_mlflow.tracking.liveness import end_open_run
from mg_mlflow.tracking.run import use_tracking_uri

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
RUN_STATUS_FOR = {"STOPPED": "KILLED", "FAILED": "FAILED"}


def client_for(address: str | None, start: bool = False):
    """(JobSubmissionClient, address, is_local). ``address`` > RAY_ADDRESS > the local instance
    (started when ``start``)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    local = address is None
    if local:
        state = ray_local.ensure_started() if start else ray_local.read_state()
        if state is None:
            raise MGError("no local Ray instance is running (nothing was submitted from this MG_HOME)",
                          hint="submit a job with `model-garden submit ...`, or pass --address / RAY_ADDRESS")
        address = state["dashboard_url"]
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise MissingExtra("ray", "team", "jobs run on Ray") from None
    try:
        return JobSubmissionClient(address), address, local
    except Exception as exc:  # noqa: BLE001 - ConnectionError, ValueError from Ray's SDK
        raise MGError(f"cannot reach Ray at {address}: {str(exc).splitlines()[0] if str(exc) else exc}",
                      hint="is the cluster up? the address is the dashboard's, e.g. http://HEAD:8265") from None


def _status(details) -> str:
    return getattr(details.status, "value", str(details.status))


def _job_details(client, job_id: str):
    try:
        return client.get_job_info(job_id)
    except Exception:  # noqa: BLE001 - Ray raises RuntimeError for unknown ids
        raise MGError(f"no job {job_id!r} on this Ray instance", hint="see `model-garden jobs list`") from None


def runs_by_job(job_ids: list[str] | None = None) -> dict[str, list]:
    """MLflow runs grouped by their ``mg.job_id`` tag (one search over all experiments)."""
    import mlflow

    use_tracking_uri()
    client = mlflow.tracking.MlflowClient()
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    if not exp_ids:
        return {}
    if job_ids and len(job_ids) == 1:
        where = f"tags.`mg.job_id` = '{job_ids[0]}'"
    else:
        where = "tags.`mg.job_id` LIKE 'mg-%'"
    out: dict[str, list] = {}
    for run in client.search_runs(exp_ids, filter_string=where, max_results=1000,
                                  order_by=["attributes.start_time ASC"]):
        out.setdefault(run.data.tags["mg.job_id"], []).append(run)
    return out


def reconcile(job_id: str, ray_state: str, runs: list) -> list:
    """A job Ray says is over whose run still says RUNNING (its process was killed before it could
    end the run): end the run as KILLED (stopped) or FAILED, so both sides agree."""
    import mlflow

    if ray_state not in RUN_STATUS_FOR:
        return runs
    client = mlflow.tracking.MlflowClient()
    fixed = []
    for run in runs:
        if run.info.status == "RUNNING":
            end_open_run(client, run.info.run_id, RUN_STATUS_FOR[ray_state],
                         f"Ray job {job_id} ended {ray_state} while this run was open")
            run = client.get_run(run.info.run_id)
        fixed.append(run)
    return fixed


def _time(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def job_row(details, runs: list) -> dict:
    """One job as a flat record: Ray's side and its (last) MLflow run's side."""
    run = runs[-1] if runs else None
    row = {"job_id": details.submission_id, "state": _status(details),
           "command": (details.metadata or {}).get("mg.command", ""),
           "start_time": details.start_time, "end_time": details.end_time,
           "submitted": _time(details.start_time), "ended": _time(details.end_time),
           "run_id": None, "run_status": None, "run_name": None, "run_started": None, "run_seconds": None,
           "loss": None, "tokens_per_second": None,
           "emissions_kg": None, "registered": None, "runs": len(runs), "message": details.message or ""}
    if run is not None:
        m, tags = run.data.metrics, run.data.tags
        row.update(run_id=run.info.run_id, run_status=run.info.status, run_name=run.info.run_name,
                   run_started=_time(run.info.start_time),
                   run_seconds=((run.info.end_time or time.time() * 1000) - run.info.start_time) / 1000,
                   loss=mn.value(m, mn.LOSS_FINAL, mn.value(m, mn.LOSS)),
                   tokens_per_second=mn.value(m, mn.TOKENS_PER_SECOND),
                   emissions_kg=mn.carbon_value(m, mn.EMISSIONS_KG),
                   registered=(f"models:/{tags['mg.registered_model']}/{tags.get('mg.registered_version')}"
                               if tags.get("mg.registered_model") else None))
    return row


def list_jobs(address: str | None = None) -> list[dict]:
    """Model Garden's jobs on the cluster, newest first, each joined with its MLflow run."""
    client, _, _ = client_for(address)
    jobs = [j for j in client.list_jobs() if (j.submission_id or "").startswith("mg-")]
    by_job = runs_by_job() if jobs else {}
    rows = []
    for details in sorted(jobs, key=lambda j: j.start_time or 0, reverse=True):
        runs = reconcile(details.submission_id, _status(details), by_job.get(details.submission_id, []))
        rows.append(job_row(details, runs))
    return rows


def get_job(job_id: str, address: str | None = None) -> dict:
    client, _, _ = client_for(address)
    details = _job_details(client, job_id)
    runs = reconcile(job_id, _status(details), runs_by_job([job_id]).get(job_id, []))
    return job_row(details, runs)


def logs(job_id: str, address: str | None = None) -> str:
    client, _, _ = client_for(address)
    _job_details(client, job_id)
    return client.get_job_logs(job_id)


def follow_logs(job_id: str, address: str | None = None) -> None:
    """Print the job's output as it comes, until the job ends (Ray's tail API)."""
    import asyncio

    client, _, _ = client_for(address)
    _job_details(client, job_id)

    async def pump():
        async for chunk in client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    asyncio.run(pump())


def cancel(job_id: str, address: str | None = None, timeout: float = 120.0) -> dict:
    """Stop a queued or running job and wait until Ray reports it over; its run ends KILLED."""
    client, _, _ = client_for(address)
    details = _job_details(client, job_id)
    was = _status(details)
    if was not in TERMINAL:
        client.stop_job(job_id)
    if was == "RUNNING":
        deadline = time.time() + timeout
        while _status(details) not in TERMINAL and time.time() < deadline:
            time.sleep(0.5)
            details = client.get_job_info(job_id)
    # A queued job keeps its place until a slot frees; Ray then starts its entry process and stops it
    # at once: the entry (team/entry.py) holds the signal across its start-or-not decision, so the
    # training command never starts and no run is ever created for it.
    runs = reconcile(job_id, _status(details), runs_by_job([job_id]).get(job_id, []))
    row = job_row(details, runs)
    row["was"] = was
    return row


def watch(job_id: str, address: str | None = None, interval: float = 2.0, timeout: float | None = None,
          emit=print) -> dict:
    """Follow a job's live loss, tokens/s and carbon from MLflow until Ray says it is over.
    Calls ``emit(line)`` for every new logged step; returns the final job row."""
    import mlflow

    client, _, _ = client_for(address)
    _job_details(client, job_id)
    tracking = mlflow.tracking.MlflowClient()
    last_step = -1
    last_state = None
    run_id = None
    deadline = time.time() + timeout if timeout else None
    while True:
        details = client.get_job_info(job_id)
        state = _status(details)
        if state != last_state:
            emit(f"{job_id}: {state}")
            last_state = state
        if run_id is None:
            runs = runs_by_job([job_id]).get(job_id, [])
            if runs:
                run_id = runs[-1].info.run_id
                emit(f"{job_id}: MLflow run {run_id} ({runs[-1].info.run_name})")
        if run_id is not None:
            last_step = _emit_new_steps(tracking, run_id, last_step, emit)
        if state in TERMINAL or (deadline and time.time() > deadline):
            break
        time.sleep(interval)
    row = get_job(job_id, address)
    emit(f"{job_id}: {row['state']} (run {row['run_status'] or 'none'})"
         + (f", registered {row['registered']}" if row["registered"] else ""))
    return row


def _emit_new_steps(tracking, run_id: str, last_step: int, emit) -> int:
    history = {key: {m.step: m.value for m in tracking.get_metric_history(run_id, key)}
               for key in (mn.LOSS, mn.TOKENS_PER_SECOND)}
    # cumulative CO2 in mg (a run logged before the mg names: its kg, converted)
    found = mn.carbon_key(tracking.get_run(run_id).data.metrics, mn.EMISSIONS_MG)
    carbon = sorted((m.step, m.value * found[1]) for m in tracking.get_metric_history(run_id, found[0])) if found else []
    for step in sorted(s for s in history[mn.LOSS] if s > last_step):
        parts = [f"step {step}", f"loss {history[mn.LOSS][step]:.4f}"]
        if step in history[mn.TOKENS_PER_SECOND]:
            parts.append(f"{history[mn.TOKENS_PER_SECOND][step]:.0f} tok/s")
        known = [v for s, v in carbon if s <= step]
        if known:
            parts.append(f"CO2 {known[-1]:.3g} mg")
        emit("  " + "  ".join(parts))
        last_step = step
    return last_step


def shutdown(timeout: float = 120.0) -> dict | None:
    """Stop the local Ray instance: running and queued jobs first (their runs end KILLED), then Ray."""
    state = ray_local.read_state()
    if state is None:
        return None
    stopped = []
    try:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(state["dashboard_url"])
        open_jobs = [j.submission_id for j in client.list_jobs()
                     if _status(j) not in TERMINAL and j.submission_id]
        for job_id in open_jobs:
            client.stop_job(job_id)
        stopped = list(open_jobs)
        deadline = time.time() + timeout
        while open_jobs and time.time() < deadline:
            open_jobs = [j for j in open_jobs if _status(client.get_job_info(j)) not in TERMINAL]
            time.sleep(0.5)
    except Exception:  # noqa: BLE001 - a broken instance is still stopped below
        pass
    result = ray_local.stop() or state
    result["stopped_jobs"] = stopped
    return result
