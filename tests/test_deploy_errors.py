"""Deployment errors before vLLM starts, and process supervision on real (non-vLLM) processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import invoke_cli, run_cli
from deploy_support import free_port, group_alive


def _no_state(name: str) -> None:
    folder = Path(os.environ["MG_HOME"]) / "deployments"
    assert not (folder / f"{name}.json").exists() and not (folder / f"{name}.log").exists()


def _fails(args, name, *needles):
    res = run_cli(["deploy", *args, "--name", name, "--no-carbon"], timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    text = " ".join((res.stderr + res.stdout).split())
    assert "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text
    _no_state(name)
    return text


def test_bad_uri(session_home):
    _fails(["no/such/thing"], "bad1", "not a folder and not a model URI", "hint:")
    _fails(["s3://bucket/x"], "bad2", "unsupported model URI")


def test_unknown_name_and_alias(trained_lora):
    _fails(["models:/nope@prod"], "bad3", "no registered model named 'nope'", "tiny-lora")
    _fails(["models:/tiny-lora@nope"], "bad4", "has no alias @nope", "@prod")
    _fails(["models:/tiny-lora/999"], "bad5", "has no version 999")


def test_busy_port(trained_lora):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        _fails(["models:/tiny-lora@prod", "--port", str(port)], "busy", f"port {port}", "already in use")


def test_missing_vllm(trained_lora, tmp_path):
    venv = tmp_path / "novllm"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    _fails(["models:/tiny-lora@prod", "--vllm-python", str(venv / "bin" / "python")], "novllm",
           "vLLM is not installed", "serve-cpu")


def test_dry_run_plans_adapter(trained_lora):
    res = invoke_cli(["deploy", "models:/tiny-lora@prod", "--dry-run", "--port", str(free_port()),
                      "--max-num-seqs", "4"])
    assert res.returncode == 0, res.stderr
    cmd = res.stdout.strip().splitlines()[-1]
    assert "vllm.entrypoints.openai.api_server" in cmd and "--enable-lora" in cmd
    assert "--lora-modules tiny-lora=" in cmd and cmd.endswith("--max-num-seqs 4")
    _no_state("tiny-lora")


def _spawn_group() -> subprocess.Popen:
    """A leader that starts a child in its own process group (like vLLM's engine processes)."""
    code = "import subprocess, time; subprocess.Popen(['sleep', '120']); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 120  # generous: the 2 cores are shared
    while len(group_alive(proc.pid)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    return proc


def test_dead_stale_and_stop_group(mg_home):
    from mg_mlflow.deploy import state
    from mg_mlflow.deploy.manager import list_all, stop
    from mg_mlflow.deploy.state import Deployment
    from mg_mlflow.proc import process_start_time, stop_group

    proc = _spawn_group()
    try:
        assert len(group_alive(proc.pid)) == 2
        base = {"host": "127.0.0.1", "port": free_port(), "pgid": proc.pid, "log_file": str(mg_home / "x.log")}
        state.write_record(Deployment(**base, name="live", pid=proc.pid, pid_start_time=process_start_time(proc.pid)))
        state.write_record(Deployment(**base, name="reused", pid=proc.pid, pid_start_time="1"))
        statuses = {r.name: r.status for r in list_all()}
        assert statuses == {"live": "starting", "reused": "stale"}  # alive, no /health answering
        stop("reused")  # a stale record never signals the process that now has the pid
        assert len(group_alive(proc.pid)) == 2 and not state.read_record("reused")

        os.kill(proc.pid, signal.SIGKILL)  # the leader dies, its child is orphaned in the group
        proc.wait()
        assert [r.status for r in list_all()] == ["dead"]
        assert len(group_alive(proc.pid)) == 1
        stop("live")  # ends the orphan too
        assert group_alive(proc.pid) == [] and state.all_records() == []
    finally:
        stop_group(proc.pid, grace=2)


def test_start_time_matches_records_written_from_proc(mg_home):
    """Records of servers started before psutil replaced the /proc reader hold /proc/PID/stat's start
    ticks (field 22); psutil's reading must give the same string, or upgrading would mark every running
    deployment stale."""
    from mg_mlflow.deploy import state
    from mg_mlflow.proc import pid_alive, process_start_time, stop_group

    proc = _spawn_group()
    try:
        raw = Path(f"/proc/{proc.pid}/stat").read_text()
        ticks = raw[raw.rfind(")") + 2:].split()[19]
        assert process_start_time(proc.pid) == ticks
        old = {"name": "old", "host": "127.0.0.1", "port": free_port(), "pgid": proc.pid, "pid": proc.pid,
               "pid_start_time": ticks, "models": [], "uris": [], "log_file": str(mg_home / "x.log")}
        state.record_path("old").write_text(json.dumps(old))  # as an earlier version wrote it
        assert state.status_of(state.read_record("old"), probe=False) == "running"
    finally:
        stop_group(proc.pid, grace=2)
    proc.wait(timeout=10)  # reaped: the pid no longer names a process
    assert process_start_time(proc.pid) is None and not pid_alive(proc.pid)


def test_stop_unknown(mg_home):
    res = invoke_cli(["deployments", "stop", "ghost"])
    assert res.returncode == 2 and "no deployment named 'ghost'" in res.stderr


@pytest.mark.parametrize("name", ["../x", "a b", ""])
def test_bad_deployment_name(mg_home, name):
    from mg_mlflow.deploy.state import check_name
    from mg_mlflow.errors import MGError

    with pytest.raises(MGError, match="invalid deployment name"):
        check_name(name)
