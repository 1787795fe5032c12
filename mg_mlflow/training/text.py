"""Text fine-tuning recipe, top to bottom: data -> backend -> MLflow run -> train -> save -> register.

Both ``model-garden train`` and ``mlflow run . -e train`` end up here with a validated
:class:`~mg_mlflow.config.TrainConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mg_mlflow.config import TrainConfig
from mg_mlflow.env import setup_env
from mg_mlflow.errors import MGError


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
            raise MGError(f"base model folder {path} has no config.json",
                          hint="point base_model at a Hugging Face model folder")
        return str(path.resolve()), None
    if base_model.startswith((".", "/", "~")):
        raise MGError(f"base model folder {base_model} does not exist",
                      hint="give an existing folder, a hub id, or a models:/ URI; "
                           "`model-garden dev tiny-model DIR` builds a tiny one")
    return base_model, None


def sft_config(cfg: TrainConfig, output_dir: Path, has_eval: bool, backend: str):
    from trl import SFTConfig

    from mg_mlflow.training.common import trainer_kwargs

    return SFTConfig(
        **trainer_kwargs(cfg, output_dir, has_eval, backend),
        max_length=cfg.max_seq_length, packing=cfg.packing,
        completion_only_loss=cfg.train_on_responses_only or None, dataset_num_proc=None,
    )


def train_text(cfg: TrainConfig, show_progress: bool | None = None, callbacks=()) -> TrainResult:
    setup_env()
    train_data, eval_data = load_data(cfg)
    base, revision = resolve_base_model(cfg.base_model)  # a missing folder fails before any run exists

    from mg_mlflow.training.backends import choose_backend

    backend, why = choose_backend(cfg.backend, cfg.method)  # imports unsloth first when chosen

    import mlflow
    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from mg_mlflow.data.load import to_trl_rows
    from mg_mlflow.tracking.run import run_context
    from mg_mlflow.training.backends import load_model
    from mg_mlflow.training.common import (add_loss_and_carbon, log_loss_curve, run_tags, start_run_record,
                                           timed_train, training_callbacks)
    from mg_mlflow.training.progress import TrainProgress
    from mg_mlflow.training.save import save_and_register

    tags = run_tags("text", backend, cfg.method)
    with run_context(cfg.experiment, cfg.run_name, cfg.system_metrics, tags=tags) as run:
        run_id, output_dir = start_run_record(cfg, run, why, tags, train_data, eval_data)

        model, tokenizer, peft_config = load_model(backend, cfg, base, revision)
        rows = to_trl_rows(train_data.records, cfg.train_on_responses_only)
        eval_rows = to_trl_rows(eval_data.records, cfg.train_on_responses_only) if eval_data else None
        with TrainProgress(f"train {backend}/{cfg.method}", enabled=show_progress) as progress:
            metrics_cb, carbon_cb, own_callbacks = training_callbacks(cfg, output_dir, progress)
            trainer = SFTTrainer(
                model=model, args=sft_config(cfg, output_dir, eval_data is not None, backend),
                train_dataset=Dataset.from_list(rows),
                eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
                processing_class=tokenizer, peft_config=peft_config, callbacks=[*own_callbacks, *callbacks])
            if len(trainer.train_dataset) == 0:
                    raise MGError(f"no training example is left after tokenization: every one of the "
                              f"{len(rows)} records is longer than max_seq_length={cfg.max_seq_length} "
                              "before its answer starts",
                              hint="raise max_seq_length, or check lengths with `model-garden data validate "
                                   "FILE --base-model MODEL --max-seq-length N`")
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            train_seconds = timed_train(trainer, evaluate_after=bool(eval_rows) and cfg.eval_steps <= 0)

        mlflow.flush_async_logging()
        summary = {"train_seconds": train_seconds, "trained_tokens": metrics_cb.total_tokens,
                   "train_steps": float(trainer.state.global_step)}
        if metrics_cb.step_time_median() is not None:
            summary["step_time_median_s"] = metrics_cb.step_time_median()
        if torch.cuda.is_available():
            summary["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
            summary["peak_gpu_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
        add_loss_and_carbon(summary, metrics_cb, carbon_cb)
        mlflow.log_metrics(summary)
        log_loss_curve(metrics_cb, output_dir, f"{Path(cfg.base_model).name} {cfg.method} ({backend})")

        result = save_and_register(cfg, trainer, tokenizer, backend, output_dir, train_data, summary)
        result.run_id = run_id
        result.metrics = summary
        return result
