"""Text fine-tuning recipe, top to bottom: data -> backend -> MLflow run -> train -> save -> register.

Both ``model-garden train`` and ``mlflow run . -e train`` end up here with a validated
:class:`~mg_mlflow.config.TrainConfig`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from mg_mlflow.config import TrainConfig, to_dict
from mg_mlflow.env import mg_home, setup_env


@dataclass
class TrainResult:
    run_id: str
    output_dir: Path
    model_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    registered_name: str | None = None
    registered_version: str | None = None
    model_uri: str | None = None


def load_data(cfg: TrainConfig):
    """Load and validate train/eval data before any model is loaded (fails fast with file:line)."""
    from mg_mlflow.data.load import load_dataset_records, split_eval

    train = load_dataset_records(cfg.dataset, cfg.dataset_format, cfg.dataset_split)
    if cfg.eval_dataset:
        return train, load_dataset_records(cfg.eval_dataset, cfg.dataset_format, "validation")
    return split_eval(train, cfg.eval_split, cfg.seed)


def resolve_base_model(base_model: str) -> tuple[str, str | None]:
    """What from_pretrained takes for the base: a folder, a downloaded registry version, or a hub id."""
    if base_model.startswith("models:/"):
        from mg_mlflow.registry.resolve import resolve_model_uri

        return str(resolve_model_uri(base_model).local_dir), None
    path = Path(base_model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            from mg_mlflow.errors import MGError

            raise MGError(f"base model folder {path} has no config.json",
                          hint="point base_model at a Hugging Face model folder")
        return str(path.resolve()), None
    if base_model.startswith((".", "/", "~")):
        from mg_mlflow.errors import MGError

        raise MGError(f"base model folder {base_model} does not exist",
                      hint="give an existing folder, a hub id, or a models:/ URI; "
                           "`model-garden dev tiny-model DIR` builds a tiny one")
    return base_model, None


def sft_config(cfg: TrainConfig, output_dir: Path, has_eval: bool, backend: str):
    from trl import SFTConfig

    from mg_mlflow.training.backends import torch_dtype
    import torch

    dtype = torch_dtype(cfg.dtype)
    eval_strategy = "steps" if has_eval and cfg.eval_steps > 0 else "no"
    return SFTConfig(
        output_dir=str(output_dir / "checkpoints"),
        max_steps=cfg.max_steps, num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=int(cfg.warmup_steps) if cfg.warmup_steps >= 1 else cfg.warmup_steps,
        weight_decay=cfg.weight_decay, seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=cfg.logging_steps, logging_first_step=True,
        eval_strategy=eval_strategy, eval_steps=cfg.eval_steps or None,
        save_strategy="steps" if cfg.save_steps > 0 else "no", save_steps=cfg.save_steps or 500,
        gradient_checkpointing=cfg.gradient_checkpointing and backend == "hf",
        bf16=dtype == torch.bfloat16 and torch.cuda.is_available(),
        fp16=dtype == torch.float16 and torch.cuda.is_available(),
        max_length=cfg.max_seq_length, packing=cfg.packing,
        completion_only_loss=cfg.train_on_responses_only or None,
        include_num_input_tokens_seen="non_padding", report_to="none",
        dataset_num_proc=None, disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
    )


def train_text(cfg: TrainConfig, show_progress: bool | None = None) -> TrainResult:
    setup_env()
    train_data, eval_data = load_data(cfg)
    base, revision = resolve_base_model(cfg.base_model)  # a missing folder fails before any run exists

    from mg_mlflow.training.backends import choose_backend

    backend, why = choose_backend(cfg.backend, cfg.method)  # imports unsloth first when chosen

    import mlflow
    from datasets import Dataset
    from trl import SFTTrainer

    from mg_mlflow.data.load import to_trl_rows
    from mg_mlflow.tracking import carbon
    from mg_mlflow.tracking.datasets import log_dataset_input
    from mg_mlflow.tracking.metrics import MLflowMetricsCallback
    from mg_mlflow.tracking.params import log_run_metadata
    from mg_mlflow.tracking.plots import loss_curve_png
    from mg_mlflow.tracking.run import run_context
    from mg_mlflow.training.backends import load_model
    from mg_mlflow.training.progress import TrainProgress
    from mg_mlflow.training.save import save_and_register

    tags = {"mg.modality": "text", "mg.backend": backend, "mg.method": cfg.method}
    with run_context(cfg.experiment, cfg.run_name, cfg.system_metrics, tags=tags) as run:
        run_id = run.info.run_id
        output_dir = Path(cfg.output_dir or mg_home() / "outputs" / run_id).absolute()
        output_dir.mkdir(parents=True, exist_ok=True)
        log_run_metadata(to_dict(cfg), {"mg.backend_reason": why, **tags})
        log_dataset_input(train_data, "training")
        if eval_data is not None:
            log_dataset_input(eval_data, "evaluation")

        model, tokenizer, peft_config = load_model(backend, cfg, base, revision)
        rows = to_trl_rows(train_data.records, cfg.train_on_responses_only)
        eval_rows = to_trl_rows(eval_data.records, cfg.train_on_responses_only) if eval_data else None
        with TrainProgress(f"train {backend}/{cfg.method}", enabled=show_progress) as progress:
            metrics_cb = MLflowMetricsCallback(progress)
            callbacks = [metrics_cb]
            carbon_cb = carbon.training_callback(cfg, output_dir) if cfg.carbon else None
            if carbon_cb is not None:
                callbacks.append(carbon_cb)
            trainer = SFTTrainer(
                model=model, args=sft_config(cfg, output_dir, eval_data is not None, backend),
                train_dataset=Dataset.from_list(rows),
                eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
                processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
            if len(trainer.train_dataset) == 0:
                from mg_mlflow.errors import MGError

                raise MGError(f"no training example is left after tokenization: every one of the "
                              f"{len(rows)} records is longer than max_seq_length={cfg.max_seq_length} "
                              "before its answer starts",
                              hint="raise max_seq_length, or check lengths with `model-garden data validate "
                                   "FILE --base-model MODEL --max-seq-length N`")
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)  # our callback prints the live loss
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            trainer.train()
            train_seconds = time.perf_counter() - started
            if eval_rows and cfg.eval_steps <= 0:
                trainer.evaluate()  # logged through the callback's on_log at the final step

        mlflow.flush_async_logging()
        summary = {"train_seconds": train_seconds, "trained_tokens": metrics_cb.total_tokens,
                   "train_steps": float(trainer.state.global_step)}
        if metrics_cb.step_time_median() is not None:
            summary["step_time_median_s"] = metrics_cb.step_time_median()
        if torch.cuda.is_available():
            summary["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
            summary["peak_gpu_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
        for key in ("loss", "eval_loss"):
            if metrics_cb.first(key) is not None:
                summary[f"{key}_first"] = metrics_cb.first(key)
                summary[f"{key}_final"] = metrics_cb.last(key)
        if carbon_cb is not None:
            summary.update(carbon_cb.totals())
        mlflow.log_metrics(summary)
        png = loss_curve_png(metrics_cb.history, output_dir / "loss_curve.png",
                             title=f"{Path(cfg.base_model).name} {cfg.method} ({backend})")
        if png:
            mlflow.log_artifact(str(png), "plots")

        result = save_and_register(cfg, trainer, tokenizer, backend, output_dir, train_data, summary)
        result.run_id = run_id
        result.metrics = summary
        return result
