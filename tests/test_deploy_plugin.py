"""`mlflow deployments ... -t vllm` end to end on the merged model (one real vLLM server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from deploy_support import chat_prompt, free_port, group_alive, hf_greedy, stop_everything

MLFLOW = str(Path(sys.executable).parent / "mlflow")
NAME = "merged-chat"


def _mlflow(*args, timeout=400):
    return subprocess.run([MLFLOW, "deployments", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))


def test_config_errors_have_codes(session_home):
    from mlflow.deployments import get_deploy_client

    client = get_deploy_client("vllm")
    with pytest.raises(MlflowException) as err:
        client.create_deployment("x", "models:/tiny-merged@prod", config={"prot": "8001"})
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and "prot" in err.value.message
    with pytest.raises(MlflowException) as err:
        client.get_deployment("ghost")
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert client.delete_deployment("ghost") is None  # idempotent
    assert "-C key=value" in _mlflow("help", "-t", "vllm").stdout


@pytest.fixture(scope="module")
def merged_deployment(trained_merged):
    try:
        res = _mlflow("create", "-t", "vllm", "--name", NAME, "-m", "models:/tiny-merged@prod",
                      "-C", f"port={free_port()}", "-C", "max_model_len=512", "-C", "carbon=false",
                      "-C", "health_timeout=300")
        assert res.returncode == 0, res.stdout + res.stderr
        yield res
    finally:
        stop_everything()


@pytest.mark.vllm
def test_create_list_get_predict(merged_deployment, tmp_path):
    from mlflow.deployments import get_deploy_client

    from mg_mlflow.registry.resolve import resolve_model_uri

    res = _mlflow("list", "-t", "vllm")
    assert res.returncode == 0 and NAME in res.stdout
    client = get_deploy_client("vllm")
    info = client.get_deployment(NAME)
    assert info["status"] == "running" and info["models"][0]["kind"] == "merged"
    assert info["models"][0]["served_name"] == "tiny-merged" and info["models"][0]["version"] == "1"

    folder = resolve_model_uri("models:/tiny-merged@prod").local_dir
    prompt = chat_prompt(folder, "Reverse the word.\ngreen")
    request = tmp_path / "in.json"
    request.write_text(json.dumps({"prompt": [prompt], "max_tokens": [12], "temperature": [0]}))
    res = _mlflow("predict", "-t", "vllm", "--name", NAME, "-I", str(request))
    assert res.returncode == 0, res.stderr
    predictions = json.loads(res.stdout)["predictions"]
    assert predictions[0]["text"] == hf_greedy(folder, prompt)
    chat = client.predict(NAME, {"messages": [{"role": "user", "content": "Reverse the word.\ngreen"}],
                                 "max_tokens": 12, "temperature": 0})
    assert chat["predictions"][0]["text"] == predictions[0]["text"]


@pytest.mark.vllm
def test_bad_update_keeps_the_deployment(merged_deployment):
    from mlflow.deployments import get_deploy_client

    client = get_deploy_client("vllm")
    with pytest.raises(MlflowException) as err:
        client.update_deployment(NAME, model_uri="models:/no-such-model/1")
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert client.get_deployment(NAME)["status"] == "running"


@pytest.mark.vllm
def test_killed_server_shows_dead_then_delete_cleans_up(merged_deployment):
    from mlflow.deployments import get_deploy_client

    client = get_deploy_client("vllm")
    info = client.get_deployment(NAME)
    os.kill(info["pid"], signal.SIGKILL)
    import time

    deadline = time.time() + 10
    while time.time() < deadline and client.get_deployment(NAME)["status"] != "dead":
        time.sleep(0.2)
    statuses = {d["name"]: d["status"] for d in client.list_deployments()}
    assert statuses[NAME] == "dead"
    res = _mlflow("delete", "-t", "vllm", "--name", NAME)
    assert res.returncode == 0, res.stderr
    assert group_alive(info["pid"]) == []  # orphaned engine processes are gone too
    assert NAME not in {d["name"] for d in client.list_deployments()}
