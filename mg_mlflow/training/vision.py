"""Vision-language fine-tuning recipe, top to bottom: data -> backend -> MLflow run -> sample answers
-> train -> sample answers again -> save -> register. Qwen2.5-VL is the reference family.

Both ``model-garden train-vision`` and ``mlflow run . -e train_vision`` end up here with a validated
:class:`~mg_mlflow.vision_config.VisionTrainConfig`. The MLflow record is the text recipe's (params,
per-step loss, dataset input, carbon, config artifact, loss curve) plus ``samples/``: a few images
with the model's answers before and after training.
"""

from __future__ import annotations

from pathlib import Path

from mg_mlflow.env import setup_env
from mg_mlflow.errors import MGError
from mg_mlflow.vision_config import VisionTrainConfig

LANGUAGE_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_MODULES = ("qkv", "attn.proj", "gate_proj", "up_proj", "down_proj", "mlp.0", "mlp.2")


def load_vision_data(cfg: VisionTrainConfig):
    """Load and validate records and images before any model is loaded (fails fast with file:line)."""
    from mg_mlflow.data.load import split_eval
    from mg_mlflow.data.vision import load_vision_records

    train = load_vision_records(cfg.dataset, cfg.dataset_format)
    if cfg.eval_dataset:
        return train, load_vision_records(cfg.eval_dataset, cfg.dataset_format)
    return split_eval(train, cfg.eval_split, cfg.seed)


def lora_targets(cfg: VisionTrainConfig) -> str | list[str]:
    """peft ``target_modules``: a regex over the language model (and the vision tower when asked)."""
    spec = cfg.lora_target_modules.strip()
    names = list(LANGUAGE_MODULES) if spec == "all-linear" else [m.strip() for m in spec.split(",") if m.strip()]
    lang = "|".join(n.replace(".", r"\.") for n in names)
    pattern = rf".*language_model.*\.({lang})"
    if cfg.finetune_vision_layers:
        vis = "|".join(n.replace(".", r"\.") for n in (VISION_MODULES if spec == "all-linear" else names))
        pattern += rf"|.*visual\.(blocks|merger).*\.({vis})"
    return pattern


def processor_folder(base: str, revision: str | None) -> Path:
    """A local folder with the base's tokenizer and image processor files (hub ids: the HF cache)."""
    if Path(base).is_dir():
        return Path(base)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(base, revision=revision, allow_patterns=[
            "*.json", "*.jinja", "*.model", "*.txt", "*.tiktoken"]))
    except Exception as exc:  # noqa: BLE001 - offline / unknown repo
        raise MGError(f"could not fetch the processor files of {base!r}: {exc}",
                      hint="give a local model folder or a models:/ URI on offline machines") from None


def load_hf_vision(cfg: VisionTrainConfig, base: str, revision: str | None):
    from transformers import AutoModelForImageTextToText

    from mg_mlflow.training.backends import hf_load_kwargs

    kwargs = hf_load_kwargs(cfg, revision, skip_modules=["visual", "lm_head"])
    try:
        model = AutoModelForImageTextToText.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as exc:
        raise MGError(f"could not load vision-language model {base!r}: {exc}",
                      hint="give a Qwen2-VL/Qwen2.5-VL folder, hub id or models:/ URI") from None
    if cfg.method == "full":
        if not cfg.finetune_vision_layers:
            for p in model.model.visual.parameters():
                p.requires_grad_(False)
        return model
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=lora_targets(cfg), bias="none")
    model = get_peft_model(model, peft_config)
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def load_unsloth_vision(cfg: VisionTrainConfig, base: str, revision: str | None):
    """Unsloth's vision path (FastVisionModel); the processor still comes from the base folder."""
    from unsloth import FastVisionModel

    from mg_mlflow.training.backends import torch_dtype

    model, _ = FastVisionModel.from_pretrained(
        base, load_in_4bit=cfg.method == "qlora", full_finetuning=cfg.method == "full", revision=revision,
        dtype=None if cfg.dtype == "auto" else torch_dtype(cfg.dtype),
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False)
    if cfg.method != "full":
        model = FastVisionModel.get_peft_model(
            model, finetune_vision_layers=cfg.finetune_vision_layers, finetune_language_layers=True,
            finetune_attention_modules=True, finetune_mlp_modules=True, r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none", random_state=cfg.seed)
    FastVisionModel.for_training(model)
    return model


def training_args(cfg: VisionTrainConfig, output_dir: Path, has_eval: bool, backend: str):
    from transformers import TrainingArguments

    from mg_mlflow.training.common import trainer_kwargs

    return TrainingArguments(
        **trainer_kwargs(cfg, output_dir, has_eval, backend),
        remove_unused_columns=False, label_names=["labels"], dataloader_num_workers=0,
    )


def train_vision(cfg: VisionTrainConfig, show_progress: bool | None = None):
    setup_env()
    train_data, eval_data = load_vision_data(cfg)

    from mg_mlflow.training.backends import choose_backend

    backend, why = choose_backend(cfg.backend, cfg.method)  # imports unsloth first when chosen

    import mlflow
    from transformers import Trainer

    from mg_mlflow.tracking.run import run_context
    from mg_mlflow.training.common import (add_loss_and_carbon, log_loss_curve, run_tags, start_run_record,
                                           timed_train, training_callbacks)
    from mg_mlflow.training.progress import TrainProgress
    from mg_mlflow.training.text import resolve_base_model
    from mg_mlflow.training.vision_collator import RecordDataset, VisionCollator, VisionProcessor
    from mg_mlflow.training.vision_samples import log_samples, pick_samples, sample_answers
    from mg_mlflow.training.vision_save import save_and_register_vision

    tags = run_tags("vision", backend, cfg.method)
    with run_context(cfg.experiment, cfg.run_name, cfg.system_metrics, tags=tags) as run:
        run_id, output_dir = start_run_record(cfg, run, why, tags, train_data, eval_data)

        base, revision = resolve_base_model(cfg.base_model)
        processor = VisionProcessor.from_dir(processor_folder(base, revision), cfg.min_pixels, cfg.max_pixels)
        model = (load_unsloth_vision if backend == "unsloth" else load_hf_vision)(cfg, base, revision)
        samples = pick_samples(eval_data or train_data, cfg.sample_images)
        before = sample_answers(model, processor, samples, cfg.sample_max_new_tokens)

        collator = VisionCollator(processor, cfg.max_seq_length, cfg.train_on_responses_only)
        with TrainProgress(f"train-vision {backend}/{cfg.method}", enabled=show_progress) as progress:
            metrics_cb, carbon_cb, callbacks = training_callbacks(cfg, output_dir, progress)
            trainer = Trainer(
                model=model, args=training_args(cfg, output_dir, eval_data is not None, backend),
                train_dataset=RecordDataset(train_data.records),
                eval_dataset=RecordDataset(eval_data.records) if eval_data else None,
                data_collator=collator, callbacks=callbacks)
            train_seconds = timed_train(trainer, evaluate_after=eval_data is not None and cfg.eval_steps <= 0)

        summary = add_loss_and_carbon({"train_seconds": train_seconds, "trained_tokens": metrics_cb.total_tokens},
                                      metrics_cb, carbon_cb)
        model = trainer.model.eval()
        after = sample_answers(model, processor, samples, cfg.sample_max_new_tokens)
        summary.update(log_samples(samples, before, after, output_dir))
        mlflow.log_metrics(summary)
        log_loss_curve(metrics_cb, output_dir, f"{Path(cfg.base_model).name} vision {cfg.method} ({backend})")

        result = save_and_register_vision(cfg, model, processor, backend, output_dir, train_data, summary,
                                          probe=(samples or pick_samples(train_data, 1))[0])
        result.run_id = run_id
        result.metrics = summary
        return result
