"""inspect_model on small synthetic folders (one per kind) and the vLLM commands planned from them."""

from __future__ import annotations

import json

import pytest
import torch

from deploy_support import llama_config, make_folder, write_safetensors
from mg_mlflow.errors import MGError
from mg_mlflow.inspect import inspect_model

W = torch.zeros(4, 16, dtype=torch.bfloat16)


def _plain(tmp_path, name="merged", **cfg):
    return make_folder(tmp_path / name, llama_config(**cfg), {"model.layers.0.mlp.weight": W})


def test_merged_plain(tmp_path):
    info = inspect_model(_plain(tmp_path))
    assert (info.kind, info.quantization, info.modality) == ("merged", None, "text")
    assert info.num_parameters == 64 and info.weight_bytes == 128
    assert info.max_position_embeddings == 4096 and info.dtype == "bfloat16"


def test_leftover_bnb_config_is_not_quantized(tmp_path):
    folder = _plain(tmp_path, quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    info = inspect_model(folder)
    assert info.quantization is None
    assert any("leftover" in n for n in info.notes)


def test_real_bitsandbytes(tmp_path):
    folder = make_folder(tmp_path / "bnb", llama_config(quantization_config={"quant_method": "bitsandbytes"}), {
        "l.weight": torch.zeros(32, 1, dtype=torch.uint8), "l.weight.absmax": torch.zeros(2),
        "l.weight.quant_map": torch.zeros(16), "l.weight.quant_state.bitsandbytes__nf4": torch.zeros(8, dtype=torch.uint8)})
    assert inspect_model(folder).quantization == "bitsandbytes"


def test_bnb_found_from_tensors_without_config(tmp_path):
    folder = make_folder(tmp_path / "bnb2", llama_config(), {
        "l.weight": torch.zeros(32, 1, dtype=torch.uint8), "l.weight.absmax": torch.zeros(2)})
    assert inspect_model(folder).quantization == "bitsandbytes"


@pytest.mark.parametrize("method,extra,expected", [
    ("awq", {}, "awq"),
    ("gptq", {"l.g_idx": torch.zeros(16, dtype=torch.int32)}, "gptq"),
])
def test_awq_gptq(tmp_path, method, extra, expected):
    tensors = {"l.qweight": torch.zeros(16, 2, dtype=torch.int32), "l.qzeros": torch.zeros(1, 2, dtype=torch.int32),
               "l.scales": torch.zeros(1, 16, dtype=torch.float16), **extra}
    folder = make_folder(tmp_path / method, llama_config(quantization_config={"quant_method": method, "bits": 4}), tensors)
    assert inspect_model(folder).quantization == expected


def test_gptq_side_file(tmp_path):
    tensors = {"l.qweight": torch.zeros(16, 2, dtype=torch.int32), "l.g_idx": torch.zeros(16, dtype=torch.int32)}
    folder = make_folder(tmp_path / "gptq2", llama_config(), tensors, files={"quantize_config.json": {"bits": 4}})
    assert inspect_model(folder).quantization == "gptq"


def test_fp8(tmp_path):
    folder = make_folder(tmp_path / "fp8", llama_config(quantization_config={"quant_method": "fp8"}), {
        "l.weight": torch.zeros(4, 16).to(torch.float8_e4m3fn), "l.weight_scale": torch.ones(1)})
    assert inspect_model(folder).quantization == "fp8"


def test_compressed_tensors(tmp_path):
    folder = make_folder(tmp_path / "ct", llama_config(quantization_config={"quant_method": "compressed-tensors"}), {
        "l.weight_packed": torch.zeros(4, 2, dtype=torch.int32), "l.weight_scale": torch.ones(4, 1)})
    assert inspect_model(folder).quantization == "compressed-tensors"


@pytest.mark.parametrize("cfg", [
    {"model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"]},
    {"model_type": "custom", "vision_config": {"depth": 2}},
    {"model_type": "qwen2_vl"},
])
def test_vision(tmp_path, cfg):
    info = inspect_model(make_folder(tmp_path / "vl", llama_config(**cfg), {"w": W}))
    assert info.modality == "vision" and info.kind == "merged"


def _adapter(tmp_path, base: str, rank=12):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "x"}))
    write_safetensors(folder / "adapter_model.safetensors", {"a.lora_A.weight": torch.zeros(rank, 16)})
    (folder / "mg_model.json").write_text(json.dumps({"kind": "adapter", "modality": "text",
                                                      "base_model": {"kind": "path", "path": base}}))
    return folder


def test_adapter(tmp_path):
    info = inspect_model(_adapter(tmp_path, "/nowhere"))
    assert info.kind == "adapter" and info.lora_rank == 12
    assert info.lora_target_modules == ["q_proj", "v_proj"]
    assert info.base_model == {"kind": "path", "path": "/nowhere"}


def test_broken_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MGError, match="neither config.json"):
        inspect_model(tmp_path / "empty")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text("{}")
    with pytest.raises(MGError, match="without adapter weights"):
        inspect_model(tmp_path / "a")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text("{}")
    with pytest.raises(MGError):
        inspect_model(tmp_path / "c")


# --- planning -------------------------------------------------------------------------------------

def _plan(folders, **opts):
    from mg_mlflow.deploy.manager import resolve_all
    from mg_mlflow.deploy.plan import DeployOptions, plan_deployment

    resolved, infos = resolve_all([str(f) for f in folders])
    return plan_deployment(resolved, infos, DeployOptions(port=8123, engine="vllm-cpu", **opts))


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def test_plan_merged_vision_leftover(tmp_path):
    folder = make_folder(tmp_path / "vl", llama_config(
        model_type="qwen2_5_vl", vision_config={"depth": 2},
        quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True}), {"w": W})
    plan = _plan([folder], extra_args=["--max-model-len", "128", "--no-enforce-eager", "--max-num-seqs=4"])
    argv = plan.argv
    assert json.loads(_flag(argv, "--limit-mm-per-prompt")) == {"image": 4, "video": 0}
    assert json.loads(_flag(argv, "--hf-overrides")) == {"quantization_config": None}
    assert "--quantization" not in argv and "--enforce-eager" not in argv
    assert argv.count("--max-model-len") == 1 and _flag(argv, "--max-model-len") == "128"
    assert argv[-1] == "--max-num-seqs=4" and "--no-enforce-eager" in argv
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] and plan.models[0].kind == "merged"


def test_plan_quantized(tmp_path):
    bnb = make_folder(tmp_path / "bnb", llama_config(quantization_config={"quant_method": "bitsandbytes"}), {
        "l.weight": torch.zeros(32, 1, dtype=torch.uint8), "l.weight.absmax": torch.zeros(2)})
    assert _flag(_plan([bnb]).argv, "--quantization") == "bitsandbytes"
    awq = make_folder(tmp_path / "awq", llama_config(quantization_config={"quant_method": "awq"}), {
        "l.qweight": torch.zeros(16, 2, dtype=torch.int32)})
    assert "--quantization" not in _plan([awq]).argv  # vLLM picks awq / awq_marlin itself
    assert _flag(_plan([awq], quantization="awq_marlin").argv, "--quantization") == "awq_marlin"


def test_plan_adapters_share_base(tmp_path):
    base = _plain(tmp_path, "base")
    a = _adapter(tmp_path, str(base), rank=12)
    b = tmp_path / "adapter-b"
    b.mkdir()
    for f in a.iterdir():
        (b / f.name).write_bytes(f.read_bytes())
    plan = _plan([a, b], served_model_name=["alpha", "beta"])
    argv = plan.argv
    assert _flag(argv, "--model") == str(base) and "--enable-lora" in argv
    assert _flag(argv, "--max-lora-rank") == "16" and _flag(argv, "--max-loras") == "2"
    i = argv.index("--lora-modules")
    assert argv[i + 1:i + 3] == [f"alpha={a}", f"beta={b}"]
    assert plan.default_model == "alpha" and [m.kind for m in plan.models] == ["base", "adapter", "adapter"]

    other = tmp_path / "other"
    other.mkdir()
    for f in a.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "mg_model.json").write_text(json.dumps({"base_model": {"kind": "hub", "id": "org/else"}}))
    with pytest.raises(MGError, match="share one base"):
        _plan([a, other])
    with pytest.raises(MGError, match="one full model"):
        _plan([base, _plain(tmp_path, "second")])


def test_planned_argv_parses_with_vllm(tmp_path):
    """vLLM 0.32's own parser accepts what we plan (the JSON forms included)."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    base = _plain(tmp_path, "base")
    vl = make_folder(tmp_path / "vl", llama_config(model_type="qwen2_5_vl", vision_config={"depth": 2},
                                                   quantization_config={"quant_method": "bitsandbytes"}), {"w": W})
    parser = make_arg_parser(FlexibleArgumentParser())
    lora = _plan([_adapter(tmp_path, str(base))]).argv
    args = parser.parse_args(lora[3:])
    assert args.enable_lora and args.lora_modules[0].name == "adapter" and args.max_lora_rank == 16
    args = parser.parse_args(_plan([vl]).argv[3:])
    assert args.limit_mm_per_prompt == {"image": 4, "video": 0}
    assert args.hf_overrides == {"quantization_config": None} and args.enforce_eager
