"""What a model folder holds, read from its files (not only its config).

``inspect_model(folder)`` tells a LoRA adapter from a merged (full) model, finds real quantization
(AWQ, GPTQ, bitsandbytes, FP8, compressed-tensors) by looking at the tensors themselves, and
recognises vision-language models. A merged model that still carries a leftover bitsandbytes
``quantization_config`` but holds plain 16-bit weights (a known Unsloth leftover) is NOT quantized.

Only JSON files and safetensors headers are read: no torch import, no weights loaded.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mg_mlflow.errors import MGError
from mg_mlflow.registry.metadata import read_metadata

VISION_MODEL_TYPES = {"qwen2_5_vl", "qwen2_vl", "qwen3_vl", "llava", "llava_next", "mllama",
                      "idefics3", "gemma3", "paligemma", "pixtral", "internvl_chat", "smolvlm"}
QUANT_METHODS = {"awq": "awq", "gptq": "gptq", "bitsandbytes": "bitsandbytes", "bnb": "bitsandbytes",
                 "fp8": "fp8", "compressed-tensors": "compressed-tensors",
                 "compressed_tensors": "compressed-tensors"}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
BYTES_PER = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1}


@dataclass
class Inspection:
    path: str
    kind: str                                # "adapter" | "merged"
    modality: str = "text"                   # "text" | "vision"
    quantization: str | None = None          # awq | gptq | bitsandbytes | fp8 | compressed-tensors
    model_type: str | None = None
    architectures: list[str] = field(default_factory=list)
    dtype: str | None = None                 # from config (torch_dtype / dtype)
    max_position_embeddings: int | None = None
    num_attention_heads: int | None = None
    num_parameters: int | None = None        # from safetensors headers
    weight_bytes: int = 0
    lora_rank: int | None = None
    lora_target_modules: list[str] = field(default_factory=list)
    lora_vision_tower: bool = False          # adapter weights on a vision tower / merger (``visual.``)
    base_model: dict | None = None           # portable base reference (adapters)
    has_chat_template: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise MGError(f"{path}: unreadable JSON ({exc})") from None


def safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor table of a .safetensors file (name -> {dtype, shape, data_offsets})."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise MGError(f"{path}: not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", raw)
        if length > 100_000_000:
            raise MGError(f"{path}: not a safetensors file (header size {length})")
        header = json.loads(fh.read(length))
    header.pop("__metadata__", None)
    return header


def _tensor_table(folder: Path) -> dict[str, dict]:
    table: dict[str, dict] = {}
    for path in sorted(folder.glob("*.safetensors")):
        table.update(safetensors_header(path))
    return table


def _count(table: dict[str, dict], pack: int = 1) -> tuple[int, int]:
    """(parameters, bytes on disk). A compressed-tensors ``weight_packed`` int32 holds ``pack`` weights;
    its ``weight_shape`` (the unpacked shape) is bookkeeping, not parameters."""
    params = nbytes = 0
    for name, info in table.items():
        n = 1
        for dim in info.get("shape", []):
            n *= int(dim)
        if name.endswith(".weight_packed"):
            n *= pack
        if not name.endswith(".weight_shape"):
            params += n
        start, end = info.get("data_offsets", [0, 0])
        nbytes += int(end) - int(start)
    return params, nbytes


def _tensor_quantization(table: dict[str, dict]) -> str | None:
    """Quantization visible in the tensors themselves."""
    names = list(table)
    dtypes = {info.get("dtype") for info in table.values()}
    if any(n.endswith(".weight_packed") for n in names):
        return "compressed-tensors"
    if any(n.endswith(".qweight") for n in names):
        if any(n.endswith(".g_idx") for n in names):
            return "gptq"
        return "awq"
    if any(n.endswith((".absmax", ".quant_map", ".SCB")) or ".quant_state." in n for n in names):
        return "bitsandbytes"
    if dtypes & {"F8_E4M3", "F8_E5M2"}:
        return "fp8"
    return None


def _config_quantization(config: dict, folder: Path) -> str | None:
    qc = config.get("quantization_config") or config.get("compression_config")
    if isinstance(qc, dict):
        method = str(qc.get("quant_method") or "").lower()
        if not method and (qc.get("load_in_4bit") or qc.get("load_in_8bit")):
            method = "bitsandbytes"
        return QUANT_METHODS.get(method, method or None)
    if (folder / "quantize_config.json").is_file():  # AutoGPTQ / AutoAWQ side file
        side = _read_json(folder / "quantize_config.json")
        return QUANT_METHODS.get(str(side.get("quant_method", "gptq")).lower(), "gptq")
    return None


def _pack_factor(config: dict) -> int:
    """Weights per int32 in compressed-tensors' pack-quantized tensors: 32 // the config's weight bits
    (1 when the config does not name one bit width)."""
    qc = config.get("quantization_config") or config.get("compression_config") or {}
    groups = qc.get("config_groups") if isinstance(qc, dict) else None
    bits = {(g.get("weights") or {}).get("num_bits") for g in (groups or {}).values() if isinstance(g, dict)}
    return 32 // bits.pop() if len(bits) == 1 and bits <= set(range(1, 9)) else 1


def _is_vision(config: dict) -> bool:
    return bool(config.get("vision_config")) or config.get("model_type") in VISION_MODEL_TYPES or any(
        "ForConditionalGeneration" in a and ("VL" in a or "Vision" in a or "Llava" in a)
        for a in config.get("architectures") or [])


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    return bool(_read_json(folder / "tokenizer_config.json").get("chat_template"))


def _fill_from_config(result: Inspection, config: dict) -> None:
    text_cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    result.model_type = config.get("model_type")
    result.architectures = list(config.get("architectures") or [])
    result.dtype = config.get("torch_dtype") or config.get("dtype") or text_cfg.get("dtype") \
        or text_cfg.get("torch_dtype")
    result.max_position_embeddings = config.get("max_position_embeddings") or text_cfg.get("max_position_embeddings")
    result.num_attention_heads = config.get("num_attention_heads") or text_cfg.get("num_attention_heads")
    if _is_vision(config):
        result.modality = "vision"


def _inspect_adapter(folder: Path, meta: dict) -> Inspection:
    acfg = _read_json(folder / "adapter_config.json")
    weights = list(folder.glob("adapter_model.safetensors")) + list(folder.glob("adapter_model.bin"))
    if not weights:
        raise MGError(f"{folder}: adapter_config.json without adapter weights (adapter_model.safetensors)",
                      hint="the artifact looks incomplete; re-download or re-register it")
    result = Inspection(path=str(folder), kind="adapter", lora_rank=acfg.get("r"),
                        has_chat_template=_has_chat_template(folder))
    targets = acfg.get("target_modules") or []
    result.lora_target_modules = sorted(targets) if isinstance(targets, list) else [str(targets)]
    if acfg.get("peft_type", "LORA").upper() != "LORA":
        raise MGError(f"{folder}: a {acfg.get('peft_type')} adapter; vLLM serves LoRA adapters only",
                      hint="merge it into the base model (train with --save-method merged_16bit)")
    ref = meta.get("base_model")
    if not ref and acfg.get("base_model_name_or_path"):
        base = acfg["base_model_name_or_path"]
        ref = {"kind": "registry", "uri": base} if str(base).startswith("models:/") else \
            {"kind": "hub", "id": base, "revision": acfg.get("revision") or "main"}
        result.notes.append("base model taken from adapter_config.json (no mg_model.json)")
    result.base_model = ref
    if meta.get("modality") == "vision":
        result.modality = "vision"
    if weights[0].suffix == ".safetensors":
        table = safetensors_header(weights[0])
        result.num_parameters, result.weight_bytes = _count(table)
        result.lora_vision_tower = any(".visual." in name or name.startswith("visual.") for name in table)
    return result


def inspect_model(folder: str | Path) -> Inspection:
    """Classify a Hugging Face model folder (adapter / merged, quantization, modality)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MGError(f"{folder}: no such model folder")

    meta = read_metadata(folder)
    if (folder / "adapter_config.json").is_file():
        return _inspect_adapter(folder, meta)
    config = _read_json(folder / "config.json")
    if not config:
        raise MGError(f"{folder}: neither config.json nor adapter_config.json found",
                      hint="point at a Hugging Face model folder or a registered Model Garden model")
    result = Inspection(path=str(folder), kind="merged", has_chat_template=_has_chat_template(folder))
    _fill_from_config(result, config)
    if meta.get("modality") == "vision":
        result.modality = "vision"

    table = _tensor_table(folder)
    declared = _config_quantization(config, folder)
    if table:
        result.num_parameters, result.weight_bytes = _count(table, _pack_factor(config))
        found = _tensor_quantization(table)
        if declared and not found:
            dtypes = {info.get("dtype") for info in table.values()}
            if dtypes <= FLOAT_DTYPES:
                result.notes.append(f"config declares {declared} quantization but the weights are plain "
                                    f"{'/'.join(sorted(dtypes))}: leftover quantization_config ignored")
                declared = None
        if found and declared and found != declared:
            # the tensors prove the weights are quantized; the config names the format vLLM must load
            # (e.g. FP8 tensors in a compressed-tensors checkpoint are compressed-tensors, not vLLM's fp8)
            result.notes.append(f"{found} tensors in a {declared} checkpoint: served as {declared}")
            found = declared
        if found == "compressed-tensors" and not declared:
            result.notes.append("packed compressed-tensors weights but no quantization_config in config.json: "
                                "nothing can load them without it")
        result.quantization = found or declared
    else:
        bins = list(folder.glob("*.bin"))
        result.weight_bytes = sum(p.stat().st_size for p in bins)
        if not bins:
            raise MGError(f"{folder}: config.json but no weights (*.safetensors or *.bin)",
                          hint="the artifact looks incomplete; re-download or re-register it")
        result.quantization = declared
        result.notes.append("weights are .bin files: quantization taken from config only")
    return result


def leftover_quantization_config(folder: str | Path, inspection: Inspection) -> bool:
    """True when config.json declares a quantization the weights do not have."""
    if inspection.kind != "merged" or inspection.quantization:
        return False
    return _config_quantization(_read_json(Path(folder) / "config.json"), Path(folder)) is not None


def undeclared_packed_weights(folder: str | Path, inspection: Inspection) -> bool:
    """True when the weights are compressed-tensors packed tensors but config.json declares no quantization
    (only ``weight_packed`` tensors make an undeclared folder compressed-tensors): the packing (bits, groups)
    is written only there, so vLLM cannot load such a folder."""
    if inspection.kind != "merged" or inspection.quantization != "compressed-tensors":
        return False
    return _config_quantization(_read_json(Path(folder) / "config.json"), Path(folder)) is None
