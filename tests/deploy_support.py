"""Shared pieces of the deployment tests: safetensors folders, cleanup, process checks, HF greedy."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from procs import free_port  # noqa: F401 - the deploy tests import it from here

BIN = Path(sys.executable).parent


def write_safetensors(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def llama_config(**extra) -> dict:
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
           "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 32,
           "max_position_embeddings": 4096, "torch_dtype": "bfloat16"}
    cfg.update(extra)
    return cfg


def make_folder(root: Path, config: dict, tensors: dict, files: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    write_safetensors(root / "model.safetensors", tensors)
    for name, content in (files or {}).items():
        (root / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return root


def group_alive(pgid: int) -> list[int]:
    from mg_mlflow.proc import group_members

    return group_members(pgid)


# The session's shared servers (tests/conftest.py: merged_server): each stops after the last test that uses it.
MERGED_SERVER = "merged-chat"
SHARED_SERVERS = (MERGED_SERVER,)


def stop_everything(shared: bool = False) -> None:
    """Stop every recorded deployment of the current MG_HOME (test teardown safety net), but for the
    session's shared servers unless ``shared``."""
    from mg_mlflow.deploy import state

    if not os.environ.get("MG_HOME"):
        return
    for record in state.all_records():
        if shared or record.name not in SHARED_SERVERS:
            stop_deployment(record.name)


def stop_deployment(name: str) -> None:
    """Stop the deployment ``name`` of the current MG_HOME, if there is one, and remove its record."""
    from mg_mlflow.deploy import state
    from mg_mlflow.deploy.supervisor import stop_record

    record = state.read_record(name)
    if record is None:
        return
    try:
        stop_record(record, grace=10.0)
    finally:
        state.remove_record(record.name)


def chat_prompt(folder: Path, text: str) -> str:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def hf_greedy(folder: Path, prompt: str, max_new_tokens: int = 12) -> str:
    """Greedy continuation with transformers (+ peft for adapters), the reference for vLLM."""
    import torch

    from mg_mlflow.registry.loader import load_model_dir

    model, tok = load_model_dir(folder, dtype="float32")
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
