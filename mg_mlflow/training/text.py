"""The text modality of the one training path: chat/instruction records -> TRL ``SFTTrainer``.

:mod:`mg_mlflow.training.recipe` holds the skeleton (data -> backend -> MLflow run -> train -> save
-> verify -> register); this strategy says what is text-specific: how records load, how the model and
tokenizer load (per backend), how records become batches, and what probe verifies the reload.
"""

from __future__ import annotations

from pathlib import Path

from mg_mlflow.config import TrainConfig
from mg_mlflow.data.load import load_dataset_records, split_eval, to_trl_rows
from mg_mlflow.data.stats import truncated_share, truncation_warning
from mg_mlflow.errors import MGError
from mg_mlflow.registry.publish import log_text_model, text_probe
from mg_mlflow.training import batching
from mg_mlflow.training.backends import inference_attention, load_model
from mg_mlflow.training.common import no_answer_left, trainer_kwargs

__all__ = ["TextModality", "load_data", "sft_config"]


def load_data(cfg: TrainConfig):
    """Load and validate train/eval data before any model is loaded (fails fast with file:line)."""
    train = load_dataset_records(cfg.dataset, cfg.dataset_format, cfg.dataset_split)
    if cfg.eval_dataset:
        return train, load_dataset_records(cfg.eval_dataset, cfg.dataset_format, "validation")
    return split_eval(train, cfg.eval_split, cfg.seed)


def sft_config(cfg: TrainConfig, output_dir: Path, has_eval: bool, backend: str, mode: str | None = None):
    """TRL's ``SFTConfig`` for the run, batching included (``mode``: the resolved batching, else
    resolved here by :func:`mg_mlflow.training.batching.resolve_batching`)."""
    from trl import SFTConfig

    mode = mode or batching.resolve_batching(cfg, backend)
    return SFTConfig(
        **trainer_kwargs(cfg, output_dir, has_eval, backend),
        max_length=cfg.max_seq_length, **batching.sft_kwargs(mode, backend),
        completion_only_loss=cfg.train_on_responses_only or None, dataset_num_proc=None,
        pad_to_multiple_of=batching.resolve_pad_multiple(cfg, mode)[0] or None,
    )


class TextModality:
    """Text records (instruction or messages) trained with TRL's ``SFTTrainer``."""

    name = "text"
    command = "train"
    extra_tags: dict = {}

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def load_data(self):
        return load_data(self.cfg)

    def load(self, backend: str, base: str, revision: str | None):
        """(model, tokenizer, peft_config): the backend's loader (Unsloth or transformers + peft)."""
        return load_model(backend, self.cfg, base, revision)

    def trainer(self, model, tokenizer, peft_config, output_dir: Path, backend: str, train_data, eval_data,
                callbacks: list):
        from datasets import Dataset
        from trl import SFTTrainer

        cfg = self.cfg
        mode = batching.resolve_batching(cfg, backend)  # the mode logged as batching_resolved
        batching.check_boundaries(model, mode, backend)
        rows = to_trl_rows(train_data.records, cfg.train_on_responses_only)
        eval_rows = to_trl_rows(eval_data.records, cfg.train_on_responses_only) if eval_data else None
        with batching.unsloth_choice(mode, backend):
            trainer = SFTTrainer(
                model=model, args=sft_config(cfg, output_dir, eval_data is not None, backend, mode),
                data_collator=batching.data_collator(mode, backend, tokenizer),
                train_dataset=Dataset.from_list(rows),
                eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
                processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
        got = batching.effective_mode(trainer)
        if got != mode:  # e.g. Unsloth refusing packing for this model
            raise MGError(f"batching={mode} was asked for, but the {backend} trainer turned it into {got}",
                          hint="use --batching padded (or auto)")
        if len(trainer.train_dataset) == 0:  # TRL drops examples cut before their answer
            raise no_answer_left(len(rows), cfg.max_seq_length)
        return trainer

    def before_training(self, model, tokenizer, train_data, eval_data) -> None:
        """Metric ``truncated_share``: the share of training records longer than max_seq_length; a
        warning above :data:`~mg_mlflow.data.stats.TRUNCATION_WARN_SHARE`."""
        import warnings

        import mlflow

        share = truncated_share(tokenizer, train_data.records, self.cfg.max_seq_length)
        mlflow.log_metric("truncated_share", share)
        warning = truncation_warning(share, self.cfg.max_seq_length, "max_seq_length")
        if warning:
            warnings.warn(warning, UserWarning, stacklevel=2)

    def after_training(self, model, tokenizer, output_dir: Path) -> dict[str, float]:
        inference_attention(model)  # the probe and the reloaded copies run the same attention
        return {}

    def probe(self, tokenizer, train_data, eval_data) -> dict:
        return text_probe(tokenizer)

    def auto_cls(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def log_model(self, model_dir: Path):
        return log_text_model(model_dir)

    def meta(self, model) -> dict:
        return {}

