"""Steps the text and vision recipes share: run setup, trainer arguments, callbacks, summary metrics.

Each recipe (:mod:`mg_mlflow.training.text`, :mod:`mg_mlflow.training.vision`) still reads top to
bottom; these helpers only hold the steps that are the same in both, so both runs keep the same
MLflow record (params, tags, dataset inputs, metric names, ``plots/loss_curve.png``).
"""

from __future__ import annotations

import time
from pathlib import Path

from mg_mlflow.config import to_dict
from mg_mlflow.env import mg_home


def run_tags(modality: str, backend: str, method: str) -> dict[str, str]:
    return {"mg.modality": modality, "mg.backend": backend, "mg.method": method}


def start_run_record(cfg, run, why: str, tags: dict, train_data, eval_data) -> tuple[str, Path]:
    """(run_id, output_dir) for a run just opened: makes the output folder, logs the config as
    params, the run tags and the dataset inputs."""
    from mg_mlflow.tracking.datasets import log_dataset_input
    from mg_mlflow.tracking.params import log_run_metadata

    run_id = run.info.run_id
    output_dir = Path(cfg.output_dir or mg_home() / "outputs" / run_id).absolute()
    output_dir.mkdir(parents=True, exist_ok=True)
    log_run_metadata(to_dict(cfg), {"mg.backend_reason": why, **tags})
    log_dataset_input(train_data, "training")
    if eval_data is not None:
        log_dataset_input(eval_data, "evaluation")
    return run_id, output_dir


def trainer_kwargs(cfg, output_dir: Path, has_eval: bool, backend: str) -> dict:
    """The transformers ``TrainingArguments`` both recipes set the same way."""
    import torch

    from mg_mlflow.training.backends import torch_dtype

    dtype = torch_dtype(cfg.dtype)
    return dict(
        output_dir=str(output_dir / "checkpoints"), max_steps=cfg.max_steps, num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=int(cfg.warmup_steps) if cfg.warmup_steps >= 1 else cfg.warmup_steps,
        weight_decay=cfg.weight_decay, seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=cfg.logging_steps, logging_first_step=True,
        eval_strategy="steps" if has_eval and cfg.eval_steps > 0 else "no", eval_steps=cfg.eval_steps or None,
        save_strategy="steps" if cfg.save_steps > 0 else "no", save_steps=cfg.save_steps or 500,
        gradient_checkpointing=cfg.gradient_checkpointing and backend == "hf",
        bf16=dtype == torch.bfloat16 and torch.cuda.is_available(),
        fp16=dtype == torch.float16 and torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding", report_to="none", disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )


def training_callbacks(cfg, output_dir: Path, progress):
    """(metrics_cb, carbon_cb or None, callbacks): per-step MLflow metrics, and carbon when asked."""
    from mg_mlflow.tracking import carbon
    from mg_mlflow.tracking.metrics import MLflowMetricsCallback

    metrics_cb = MLflowMetricsCallback(progress)
    callbacks = [metrics_cb]
    carbon_cb = carbon.training_callback(cfg, output_dir) if cfg.carbon else None
    if carbon_cb is not None:
        callbacks.append(carbon_cb)
    return metrics_cb, carbon_cb, callbacks


def timed_train(trainer, evaluate_after: bool) -> float:
    """Train without the console printer (our callback prints the live loss); seconds it took.
    ``evaluate_after``: one evaluation at the end, logged through the callback's on_log."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    if evaluate_after:
        trainer.evaluate()
    return train_seconds


def add_loss_and_carbon(summary: dict, metrics_cb, carbon_cb) -> dict:
    """``loss_first/final``, ``eval_loss_first/final`` and the carbon totals, added to ``summary``."""
    for key in ("loss", "eval_loss"):
        if metrics_cb.first(key) is not None:
            summary[f"{key}_first"] = metrics_cb.first(key)
            summary[f"{key}_final"] = metrics_cb.last(key)
    if carbon_cb is not None:
        summary.update(carbon_cb.totals())
    return summary


def log_loss_curve(metrics_cb, output_dir: Path, title: str) -> None:
    """``plots/loss_curve.png`` from the callback's history (nothing when there is nothing to plot)."""
    import mlflow

    from mg_mlflow.tracking.plots import loss_curve_png

    png = loss_curve_png(metrics_cb.history, output_dir / "loss_curve.png", title=title)
    if png:
        mlflow.log_artifact(str(png), "plots")
