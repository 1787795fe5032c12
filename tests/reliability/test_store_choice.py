"""Without ``MLFLOW_TRACKING_URI`` every command that reads or writes the store uses ``$MG_HOME``'s
sqlite store, and none leaves an ``mlflow.db`` or ``mlruns`` in the current folder.

The suite sets ``MLFLOW_TRACKING_URI`` everywhere, so these run the console script with it removed
from the environment and the current folder elsewhere.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from reltrain_support import BIN, ROOT


def _env(home) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "MG_HOME": str(home), "PYTHONPATH": str(ROOT)}


SEED = """
import socket, sys
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
from mg_mlflow.tracking.run import ensure_experiment
client = mlflow.tracking.MlflowClient()
exp = ensure_experiment("model-garden")
dead = client.create_run(exp, tags={"mg.pid": "999999999", "mg.pid_start": "1", "mg.host": socket.gethostname()})
done = []
for loss in (1.0, 0.5):
    run = client.create_run(exp, tags={"mg.run_kind": "training"})
    client.log_metric(run.info.run_id, "loss_final", loss)
    client.set_terminated(run.info.run_id, "FINISHED")
    done.append(run.info.run_id)
print(dead.info.run_id, *done)
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh MG_HOME with one dead RUNNING run and two finished runs in its own store."""
    home = tmp_path_factory.mktemp("store-home")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    out = subprocess.run([sys.executable, "-c", SEED, uri], capture_output=True, text=True, env=_env(home),
                         cwd=home, check=True).stdout.split()
    return home, uri, out[0], out[1:]


def _cli(args, home, cwd):
    return subprocess.run([str(BIN / "model-garden"), *args], capture_output=True, text=True, env=_env(home),
                          cwd=cwd, timeout=300)


def _status(uri, run_id):
    import mlflow

    return mlflow.tracking.MlflowClient(uri).get_run(run_id).info.status


@pytest.mark.parametrize("args", [
    ["runs", "list"],
    ["runs", "show", "{dead}"],
    ["runs", "repair", "--dry-run"],
    ["compare", "{a}", "{b}", "--format", "json"],
    ["carbon", "report", "--no-chart"],
    ["ui", "--links-only", "--compare", "{a}", "--compare", "{b}"],
], ids=lambda a: " ".join(a[:2]))
def test_store_commands_use_mg_home_without_tracking_uri(args, store, tmp_path):
    home, uri, dead, (a, b) = store
    proc = _cli([x.format(dead=dead, a=a, b=b) for x in args], home, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name in ("mlflow.db", "mlruns")]
    assert _status(uri, dead) == "RUNNING"  # nothing changed the dead run
    if args[:2] == ["runs", "show"]:
        assert dead in proc.stdout
    if args[:2] in (["runs", "list"], ["runs", "repair"]):
        assert dead[:12] in proc.stdout


def test_runs_repair_ends_the_dead_run_in_mg_home(tmp_path_factory, tmp_path):
    home = tmp_path_factory.mktemp("repair-home")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    dead = subprocess.run([sys.executable, "-c", SEED, uri], capture_output=True, text=True, env=_env(home),
                          cwd=home, check=True).stdout.split()[0]
    proc = _cli(["runs", "repair"], home, tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"marked run {dead} FAILED" in proc.stdout
    assert _status(uri, dead) == "FAILED"
    assert not list(tmp_path.iterdir())  # no mlflow.db / mlruns in the current folder
