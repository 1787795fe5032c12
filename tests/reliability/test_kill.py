"""A training killed with SIGKILL is shown dead by `runs list` and ended FAILED by `runs repair`."""

from __future__ import annotations

import os
import signal

import psutil

from conftest import invoke_cli
from reltrain_support import client, runs, start_training, stop, wait_for


def test_sigkilled_training_is_listed_dead_and_repaired_failed(mg_home, tiny_model, sample_data, tmp_path):
    proc = start_training(["--base-model", str(tiny_model), "--dataset", str(sample_data),
                           "--max-steps", "100000", "--no-system-metrics", "--no-carbon"], cwd=tmp_path)
    try:
        run = wait_for(lambda: next((r for r in runs() if len(client().get_metric_history(
            r.info.run_id, "train/loss")) >= 3), None), 180, "three logged losses")
        tags = client().get_run(run.info.run_id).data.tags
        assert tags["mg.pid"] == str(proc.pid)  # the console script is the training process
        assert abs(float(tags["mg.pid_start"]) - psutil.Process(proc.pid).create_time()) < 1.0
        children = psutil.Process(proc.pid).children(recursive=True)
        from mg_mlflow.tracking.liveness import ALIVE, process_state

        assert process_state(tags)[0] == ALIVE  # a live training is not flagged
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        stop(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not [c for c in children if c.is_running()]  # no orphan left by the training
    assert client().get_run(run.info.run_id).info.status == "RUNNING"  # what MLflow alone shows

    listed = invoke_cli(["runs", "list"], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "RUNNING (dead)" in listed.stdout and "1 run(s) marked RUNNING" in listed.stdout

    dry = invoke_cli(["runs", "repair", "--dry-run"], cwd=tmp_path)
    assert dry.returncode == 0 and f"would mark run {run.info.run_id} FAILED" in dry.stdout
    assert client().get_run(run.info.run_id).info.status == "RUNNING"

    fixed = invoke_cli(["runs", "repair"], cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert "1 dead run(s) marked FAILED" in fixed.stdout
    after = client().get_run(run.info.run_id)
    assert after.info.status == "FAILED" and after.info.end_time is not None
    assert f"process {proc.pid} on " in after.data.tags["mg.error"] and "is gone" in after.data.tags["mg.error"]
    history = client().get_metric_history(run.info.run_id, "train/loss")
    assert len(history) >= 3  # history kept
    # and completed: what the killed process kept in its spool and never sent was sent by the repair
    from mg_mlflow.tracking.spool import read_spool

    spool = next(mg_home.rglob(f"mlflow_spool_{run.info.run_id}.jsonl"))
    spooled = [p["step"] for p in read_spool(spool)[0] if p["key"] == "train/loss"]
    assert sorted(m.step for m in history) == sorted(spooled)
    from mg_mlflow.tracking.liveness import repair

    assert repair("model-garden") == []  # idempotent: nothing left to repair


def test_process_state_tells_alive_dead_reused_and_foreign():
    from mg_mlflow.tracking.liveness import ALIVE, DEAD, UNKNOWN, process_state
    from mg_mlflow.tracking.run import process_tags

    mine = process_tags()
    assert process_state(mine)[0] == ALIVE
    reused = {**mine, "mg.pid_start": f"{float(mine['mg.pid_start']) - 3600:.2f}"}
    assert process_state(reused)[0] == DEAD  # same pid, another process: not ours
    gone = psutil.Popen(["true"])
    gone.wait()
    assert process_state({**mine, "mg.pid": str(gone.pid)})[0] == DEAD
    assert process_state({**mine, "mg.host": "elsewhere"})[0] == UNKNOWN
    assert process_state({})[0] == UNKNOWN


def test_sync_spool_sends_what_a_training_kept_locally_once(mg_home, tmp_path):
    import json

    import mlflow

    from mg_mlflow.tracking.run import ensure_experiment

    with mlflow.start_run(experiment_id=ensure_experiment("model-garden")) as run:
        pass
    spool = tmp_path / f"mlflow_spool_{run.info.run_id}.jsonl"
    points = [{"key": "train/loss", "value": 5.0 - i / 10, "timestamp": 1_700_000_000_000 + i, "step": i + 1} for i in range(5)]
    spool.write_text("".join(json.dumps(p) + "\n" for p in points) + '{"key": "train/loss", "val')  # cut by a crash
    for _ in range(2):  # idempotent
        proc = invoke_cli(["runs", "sync-spool", str(spool)], cwd=tmp_path)
        said = " ".join(proc.stdout.split())  # the console wraps the long spool path where it fits
        assert proc.returncode == 0 and "sent 5 metric point(s)" in said and "1 unreadable" in said, proc.stdout
    history = client().get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(p["step"], p["value"]) for p in points]
