"""Build and register the models the GPU serving checks deploy (offline, random init).

    MG_HOME=/tmp/mg python3 bench/gpu/serve_models.py --work /tmp/mgmodels [--shape 1b|tiny]

Registers, each with alias ``champion``, in the MLflow store of ``$MG_HOME``:

| name                 | what                                                                      |
|----------------------|---------------------------------------------------------------------------|
| gpu-llama            | base: Llama architecture (1b shape: hidden 2048, 16 layers, GQA 32/8), bf16 |
| gpu-lora-a / -b      | LoRA r=16 on all 7 projections, random non-zero B (so they change outputs) |
| gpu-merged           | gpu-llama with gpu-lora-a merged in (bf16)                                |
| gpu-fp8              | gpu-merged as an FP8 compressed-tensors checkpoint (FP8_DYNAMIC scheme)   |
| gpu-int4             | gpu-merged as INT4 compressed-tensors (W4A16 scheme, pack-quantized)      |
| gpu-bnb-leftover     | gpu-merged whose config.json still declares bitsandbytes 4-bit            |
| gpu-vl               | tiny Qwen2.5-VL (mg_mlflow.dev.tiny_vision)                               |

The FP8 checkpoint is written with compressed-tensors' own config classes (what llm-compressor's
``FP8_DYNAMIC`` preset produces: FP8 E4M3 weights with one scale per output channel, activations
quantized per token at run time), so no hub and no calibration data are needed. The INT4 checkpoint
is the ``W4A16`` preset (symmetric int4 weights, one scale per group of 128 inputs, 16-bit activations)
with min-max scales (what llm-compressor's preset does without GPTQ), packed by compressed-tensors'
own ``PackedQuantizationCompressor``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHAPES = {"1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=64),
          "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4, head_dim=32)}
FP8_MAX = 448.0  # largest finite float8_e4m3fn


def build_base(out: Path, shape: str, device: str) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from mg_mlflow.dev.tiny import build_tokenizer

    tok = build_tokenizer(1024)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=8192, rope_theta=500000.0,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False, **SHAPES[shape])
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_adapter(base: Path, out: Path, seed: int, base_ref: dict, device: str) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mg_mlflow.registry.metadata import write_metadata

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).to(device)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=list(PROJ),
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = base_ref["uri"]  # portable: no local path in the artifact
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    write_metadata(out, {"kind": "adapter", "modality": "text", "base_model": base_ref, "dtype": "bfloat16",
                         "method": "lora", "note": "random-init adapter for GPU serving checks"})
    return out


def merge(base: Path, adapter: Path, out: Path, device: str) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mg_mlflow.registry.metadata import write_metadata

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).to(device)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    write_metadata(out, {"kind": "merged", "modality": "text", "dtype": "bfloat16", "merged_from": "gpu-lora-a"})
    return out


def quantization_config(scheme, fmt: str) -> dict:
    """compressed-tensors' ``scheme`` on every Linear but lm_head, stored as ``fmt``, as config.json holds it."""
    from compressed_tensors.quantization import QuantizationConfig

    qc = QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"], format=fmt,
                            quantization_status="compressed")
    return json.loads(qc.model_dump_json())


def _fp8_tensors(w) -> dict:
    """FP8 E4M3 weight + one scale per output channel (the FP8_DYNAMIC preset's weights)."""
    import torch

    scale = (w.float().abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
    return {"weight": (w.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn),
            "weight_scale": scale.to(w.dtype)}


def _packed_int_tensors(w, scheme) -> dict:
    """``w`` quantized per group by ``scheme`` (symmetric min-max, compressed-tensors' own qparams) and
    packed by its pack-quantized compressor: int32 ``weight_packed``, ``weight_scale``, ``weight_shape``."""
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.quantization.utils import calculate_qparams

    size = scheme.weights.group_size
    if w.shape[1] % size:
        raise ValueError(f"input size {w.shape[1]} is not a multiple of the group size {size}")
    groups = w.float().unflatten(1, (-1, size))
    scale, zero_point = calculate_qparams(groups.amin(-1), groups.amax(-1), scheme.weights)
    return PackedQuantizationCompressor.compress(
        {"weight": w, "weight_scale": scale.to(w.dtype), "weight_zero_point": zero_point}, scheme)


def _write_quantized(src: Path, out: Path, quantize, qconfig: dict) -> Path:
    """``src`` (16-bit safetensors) copied to ``out`` with each decoder projection's ``X.weight`` replaced by
    ``X.<name>`` for every ``name: tensor`` of ``quantize(weight)``, and ``qconfig`` as quantization_config."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name not in ("model.safetensors.index.json",):
            shutil.copy2(f, out / f.name)
    index = {}
    for shard in sorted(src.glob("*.safetensors")):
        q = {}
        for name, w in load_file(shard).items():
            if name.endswith(".weight") and name.split(".")[-2] in PROJ:
                q.update({name[: -len("weight")] + k: v.contiguous() for k, v in quantize(w).items()})
            else:
                q[name] = w
        save_file(q, str(out / shard.name), metadata={"format": "pt"})
        index.update({k: shard.name for k in q})
    if (src / "model.safetensors.index.json").is_file():
        meta = json.loads((src / "model.safetensors.index.json").read_text())
        meta["weight_map"] = index
        (out / "model.safetensors.index.json").write_text(json.dumps(meta, indent=2))
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"] = qconfig
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def write_fp8(src: Path, out: Path) -> Path:
    """``src`` (16-bit safetensors) with every decoder projection as FP8 E4M3 + per-channel scale."""
    from compressed_tensors.quantization import preset_name_to_scheme

    return _write_quantized(src, out, _fp8_tensors,
                            quantization_config(preset_name_to_scheme("FP8_DYNAMIC", ["Linear"]), "float-quantized"))


def write_w4a16(src: Path, out: Path) -> Path:
    """``src`` (16-bit safetensors) with every decoder projection as symmetric INT4, one scale per group of
    128 inputs (the W4A16 preset), packed eight to an int32 (compressed-tensors' pack-quantized format)."""
    from functools import partial

    from compressed_tensors.quantization import preset_name_to_scheme

    scheme = preset_name_to_scheme("W4A16", ["Linear"])
    return _write_quantized(src, out, partial(_packed_int_tensors, scheme=scheme),
                            quantization_config(scheme, "pack-quantized"))


def write_bnb_leftover(src: Path, out: Path) -> Path:
    """``src`` unchanged (16-bit weights) but config.json declaring bitsandbytes 4-bit (Unsloth leftover)."""
    shutil.copytree(src, out, dirs_exist_ok=True)
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
                                  "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16",
                                  "bnb_4bit_use_double_quant": True}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def register_folder(folder: Path, name: str, kind: str, vision: bool = False) -> str:
    """Log ``folder`` as Model Garden's pyfunc model and register it (alias champion)."""
    import mlflow

    from mg_mlflow.registry.publish import log_text_model, log_vision_model, register
    from mg_mlflow.tracking.run import ensure_experiment, use_tracking_uri

    use_tracking_uri()
    with mlflow.start_run(experiment_id=ensure_experiment("gpu-serving-models"), run_name=name):
        info = (log_vision_model if vision else log_text_model)(folder)
    mv = register(info.model_uri, name, {"mg.kind": kind, "mg.modality": "vision" if vision else "text"},
                  alias="champion")
    return f"models:/{name}/{mv.version}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    from mg_mlflow.env import setup_env

    setup_env()
    w = args.work
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)
    times, uris = {}, {}
    t = time.time()
    build_base(w / "base", args.shape, args.device)
    uris["gpu-llama"] = register_folder(w / "base", "gpu-llama", "merged")
    ref = {"kind": "registry", "uri": uris["gpu-llama"]}
    times["base"] = time.time() - t
    for name, seed in (("gpu-lora-a", 1), ("gpu-lora-b", 2)):
        build_adapter(w / "base", w / name, seed, ref, args.device)
        uris[name] = register_folder(w / name, name, "adapter")
    merge(w / "base", w / "gpu-lora-a", w / "merged", args.device)
    uris["gpu-merged"] = register_folder(w / "merged", "gpu-merged", "merged")
    write_fp8(w / "merged", w / "fp8")
    uris["gpu-fp8"] = register_folder(w / "fp8", "gpu-fp8", "merged")
    write_w4a16(w / "merged", w / "int4")
    uris["gpu-int4"] = register_folder(w / "int4", "gpu-int4", "merged")
    write_bnb_leftover(w / "merged", w / "bnb-leftover")
    uris["gpu-bnb-leftover"] = register_folder(w / "bnb-leftover", "gpu-bnb-leftover", "merged")
    from mg_mlflow.dev.tiny_vision import build_tiny_qwen2_5_vl

    build_tiny_qwen2_5_vl(w / "vl")
    uris["gpu-vl"] = register_folder(w / "vl", "gpu-vl", "merged", vision=True)
    times["total"] = time.time() - t
    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in w.iterdir()}
    print(json.dumps({"uris": uris, "seconds": times, "bytes": sizes}, indent=1))


if __name__ == "__main__":
    main()
