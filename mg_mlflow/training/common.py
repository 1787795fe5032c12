"""The steps of :mod:`mg_mlflow.training.recipe`, written once for every modality: run naming and
tags, trainer arguments, callbacks, summary metrics, the loss curve.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from mg_mlflow import metric_names as mn
from mg_mlflow.config import to_dict, trainer_args_for
from mg_mlflow.env import run_outputs
from mg_mlflow.data.stats import truncation_warning
from mg_mlflow.errors import MGError
from mg_mlflow.tracking.datasets import log_dataset_input
from mg_mlflow.tracking.params import log_run_metadata
from mg_mlflow.tracking.plots import loss_curve_png
from mg_mlflow.training.backends import torch_dtype
from mg_mlflow.training.batching import resolve_pad_multiple, resolve_with_reason
from mg_mlflow.training.distributed import job_gpu_ids
from mg_mlflow.vision_config import VisionTrainConfig


@contextmanager
def disk_full_is_clear(output_dir: Path):
    """A full disk while training or saving: a clear error naming the folder, the half-written model
    folder removed (the run then ends FAILED and nothing is registered)."""
    try:
        yield
    except Exception as exc:  # OSError, or a library's own (safetensors: "os error 28")
        if isinstance(exc, MGError) or (getattr(exc, "errno", None) != errno.ENOSPC
                                        and "No space left on device" not in str(exc)):
            raise
        shutil.rmtree(output_dir / "model", ignore_errors=True)
        try:
            free = f"{shutil.disk_usage(output_dir).free / 2**20:.1f} MiB free"
        except OSError:
            free = "free space unknown"
        raise MGError(f"disk full (No space left on device) while writing under {output_dir} ({free}); the "
                      "half-written model was removed and nothing was registered",
                      hint="free space, or point --output-dir at a disk with room for checkpoints and the "
                           "model") from None


def no_answer_left(records: int, max_seq_length: int) -> MGError:
    return MGError(f"no training example is left after tokenization: every one of the {records} records "
                   f"is longer than max_seq_length={max_seq_length} before its answer starts",
                   hint="raise max_seq_length, or check lengths with `model-garden data validate FILE "
                        "--base-model MODEL --max-seq-length N`")


def log_truncation(cfg, profiles: dict[str, dict]) -> None:
    """Metric ``truncated_share``: the share of training examples longer than max_seq_length (from the
    training data's profile), and a warning above :data:`~mg_mlflow.data.stats.TRUNCATION_WARN_SHARE`."""
    import warnings

    import mlflow

    share = profiles.get("training", {}).get("truncated_share", 0.0)
    mlflow.log_metric("truncated_share", share)
    warning = truncation_warning(share, cfg.max_seq_length, "max_seq_length")
    if warning:
        warnings.warn(warning, UserWarning, stacklevel=2)


def run_tags(modality: str, backend: str, method: str, objective: str = "sft") -> dict[str, str]:
    """``mg.run_kind`` ``training`` (evaluation runs carry ``evaluation``): the training-runs link of
    ``model-garden ui`` filters the experiment's table on it."""
    return {"mg.modality": modality, "mg.backend": backend, "mg.method": method, "mg.run_kind": "training",
            "mg.objective": objective}


def log_objective(modality) -> None:
    """The objective's resolved settings as params (a resumed run keeps its first values) and, for
    objectives that keep one, what the reference model is (tag ``mg.reference``)."""
    import mlflow

    params = modality.run_params()
    logged = mlflow.active_run().data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})
    describe = getattr(modality, "reference_description", None)
    if describe is not None and describe():
        mlflow.set_tag("mg.reference", describe())


def run_name(cfg, modality: str, backend: str) -> str:
    """What the run trained, e.g. ``tiny lora r16 lr0.003 60 steps (hf)`` (or ``2 epochs``); the
    user's name when given."""
    if cfg.run_name:
        return cfg.run_name
    stem = re.sub(r"[@:]", " ", cfg.base_model.rstrip("/")).split("/")[-1] or "model"
    method = cfg.method if cfg.method == "full" else f"{cfg.method} r{cfg.lora_r}"
    kind = " vision" if modality == "vision" else ""
    length = f"{cfg.max_steps} steps" if cfg.max_steps > 0 else f"{cfg.epochs:g} epoch{'' if cfg.epochs == 1 else 's'}"
    objective = f" {cfg.objective} beta{cfg.beta:g}" if cfg.objective != "sft" else ""
    return f"{stem}{kind}{objective} {method} lr{cfg.learning_rate:g} {length} ({backend})"


def source_tags(command: str) -> dict[str, str]:
    """``mlflow.source.*`` naming the command (and recipe file) instead of ``__main__``."""
    launcher_argv = os.environ.get("MG_SOURCE_ARGV")  # a rank of --num-gpus N: the launcher's command line
    argv = json.loads(launcher_argv) if launcher_argv else sys.argv[1:]
    source = f"model-garden {command}"
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        source += f" --config {argv[argv.index('--config') + 1]}"
    return {"mlflow.source.name": source[:500], "mlflow.source.type": "LOCAL"}


def start_run_record(cfg, run, why: str, tags: dict, train_data, eval_data,
                     profiles: dict | None = None) -> tuple[str, Path]:
    """(run_id, output_dir) for a run just opened: makes the output folder, logs the config as
    params, the run tags, the dataset inputs, the detected format (``dataset_format_resolved``) and
    each dataset's profile (``datasets/<context>_profile.json``)."""
    run_id = run.info.run_id
    output_dir = run_outputs(run_id, cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log_run_metadata(to_dict(cfg), {"mg.backend_reason": why, **tags})
    log_batching(cfg, run_id, tags.get("mg.backend", "hf"), train_data.fmt)
    log_dataset_input(train_data, "training", (profiles or {}).get("training"))
    if eval_data is not None:
        log_dataset_input(eval_data, "evaluation", (profiles or {}).get("evaluation"))
    return run_id, output_dir


def log_batching(cfg, run_id: str, backend: str, resolved_format: str) -> None:
    """``dataset_format_resolved`` (the format the records were read as), ``batching_resolved`` (the
    mode ``batching`` resolved to for this backend and device) and, for
    text runs, ``pad_to_multiple_of_resolved`` as params, and the rules that chose them as the tag
    ``mg.batching_reason``; a resumed run keeps its first values (params cannot change)."""
    import mlflow

    resolved, why = resolve_with_reason(cfg, backend)
    params = {"batching_resolved": resolved, "dataset_format_resolved": resolved_format}
    if not isinstance(cfg, VisionTrainConfig):  # text: padded batches are bucketed (pad_to_multiple_of)
        params["pad_to_multiple_of_resolved"], pad_why = resolve_pad_multiple(cfg, resolved)
        why = f"{why}; pad_to_multiple_of: {pad_why}"
    logged = mlflow.get_run(run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})
    mlflow.set_tag("mg.batching_reason", why)


def trainer_kwargs(cfg, output_dir: Path, has_eval: bool, backend: str) -> dict:
    """The transformers ``TrainingArguments`` both recipes set the same way, then ``trainer_args``
    (settings Model Garden has no option for, typed and checked by :func:`mg_mlflow.config.trainer_args_for`)."""
    import torch

    from mg_mlflow.training.step_stats import sync_every

    dtype = torch_dtype(cfg.dtype)
    every = sync_every(cfg)  # > 1: loss and tokens are read every N steps by step_stats, not per step
    return dict(
        output_dir=str(output_dir / "checkpoints"), max_steps=cfg.max_steps, num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=int(cfg.warmup_steps) if cfg.warmup_steps >= 1 else cfg.warmup_steps,
        weight_decay=cfg.weight_decay, seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=cfg.logging_steps if every == 1 else max(every, cfg.logging_steps), logging_first_step=True,
        eval_strategy="steps" if has_eval and cfg.eval_steps > 0 else "no", eval_steps=cfg.eval_steps or None,
        save_strategy="steps" if cfg.save_steps > 0 else "no", save_steps=cfg.save_steps or 500,
        gradient_checkpointing=cfg.gradient_checkpointing and backend == "hf",
        bf16=dtype == torch.bfloat16 and torch.cuda.is_available(),
        fp16=dtype == torch.float16 and torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding" if every == 1 else "no", report_to="none", disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN, never as the window's average (0)
        **trainer_args_for(cfg),
    )


def training_callbacks(cfg, output_dir: Path, progress, earlier=None):
    """(metrics_cb, carbon_cb or None, callbacks): per-step MLflow metrics, carbon when asked,
    checkpoints as artifacts when asked; ``earlier``: a resumed run's first segment."""
    from mg_mlflow.tracking import carbon
    from mg_mlflow.tracking.metrics import MLflowMetricsCallback

    metrics_cb = MLflowMetricsCallback(progress, logging_steps=cfg.logging_steps)
    callbacks = [metrics_cb]

    carbon_cb = carbon.training_callback(cfg, output_dir, gpu_ids=job_gpu_ids()) if cfg.carbon else None
    if carbon_cb is not None:
        callbacks.append(carbon_cb)
    if earlier is not None:
        metrics_cb.continue_from(earlier)
        if carbon_cb is not None:
            carbon_cb.offsets, carbon_cb.logged_through = dict(earlier.carbon), earlier.logged_through
    if cfg.checkpoint_artifacts:
        from mg_mlflow.training.resume import LogCheckpoints

        callbacks.append(LogCheckpoints())
    return metrics_cb, carbon_cb, callbacks


def timed_train(trainer, evaluate_after: bool, resume_from: str | None = None) -> float:
    """Train without the console printer (our callback prints the live loss); seconds it took.
    ``evaluate_after``: one evaluation at the end, logged through the callback's on_log."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - started
    if evaluate_after:
        trainer.evaluate()
    return train_seconds


def train_summary(trainer, metrics_cb, carbon_cb, train_seconds: float) -> dict[str, float]:
    """The run's summary metrics, the same keys for every modality and backend."""
    import torch

    summary = {"train_seconds": train_seconds, "trained_tokens": metrics_cb.total_tokens,
               "train_steps": float(trainer.state.global_step)}
    if metrics_cb.step_time_median() is not None:
        summary["step_time_median_s"] = metrics_cb.step_time_median()
    if torch.cuda.is_available():
        summary["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        summary["peak_gpu_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
    return add_loss_and_carbon(summary, metrics_cb, carbon_cb)


def add_loss_and_carbon(summary: dict, metrics_cb, carbon_cb) -> dict:
    """``train/loss_first|final``, ``eval/loss_first|final`` and the carbon totals, added to ``summary``."""
    for key, first, final in ((mn.LOSS, mn.LOSS_FIRST, mn.LOSS_FINAL), (mn.EVAL_LOSS, mn.EVAL_LOSS_FIRST, mn.EVAL_LOSS_FINAL)):
        if metrics_cb.first(key) is not None:
            summary[first] = metrics_cb.first(key)
            summary[final] = metrics_cb.last(key)
    if carbon_cb is not None:
        summary.update(carbon_cb.totals())
    return summary


def log_loss_curve(metrics_cb, output_dir: Path, title: str) -> None:
    """``plots/loss_curve.png`` from the callback's history (nothing when there is nothing to plot)."""
    import mlflow

    png = loss_curve_png(metrics_cb.history, output_dir / "loss_curve.png", title=title)
    if png:
        mlflow.log_artifact(str(png), "plots")
