"""A vision model trained from multimodal messages, deployed from its registry URIs on a real vLLM
(vllm-cpu), answers image questions through the OpenAI client exactly as the registered model does
locally; and what deploy does about torchvision, which vLLM's image processors import.

One server for the module: the merged model is the base, the adapter (trained on top of it) is served
beside it. This environment keeps PyPI's torchvision out of the virtual environment (its C++ operators
do not load beside the CPU torch) and aside in ``.venv/serve-torchvision`` (``.ci/setup``); the
deployment gets it on ``PYTHONPATH``, and deploy's start-up hook makes its Python transforms import.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys

import pytest

from conftest import BIN, invoke_cli, run_cli
from deploy_support import free_port, stop_everything
from vision_support import shapes, tiny_vl, train_vl, write_jsonl  # noqa: F401 - fixtures

SERVE_TORCHVISION = BIN.parent / "serve-torchvision"
MAX_TOKENS = 8
CASES = [("blue", "square", "What colour is the shape?"), ("red", "circle", "What shape is in the picture?"),
         ("green", "triangle", "Describe the picture."), ("yellow", "circle", "What colour is the shape?")]


def _torchvision_aside() -> str:
    if not (SERVE_TORCHVISION / "torchvision").is_dir():
        pytest.fail(f"{SERVE_TORCHVISION} holds no torchvision: run .ci/setup (it keeps PyPI's torchvision there)")
    return str(SERVE_TORCHVISION)


def _data_url(colour: str, shape: str) -> str:
    from mg_mlflow.data.vision_sample import draw_shape

    buf = io.BytesIO()
    draw_shape(colour, shape, [10, 14, 40, 44]).save(buf, format="PNG")  # not a training image
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def messages_data(shapes, tmp_path_factory):
    """The shapes dataset as multimodal chat messages (an image part and a text part, then the answer)."""
    rows = [json.loads(line) for line in shapes.read_text().splitlines()]
    folder = shapes.parent
    return write_jsonl(folder / "messages.jsonl", [
        {"messages": [{"role": "user", "content": [{"type": "image", "image": r["image"]},
                                                   {"type": "text", "text": r["text"]}]},
                      {"role": "assistant", "content": r["response"]}]} for r in rows])


@pytest.fixture(scope="module")
def served(module_home, tiny_vl, messages_data):
    """models:/vl-served@prod (merged) and two LoRA adapters trained on it, one vLLM server:
    vl-served-lora (the language model's layers) and vl-served-tower (the vision tower's too)."""
    merged = train_vl(tiny_vl, messages_data, max_steps=40, save_method="merged_16bit", register_as="vl-served",
                      alias="prod", sample_images=0)
    adapter = train_vl("models:/vl-served@prod", messages_data, max_steps=30, save_method="lora",
                       register_as="vl-served-lora", alias="prod", sample_images=0, seed=7)
    tower = train_vl("models:/vl-served@prod", messages_data, max_steps=30, save_method="lora",
                     register_as="vl-served-tower", alias="prod", sample_images=0, seed=11,
                     finetune_vision_layers=True, learning_rate=1e-2)
    try:
        res = run_cli(["deploy", "models:/vl-served@prod", "models:/vl-served-lora@prod", "models:/vl-served-tower@prod",
                       "--name", "vl",
                       "--port", str(free_port()), "--max-model-len", "512", "--no-carbon", "--health-timeout", "300"],
                      env={"PYTHONPATH": os.pathsep.join([_torchvision_aside(), os.environ.get("PYTHONPATH", "")])},
                      timeout=400)
        assert res.returncode == 0, res.stdout + res.stderr
        record = json.loads((module_home / "deployments" / "vl.json").read_text())
        yield {"record": record, "stdout": res.stdout, "merged": merged, "adapter": adapter, "tower": tower}
    finally:
        stop_everything()


def _ask(port: int, model: str, content: list, max_tokens: int = MAX_TOKENS) -> tuple[str, int]:
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    out = client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                         max_tokens=max_tokens, temperature=0)
    return out.choices[0].message.content, out.usage.prompt_tokens


@pytest.mark.vllm
@pytest.mark.slow
def test_served_image_answers_equal_the_registered_models_local_answers(served):
    import mlflow

    record = served["record"]
    assert [(m["served_name"], m["kind"]) for m in record["models"]] == [
        ("vl-served", "merged"), ("vl-served-lora", "adapter"), ("vl-served-tower", "adapter")]
    # this environment's torchvision cannot load its C++ operators: the start-up hook made it import
    assert any("torchvision" in n and "Python transforms" in n for n in record["notes"]), record["notes"]
    answers = {}
    for served_name in ("vl-served", "vl-served-lora", "vl-served-tower"):
        local = mlflow.pyfunc.load_model(f"models:/{served_name}@prod")
        for colour, shape, question in CASES:
            url = _data_url(colour, shape)
            got, _ = _ask(record["port"], served_name, [{"type": "image_url", "image_url": {"url": url}},
                                                        {"type": "text", "text": question}])
            want = local.predict({"image": [url], "question": [question]},
                                 params={"max_new_tokens": MAX_TOKENS, "temperature": 0.0})[0]
            assert got.strip() == want, (served_name, colour, shape, question)  # the pyfunc strips its answer
            answers[served_name, colour, shape, question] = got
    # the adapters are applied: each answers differently from the merged model it was trained on
    for adapter in ("vl-served-lora", "vl-served-tower"):
        assert any(answers["vl-served", *c] != answers[adapter, *c] for c in CASES), answers
    assert "--enable-tower-connector-lora" in record["command"]  # vLLM applies the vision tower's LoRA too


@pytest.mark.vllm
@pytest.mark.slow
def test_the_image_reaches_the_model_as_its_image_tokens(served):
    port = served["record"]["port"]
    question = "What colour is the shape?"
    _, with_image = _ask(port, "vl-served", [{"type": "image_url", "image_url": {"url": _data_url("red", "square")}},
                                             {"type": "text", "text": question}])
    _, text_only = _ask(port, "vl-served", [{"type": "text", "text": question}])
    # a 56x56 image is 4x4 patches of 14 px merged 2x2: 4 image tokens, between vision start and end
    assert with_image - text_only == 2 + 4


def test_hook_makes_torchvision_import_when_its_operators_cannot_load():
    from mg_mlflow.deploy.vision import SITE_DIR, probe

    aside = _torchvision_aside()
    code = ("import torch, torchvision.transforms.v2.functional as F;"
            "print(tuple(F.resize(torch.zeros(3, 56, 56), [28, 28], antialias=True).shape))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([aside, os.environ.get("PYTHONPATH", "")])}
    bare = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert bare.returncode != 0 and "torchvision::nms does not exist" in bare.stderr
    hooked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**env, "PYTHONPATH": f"{SITE_DIR}{os.pathsep}{env['PYTHONPATH']}"})
    assert hooked.returncode == 0 and hooked.stdout.strip() == "(3, 28, 28)", hooked.stderr[-2000:]
    report = probe(sys.executable, env)
    assert report["ok"] and report["declared"] == ["nms", "qnms"]


def test_vision_deploy_without_torchvision_is_refused_before_vllm_starts(mg_home, tiny_vl, monkeypatch):
    from mg_mlflow.deploy import state

    monkeypatch.delenv("PYTHONPATH", raising=False)
    res = invoke_cli(["deploy", str(tiny_vl), "--name", "vl-none", "--port", str(free_port()), "--no-carbon",
                      "--engine", "vllm-cpu", "--skip-memory-check"])
    assert res.returncode == 2, res.stdout + res.stderr
    assert "needs torchvision" in res.stderr and "--vllm-python" in res.stderr and "pip install" in res.stderr
    assert state.read_record("vl-none") is None and not state.log_path("vl-none").exists()


@pytest.mark.vllm
@pytest.mark.slow
def test_the_documented_openai_image_example_answers(served, tmp_path, capsys):
    import contextlib

    from conftest import ROOT
    from test_docs import python_blocks

    (example,) = [b for b in python_blocks((ROOT / "docs" / "training.md").read_text()) if "image_url" in b]
    port = served["record"]["port"]
    url = _data_url("blue", "square")
    (tmp_path / "shape.png").write_bytes(base64.b64decode(url.split(",", 1)[1]))
    code = example.replace("http://127.0.0.1:8000/v1", f"http://127.0.0.1:{port}/v1").replace(
        '"tiny-vision"', '"vl-served-lora"')
    with contextlib.chdir(tmp_path):
        exec(compile(code, "docs/training.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    answer, _ = _ask(port, "vl-served-lora", [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "What colour is the shape?"}], max_tokens=16)
    assert printed == answer.strip() and printed


def test_inspection_tells_an_adapter_with_lora_on_the_vision_tower(tmp_path):
    import torch

    from deploy_support import write_safetensors
    from mg_mlflow.inspect import inspect_model

    def adapter(name: str, tensors: list[str]):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "target_modules": "x"}))
        write_safetensors(folder / "adapter_model.safetensors", {t: torch.zeros(8, 4) for t in tensors})
        return inspect_model(folder)

    lang = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
    tower = "base_model.model.model.visual.blocks.0.attn.qkv.lora_A.weight"
    assert not adapter("language", [lang]).lora_vision_tower
    assert adapter("tower", [lang, tower]).lora_vision_tower
