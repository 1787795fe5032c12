"""Helpers of the training/tracking reliability tests: a training subprocess, an MLflow client,
waiting for metrics, and a real ``mlflow server`` that can be stopped and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from procs import free_port, stop_process

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def run_cli(args: list[str], env: dict | None = None, cwd: Path | None = None, timeout: int = 600):
    """The real ``model-garden`` console script (as tests/conftest.py's, importable from here even
    when another conftest.py shadows the ``conftest`` module name); ``env`` None values unset."""
    full = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    return subprocess.run([str(BIN / "model-garden"), *args], capture_output=True, text=True, env=full,
                          cwd=cwd, timeout=timeout)


def client(uri: str | None = None):
    import mlflow

    return mlflow.tracking.MlflowClient(uri or os.environ["MLFLOW_TRACKING_URI"])


def runs(uri: str | None = None, experiment: str = "model-garden"):
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id]) if exp else []


def start_training(args: list[str], cwd: Path, env: dict | None = None, log: Path | None = None):
    """``model-garden train ARGS`` as a child process (its own process group), output to ``log``;
    ``env`` values of None remove the variable."""
    out = open(log or cwd / "train.log", "w")
    full = {**os.environ, **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}
    return subprocess.Popen([str(BIN / "model-garden"), "train", *args], cwd=cwd, env=full, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30) -> None:
    """A training or server started in its own session: ``sig`` to its group, SIGKILL after ``timeout``."""
    stop_process(proc, sig, timeout, group=True)


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1:PORT over a sqlite store and an artifact folder."""

    def __init__(self, root: Path, port: int | None = None, extra_env: dict | None = None):
        self.root, self.port = root, port or free_port()
        self.proc: subprocess.Popen | None = None
        self.extra_env = extra_env or {}
        root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> "MlflowServer":
        import urllib.request

        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
               "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"]
        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **self.extra_env})

        def healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_for(healthy, timeout, "the mlflow server")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGTERM)
            self.proc = None
