"""Deployment security on real processes (the stand-in engine; the same checks against real vLLM, with
401 answers on every route of its route table, are in test_deploy_update.py): loopback by default, the
API key reaches the engine and nothing else, private files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

from conftest import run_cli
from deploy_rel_support import cmdlines, fake_engine_args, listening_addresses, mode, processes_with, wait_for
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
    res = run_cli(["deploy", str(tiny_model), "--name", "exposed", "--host", "0.0.0.0", "--allow-unauthenticated",
                   *fake_engine_args(tmp_path)], env={"MG_API_KEY": ""}, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    record = json.loads((mg_home / "deployments" / "exposed.json").read_text())
    try:
        assert listening_addresses(group_alive(record["pgid"]), record["port"]) == {"0.0.0.0"}
        assert record["api_key_required"] is False
        # the choice is recorded on the deployment and said loudly
        assert record["options"]["allow_unauthenticated"] is True
        assert any("WITHOUT an API key" in note for note in record["notes"])
        assert "WITHOUT an API key" in res.stdout
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


def test_a_network_bind_without_a_key_is_refused(tiny_model, mg_home, tmp_path):
    """`--host 0.0.0.0` and no key: exit 2 before anything starts, unless --allow-unauthenticated."""
    try:
        res = run_cli(["deploy", str(tiny_model), "--name", "open", "--host", "0.0.0.0", *fake_engine_args(tmp_path)],
                      env={"MG_API_KEY": ""}, timeout=120)
    finally:
        stop_everything()  # (a server started by mistake is not left running)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "--host 0.0.0.0" in res.stderr and "without an API key" in res.stderr and "--allow-unauthenticated" in res.stderr
    assert "Traceback" not in res.stderr
    assert list(tmp_path.glob("*.started")) == []  # nothing was launched
    assert not (mg_home / "deployments" / "open.json").exists()


def test_the_serving_monitor_scrapes_a_protected_metrics_endpoint(tmp_path):
    """/metrics needs the key too: the carbon monitor reads it from the served process's environment
    (never a command line) and scrapes with it; without it the endpoint answers 401 and counts as down."""
    import http.server
    import threading

    from mg_mlflow.tracking.serving_monitor import scrape, served_key

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.headers.get("Authorization") == f"Bearer {KEY}"
            body = b"vllm:request_success_total 3\n" if ok else b"{}"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    served = subprocess.Popen(["sleep", "60"], env={**os.environ, "VLLM_API_KEY": KEY})
    try:
        # Popen returns once the child is in execve, before the kernel has laid out its new environment
        # (/proc/PID/environ reads empty until then): wait for the started process, as a deployment's is.
        wait_for(lambda: psutil.Process(served.pid).environ(), 30, "the served process's environment")
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        assert served_key(served.pid) == KEY
        assert scrape(url, api_key=served_key(served.pid)) == {"vllm:request_success_total": 3.0}
        assert scrape(url) is None
        assert KEY.encode() not in b"".join(cmdlines([served.pid]))
    finally:
        served.kill()
        served.wait()
        server.shutdown()
