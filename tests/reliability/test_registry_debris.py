"""`runs repair` reports, and with --fix deletes, what a registration cut short leaves in the registry.

The debris is made as the interrupted code leaves it, through MLflow's client in the order a training
registers: a registered model created and no version (killed right after "Successfully registered
model"), a version of a run whose process was killed (after "Created version", before the alias), a
version of a run that failed after registering, and a logged model still PENDING. The dead process is
a real one, killed with SIGKILL."""

from __future__ import annotations

import socket
import subprocess

import psutil

from conftest import invoke_cli


def _dead_process_tags() -> dict[str, str]:
    proc = subprocess.Popen(["sleep", "60"])
    started = psutil.Process(proc.pid).create_time()
    proc.kill()
    proc.wait()
    return {"mg.pid": str(proc.pid), "mg.pid_start": str(started), "mg.host": socket.gethostname()}


def _live_process_tags() -> dict[str, str]:
    me = psutil.Process()
    return {"mg.pid": str(me.pid), "mg.pid_start": str(me.create_time()), "mg.host": socket.gethostname()}


def test_registry_leftovers_are_reported_then_cleaned(mg_home, tmp_path):
    import mlflow

    client = mlflow.tracking.MlflowClient()
    exp = client.create_experiment("model-garden")
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")

    killed = client.create_run(exp, tags=_dead_process_tags())          # SIGKILLed while registering
    failed = client.create_run(exp)                                      # failed after registering
    client.set_terminated(failed.info.run_id, "FAILED")
    good = client.create_run(exp)
    client.set_terminated(good.info.run_id, "FINISHED")
    live = client.create_run(exp, tags=_live_process_tags())             # a training still going

    client.create_registered_model("killed-early")                       # no version yet
    client.create_registered_model("killed-late")
    client.create_model_version("killed-late", src.as_uri(), run_id=killed.info.run_id)
    client.create_registered_model("mixed")
    client.create_model_version("mixed", src.as_uri(), run_id=good.info.run_id)      # 1: sound
    client.create_model_version("mixed", src.as_uri(), run_id=failed.info.run_id)    # 2: leftover
    client.create_model_version("mixed", src.as_uri(), run_id=failed.info.run_id)    # 3: leftover, promoted
    client.set_registered_model_alias("mixed", "prod", "3")
    client.create_model_version("mixed", src.as_uri(), run_id=live.info.run_id)      # 4: still being made
    pending = client.create_logged_model(exp, name="model", source_run_id=killed.info.run_id)
    busy = client.create_logged_model(exp, name="model", source_run_id=live.info.run_id)
    done = client.create_logged_model(exp, name="model", source_run_id=good.info.run_id)
    client.finalize_logged_model(done.model_id, "READY")

    expected = [f"models:/killed-early: a registered model with no versions",
                f"models:/killed-late/1: run {killed.info.run_id} is RUNNING but its process is gone",
                f"models:/mixed/2: run {failed.info.run_id} ended FAILED",
                f"models:/mixed/3: run {failed.info.run_id} ended FAILED; kept: alias @prod points at it",
                f"{pending.model_id}: logged model 'model' still PENDING"]

    dry = invoke_cli(["runs", "repair", "--dry-run", "--fix"], cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    text = " ".join(dry.stdout.split())
    for line in expected:
        assert f"registry leftover: {line}" in text, (line, dry.stdout)
    assert "registry leftover: models:/mixed/1" not in text and "models:/mixed/4" not in text
    assert busy.model_id not in text and done.model_id not in text
    assert "4 registry leftover(s): `model-garden runs repair --fix` deletes them" in text
    assert [m.name for m in client.search_registered_models()] == ["killed-early", "killed-late", "mixed"]

    plain = invoke_cli(["runs", "repair"], cwd=tmp_path)  # ends the dead run, reports, deletes nothing
    assert plain.returncode == 0 and f"marked run {killed.info.run_id} FAILED" in plain.stdout
    assert "models:/killed-late/1: run" in plain.stdout and "ended FAILED" in plain.stdout
    assert len(client.search_model_versions("name='mixed'")) == 4

    fixed = invoke_cli(["runs", "repair", "--fix"], cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    for what in ("models:/killed-early", "models:/killed-late/1", "models:/mixed/2", pending.model_id,
                 "models:/killed-late"):
        assert f"deleted {what}\n" in fixed.stdout, (what, fixed.stdout)
    assert sorted(m.name for m in client.search_registered_models()) == ["mixed"]
    assert sorted(int(v.version) for v in client.search_model_versions("name='mixed'")) == [1, 3, 4]
    assert str(client.get_model_version_by_alias("mixed", "prod").version) == "3"
    assert {m.model_id for m in client.search_logged_models([exp])} == {busy.model_id, done.model_id}

    again = invoke_cli(["runs", "repair", "--fix"], cwd=tmp_path)  # idempotent: only the promoted one is left
    assert again.returncode == 0 and "deleted" not in again.stdout
    assert "registry leftover: models:/mixed/3" in again.stdout
