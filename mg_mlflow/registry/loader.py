"""Load a Model Garden model folder or registry URI back as transformers / peft objects.

This is the documented loader for what MLflow's transformers flavor cannot hold faithfully (an
adapter whose base was a local folder: its LoRA weights are re-initialised on reload, or the base
is referenced by an absolute path; mlflow #22020)::

    from mg_mlflow.registry.loader import load_transformers
    model, tokenizer = load_transformers("models:/tiny-lora@champion")
"""

from __future__ import annotations

from pathlib import Path

from mg_mlflow.data.vision_processor import VisionProcessor
from mg_mlflow.errors import MGError
from mg_mlflow.registry.base_ref import resolve_base
from mg_mlflow.registry.metadata import read_metadata
from mg_mlflow.registry.resolve import resolve_model_uri


def is_adapter_dir(folder: Path) -> bool:
    return (Path(folder) / "adapter_config.json").is_file()


def _dtype(name: str | None):
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(name or "", None)


def load_weights(folder: str | Path, auto_cls, dtype: str | None = None):
    """The model of a merged folder, or of an adapter folder on its base (resolved from the
    ``mg_model.json`` reference), loaded through ``auto_cls``."""
    folder = Path(folder)
    meta = read_metadata(folder)
    torch_dtype = _dtype(dtype or meta.get("dtype"))
    kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    if is_adapter_dir(folder):
        from peft import PeftModel

        ref = meta.get("base_model")
        if not ref:
            raise MGError(f"{folder}: adapter without a Model Garden base reference ({'mg_model.json'})",
                          hint="load it with peft and pass the base model yourself")
        base, revision = resolve_base(ref)
        if revision:
            kwargs["revision"] = revision
        if meta.get("base_quantization") == "bnb-4bit" and default_device() == "cuda":
            import torch
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch_dtype or torch.bfloat16)
        return PeftModel.from_pretrained(auto_cls.from_pretrained(base, **kwargs), str(folder))
    return auto_cls.from_pretrained(str(folder), **kwargs)


def default_device() -> str | None:
    """``cuda`` when a GPU is there (also where Unsloth has patched the model classes), else CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else None


def load_model_dir(folder: str | Path, dtype: str | None = None, device: str | None = None):
    """(model, tokenizer) from a merged model folder or an adapter folder (base resolved by reference)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = load_weights(folder, AutoModelForCausalLM, dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    device = device or default_device()
    if device:
        model.to(device)
    model.eval()
    return model, tokenizer


def load_vision_dir(folder: str | Path, dtype: str | None = None, device: str | None = None):
    """(model, VisionProcessor) from a merged model folder or an adapter folder (base by reference)."""
    from transformers import AutoModelForImageTextToText

    model = load_weights(folder, AutoModelForImageTextToText, dtype)
    device = device or default_device()
    if device:
        model.to(device)
    return model.eval(), VisionProcessor.from_dir(Path(folder))


def load_transformers(uri: str, dtype: str | None = None, device: str | None = None):
    """(model, tokenizer) for any registry URI or folder that ``resolve_model_uri`` accepts."""
    return load_model_dir(resolve_model_uri(uri).local_dir, dtype=dtype, device=device)
