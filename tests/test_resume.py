"""Fault tolerance of a training run: SIGTERM ends the run KILLED after a checkpoint, a run
killed with SIGKILL is resumed from its last checkpoint, and the SAME MLflow run goes on: every step
logged once, the loss curve equal to an uninterrupted run's within 1e-4, carbon continuing."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from conftest import BIN, invoke_cli

STEPS = 120  # long enough that a signal sent at step 8 or 17 lands before the end


def _args(tiny_model, sample_data, name):
    return ["train", "--base-model", str(tiny_model), "--dataset", str(sample_data), "--max-steps", str(STEPS),
            "--learning-rate", "3e-3", "--batch-size", "4", "--save-steps", "5", "--logging-steps", "1", "--register-as", "none",
            "--no-system-metrics", "--carbon-measure-secs", "1", "--carbon-interval-steps", "2",
            "--run-name", name, "--no-progress"]


def _stop_at(args, step: int, sig: int) -> int:
    """Start a real training process and send ``sig`` once it has printed step ``step``; its exit code."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([str(BIN / "model-garden"), *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        deadline = time.monotonic() + 600
        for line in proc.stderr:
            if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= step:
                proc.send_signal(sig)
                break
            assert time.monotonic() < deadline, "training never reached the step"
        proc.stderr.read()
        return proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()


def _run(client, name):
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                filter_string=f"attributes.run_name = '{name}'")
    return run


def test_sigterm_checkpoint_kill9_and_resume_continue_the_same_run(mg_home, tiny_model, sample_data):
    import mlflow

    client = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    ref = invoke_cli(_args(tiny_model, sample_data, "uninterrupted"))
    assert ref.returncode == 0, ref.stderr[-2000:]
    reference = {m.step: m.value for m in client.get_metric_history(_run(client, "uninterrupted").info.run_id, "train/loss")}
    assert sorted(reference) == list(range(1, STEPS + 1))

    args = _args(tiny_model, sample_data, "interrupted")
    assert _stop_at(args, 8, signal.SIGTERM) != 0  # segment 1: SIGTERM -> checkpoint, KILLED
    run = _run(client, "interrupted")
    run_id = run.info.run_id
    assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags["mg.error"]
    stopped_at = int(run.data.tags["mg.error"].split("checkpoint-")[1].split(";")[0])
    checkpoints = mg_home / "outputs" / run_id / "checkpoints"
    assert (checkpoints / f"checkpoint-{stopped_at}").is_dir() and stopped_at >= 8
    carbon_1 = max(client.get_metric_history(run_id, "system/carbon/energy_j"), key=lambda m: m.step).value

    # segment 2: resumed, then killed -9 (no cleanup at all: the run stays RUNNING, a checkpoint every 5)
    code = _stop_at(["train", "--resume", run_id, "--no-progress"], stopped_at + 9, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert client.get_run(run_id).info.status == "RUNNING"

    done = invoke_cli(["train", "--resume", run_id])  # segment 3: to the end
    assert done.returncode == 0, done.stderr[-2000:]
    final = client.get_run(run_id)
    assert final.info.status == "FINISHED" and final.data.tags.get("mg.resumed") == "true"
    history = client.get_metric_history(run_id, "train/loss")
    steps = [m.step for m in history]
    assert sorted(steps) == list(range(1, STEPS + 1))  # no gap, no duplicate
    worst = max(abs(m.value - reference[m.step]) for m in history)
    assert worst <= 1e-4, f"loss differs from the uninterrupted run by {worst}"
    energy = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "system/carbon/energy_j"))
    assert all(b[1] >= a[1] for a, b in zip(energy, energy[1:]))  # cumulative across segments
    assert final.data.metrics["system/carbon/total_energy_j"] > carbon_1
    assert final.data.metrics["train/loss_first"] == reference[1]
