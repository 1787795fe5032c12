"""Deployment faults on real processes (a stand-in engine, so each case costs ~1 s, not a vLLM start):
two deploys racing for one port, an engine killed with SIGKILL, a guard killed too, an engine that
crashes at start. The same faults on real vLLM: test_deploy_update.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, invoke_cli, run_cli
from deploy_rel_support import fake_engine_args, processes_with, wait_for
from deploy_support import free_port, group_alive, stop_everything


@pytest.fixture(autouse=True)
def _stop_deployments(mg_home):
    """Every test ends with no deployment left in its MG_HOME (mg_home: still set while this stops
    them), whether it passed, failed or failed to deploy."""
    yield
    stop_everything()


def _folder() -> Path:
    return Path(os.environ["MG_HOME"]) / "deployments"


def _deploy(tiny_model, name, markers, *extra):
    res = run_cli(["deploy", str(tiny_model), "--name", name, *fake_engine_args(markers), *extra], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads((_folder() / f"{name}.json").read_text())


def test_two_deploys_for_one_port_one_wins_the_other_launches_nothing(tiny_model, mg_home, tmp_path):
    """Two real `model-garden deploy` processes started together ask for the same port; the engine
    binds only after 3 s (like vLLM after its imports), so a bind check alone would let both launch."""
    markers = tmp_path / "markers"
    markers.mkdir()
    port = free_port()
    cmd = [str(BIN / "model-garden"), "deploy", str(tiny_model), "--port", str(port),
           *fake_engine_args(markers, bind_delay=3.0)]
    procs = [subprocess.Popen([*cmd, "--name", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ)) for name in ("first", "second")]
    outs = [p.communicate(timeout=180) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], outs
    winner, loser = ("first", "second") if codes[0] == 0 else ("second", "first")
    err = outs[codes.index(2)][1]
    assert f"port {port} is already in use" in err and "Traceback" not in err, err
    assert len(list(markers.glob("*.started"))) == 1  # the loser launched nothing
    assert json.loads((_folder() / f"{winner}.json").read_text())["port"] == port
    assert not (_folder() / f"{loser}.json").exists() and not (_folder() / f"{loser}.log").exists()


def test_two_deploys_of_one_name_one_wins(tiny_model, mg_home, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    cmd = [str(BIN / "model-garden"), "deploy", str(tiny_model), "--name", "same",
           *fake_engine_args(markers, bind_delay=3.0)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
             for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], outs
    err = " ".join(outs[codes.index(2)][1].split())
    # while the winner starts: "being started"; once it is up: "already running"
    assert "deployment 'same' is being started" in err or "deployment 'same' is already running" in err, err
    assert len(list(markers.glob("*.started"))) == 1
    assert len(list(_folder().glob("*.json"))) == 1


def test_sigkilled_engine_shows_dead_and_leaves_no_child(tiny_model, mg_home, tmp_path):
    record = _deploy(tiny_model, "crashy", tmp_path)
    pgid = record["pgid"]
    members = group_alive(pgid)
    assert record["pid"] in members and record["guard_pid"] in members and len(members) == 3  # + engine child
    os.kill(record["pid"], signal.SIGKILL)
    wait_for(lambda: group_alive(pgid) == [], 30, "the guard to end the orphaned engine child")
    rows = {r["name"]: r for r in json.loads(invoke_cli(["deployments", "list", "--json"]).stdout)}
    assert rows["crashy"]["status"] == "dead"
    assert f"# guard: vLLM pid {record['pid']} exited" in Path(record["log_file"]).read_text()
    res = run_cli(["deployments", "stop", "crashy"])
    assert res.returncode == 0 and not (_folder() / "crashy.json").exists()


def test_stop_after_a_crash_ends_the_orphans(tiny_model, mg_home, tmp_path):
    """Guard and engine both SIGKILLed (nothing left to clean up by itself): `stop` ends the orphan."""
    record = _deploy(tiny_model, "orphans", tmp_path)
    pgid = record["pgid"]
    os.kill(record["guard_pid"], signal.SIGKILL)
    os.kill(record["pid"], signal.SIGKILL)
    wait_for(lambda: record["pid"] not in group_alive(pgid), 10, "the engine to die")
    orphans = group_alive(pgid)
    assert len(orphans) == 1 and orphans[0] not in (record["pid"], record["guard_pid"])
    res = run_cli(["deployments", "stop", "orphans"])
    assert res.returncode == 0, res.stderr
    assert group_alive(pgid) == [] and not (_folder() / "orphans.json").exists()


def test_engine_crashing_at_start_leaves_nothing(tiny_model, mg_home, tmp_path):
    marker = f"mg-crash-{os.getpid()}"
    res = run_cli(["deploy", str(tiny_model), "--name", "crash-at-start", "--engine", "vllm-cpu", "--no-carbon",
                   "--skip-memory-check", "--engine-cmd",
                   f"python -c 'import sys, time; print(\"{marker}: CUDA out of memory\"); sys.exit(3)'"], timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "vLLM exited with code 3" in res.stderr and "too little memory" in res.stderr
    assert not (_folder() / "crash-at-start.json").exists()
    assert processes_with(marker) == []


KEY = "sk-faults-77aa88bb99cc"


def _env_key(pid: int) -> str | None:
    import psutil

    return psutil.Process(pid).environ().get("VLLM_API_KEY")


def test_cli_update_moves_beside_and_keeps_options_and_key(tiny_model, mg_home, tmp_path):
    res = run_cli(["deploy", str(tiny_model), "--name", "upd", "--max-model-len", "512", *fake_engine_args(tmp_path)],
                  env={"MG_API_KEY": KEY}, timeout=120)
    assert res.returncode == 0, res.stderr
    old = json.loads((_folder() / "upd.json").read_text())
    res = run_cli(["deployments", "update", "upd", "--max-model-len", "256"], env={"MG_API_KEY": ""}, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    new = json.loads((_folder() / "upd.json").read_text())
    assert new["port"] != old["port"] and f"port {old['port']} -> {new['port']}" in res.stdout
    assert new["options"]["max_model_len"] == 256 and "--max-model-len 256" in new["command"]
    assert {k: v for k, v in new["options"].items() if k not in ("max_model_len", "port")} == \
           {k: v for k, v in old["options"].items() if k not in ("max_model_len", "port")}
    assert _env_key(new["pid"]) == KEY and new["api_key_required"]  # read back from the old server
    assert group_alive(old["pgid"]) == [] and len(list(tmp_path.glob("*.started"))) == 2
    assert (_folder() / "upd.prev.log").is_file() and not (_folder() / "upd.next.log").exists()


def test_update_never_drops_the_key_of_a_protected_deployment(tiny_model, mg_home, tmp_path):
    """The server died, so its key cannot be read back: the update refuses until the key is given."""
    res = run_cli(["deploy", str(tiny_model), "--name", "locked", *fake_engine_args(tmp_path)],
                  env={"MG_API_KEY": KEY}, timeout=120)
    assert res.returncode == 0, res.stderr
    old = json.loads((_folder() / "locked.json").read_text())
    os.kill(old["pid"], signal.SIGKILL)
    wait_for(lambda: group_alive(old["pgid"]) == [], 30, "the crashed deployment to be cleaned up")
    res = run_cli(["deployments", "update", "locked"], env={"MG_API_KEY": ""}, timeout=120)
    assert res.returncode == 2 and "requires an API key" in res.stderr, res.stdout + res.stderr
    assert len(list(tmp_path.glob("*.started"))) == 1  # nothing launched
    res = run_cli(["deployments", "update", "locked"], env={"MG_API_KEY": KEY}, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    new = json.loads((_folder() / "locked.json").read_text())
    assert new["port"] == old["port"] and _env_key(new["pid"]) == KEY  # a dead one restarts in place


def test_generate_reports_a_stopped_server_after_its_timeout(tiny_model, tmp_path):
    """A server stopped with SIGSTOP still accepts connections and never answers: `generate --timeout 3`
    says so after about 3 s (exit 2), not after the client's default 300 s."""
    import time

    res = run_cli(["deploy", str(tiny_model), "--name", "frozen", *fake_engine_args(tmp_path)], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    record = json.loads((_folder() / "frozen.json").read_text())
    os.kill(record["pid"], signal.SIGSTOP)
    try:
        started = time.monotonic()
        proc = invoke_cli(["generate", "frozen", "--prompt", "hi", "--timeout", "3"])
        took = time.monotonic() - started
    finally:
        os.kill(record["pid"], signal.SIGCONT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    said = " ".join(proc.stderr.split())
    assert f"deployment 'frozen' did not answer within 3.0 s (port {record['port']})" in said, said
    assert "raise --timeout" in said and "Traceback" not in proc.stderr
    assert took < 60
    bad = invoke_cli(["generate", "frozen", "--prompt", "hi", "--timeout", "0"])
    assert bad.returncode == 2 and "--timeout" in bad.stderr
