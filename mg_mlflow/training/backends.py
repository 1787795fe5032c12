"""Training backends: ``unsloth`` (FastLanguageModel) and ``hf`` (transformers + peft).

Contract: ``load_model(cfg, base, revision)`` returns ``(model, tokenizer, peft_config)``; the
model then goes to the same TRL ``SFTTrainer`` and the same callbacks, so runs from either backend
produce the same MLflow record. Unsloth must be imported before transformers/trl, so
:func:`choose_backend` runs (and imports it) before anything else of the stack.
"""

from __future__ import annotations

import importlib.util
import os

from mg_mlflow.errors import MGError, MissingExtra
from mg_mlflow.registry.loader import RewardHead
from mg_mlflow.training import batching

LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_backend(requested: str, method: str) -> tuple[str, str]:
    """(backend, why). ``auto`` picks unsloth on CUDA when installed, else hf."""
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    cuda = _cuda()
    if method == "qlora" and not cuda:
        raise MGError("method=qlora needs a CUDA GPU with bitsandbytes (4-bit base weights)",
                      hint="use --set method=lora on this machine")
    if requested == "unsloth":
        if not has_unsloth:
            raise MissingExtra("unsloth", "gpu", "backend=unsloth")
        why = "requested" + ("" if cuda else " (no CUDA GPU: Unsloth trains on the CPU, slowly)")
        backend = "unsloth"
    elif requested == "hf":
        backend, why = "hf", "requested"
    elif cuda and has_unsloth:
        backend, why = "unsloth", "auto: CUDA GPU and unsloth installed"
    elif cuda:
        backend, why = "hf", "auto: unsloth not installed (pip install 'model-garden-mlflow[gpu]')"
    else:
        backend, why = "hf", "auto: no CUDA GPU, and Unsloth's speedups are CUDA kernels"
    if backend == "unsloth":
        os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
        import unsloth  # noqa: F401  - must come before transformers / trl / peft
    return backend, why


def torch_dtype(name: str):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _targets(cfg) -> str | list[str]:
    spec = cfg.lora_target_modules.strip()
    if spec == "all-linear":
        return "all-linear"
    return [m.strip() for m in spec.split(",") if m.strip()]


def hf_load_kwargs(cfg, revision: str | None, skip_modules: list[str] | None = None) -> dict:
    """``from_pretrained`` kwargs: dtype, revision, and 4-bit NF4 quantization for qlora
    (``skip_modules`` stay unquantized)."""
    kwargs = {"dtype": torch_dtype(cfg.dtype)}
    if revision:
        kwargs["revision"] = revision
    if cfg.method == "qlora":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise MissingExtra("bitsandbytes", "gpu", "method=qlora")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
            **({"llm_int8_skip_modules": skip_modules} if skip_modules else {}))
    return kwargs


def load_hf(cfg, base: str, revision: str | None, head: str = "causal-lm"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = hf_load_kwargs(cfg, revision)
    if _cuda():  # FlexAttention for padding-free / packed rows, SDPA for padded ones
        kwargs["attn_implementation"] = batching.attention_implementation(batching.resolve_batching(cfg, "hf"))
    try:
        model = (AutoModelForCausalLM if head == "causal-lm" else RewardHead).from_pretrained(base, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(base, revision=revision) if revision else AutoTokenizer.from_pretrained(base)
    except OSError as exc:
        raise MGError(f"could not load base model {base!r}: {exc}",
                      hint="give a hub id (needs network or a warm HF cache), a model folder, or a models:/ URI") from None
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    peft_config = None
    if cfg.method in ("lora", "qlora"):
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=_targets(cfg), bias="none",
                                 task_type="CAUSAL_LM" if head == "causal-lm" else "SEQ_CLS")
    return model, tokenizer, peft_config


def load_unsloth(cfg, base: str, revision: str | None, **extra):
    """FastLanguageModel (``extra``: more ``from_pretrained`` settings, e.g. grpo's fast inference)."""
    from unsloth import FastLanguageModel

    try:
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=base, max_seq_length=cfg.max_seq_length, dtype=None if cfg.dtype == "auto" else torch_dtype(cfg.dtype),
            load_in_4bit=cfg.method == "qlora", full_finetuning=cfg.method == "full",
            revision=revision, random_state=cfg.seed, **extra)
    except OSError as exc:
        raise MGError(f"could not load base model {base!r}: {exc}") from None
    if cfg.method in ("lora", "qlora"):
        targets = _targets(cfg)
        model = FastLanguageModel.get_peft_model(
            model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=LORA_MODULES if targets == "all-linear" else targets, bias="none",
            use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
            random_state=cfg.seed)
    return model, tokenizer, None


def inference_attention(model) -> None:
    """After training: a model trained with FlexAttention answers the reload probe (and anything
    after it) through SDPA, as every reloaded copy does, so trained and saved logits compare like for
    like and no inference-mode FlexAttention kernel is compiled."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) == batching.FLAT_ROW_ATTENTION:
        model.set_attn_implementation("sdpa")


def load_model(backend: str, cfg, base: str, revision: str | None, head: str = "causal-lm",
               extra: dict | None = None):
    """(model, tokenizer, peft_config); ``head``: causal-lm, or sequence-classification (a reward model:
    the transformers loader, one score); ``extra``: more settings for the Unsloth loader."""
    if head == "causal-lm" and backend == "unsloth":
        model, tok, peft_config = load_unsloth(cfg, base, revision, **(extra or {}))
    elif head == "causal-lm":
        model, tok, peft_config = load_hf(cfg, base, revision)
    else:
        model, tok, peft_config = load_hf(cfg, base, revision, head)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if head != "causal-lm":
        model.config.pad_token_id = tok.pad_token_id  # the score is read at the last non-pad token
    if not tok.chat_template:
        raise MGError(f"the tokenizer of {base!r} has no chat template",
                      hint="train from an instruct/chat model, or add a chat_template to tokenizer_config.json")
    return model, tok, peft_config
