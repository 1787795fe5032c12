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


REWARD_HEAD = "sequence-classification"  # mg_model.json "head" of a reward model


class RewardHead:
    """``from_pretrained`` of a reward model: a sequence-classification model with one score (num_labels=1),
    from a causal LM base (a fresh head) or a saved reward model."""

    @staticmethod
    def from_pretrained(path, **kwargs):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)


def is_reward_model(metadata: dict) -> bool:
    return metadata.get("head") == REWARD_HEAD


def load_reward_dir(folder: str | Path, dtype: str | None = None, device: str | None = None):
    """(model, tokenizer) of a reward model folder (merged, or an adapter on its base by reference)."""
    from transformers import AutoTokenizer

    model = load_weights(folder, RewardHead, dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last non-pad token
    device = device or default_device()
    if device:
        model.to(device)
    return model.eval(), tokenizer


def reward_text(tokenizer, prompt, completion) -> str:
    """What a reward model scores: the conversation (chat template) or the prompt text + the completion."""
    if isinstance(prompt, list):
        turns = completion if isinstance(completion, list) else [{"role": "assistant", "content": str(completion)}]
        return tokenizer.apply_chat_template(prompt + turns, tokenize=False)
    return f"{prompt}{completion}"


def reward_scores(model, tokenizer, texts: list[str], batch_size: int = 8) -> list[float]:
    """One score per text (the reward model's single logit), in right-padded batches."""
    import torch

    out: list[float] = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, padding_side="right",
                        add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out += model(**enc).logits[:, 0].float().cpu().tolist()
    return out
