"""``sft``: supervised fine-tuning on conversations with TRL's ``SFTTrainer`` (batching modes included)."""

from __future__ import annotations

from pathlib import Path

from mg_mlflow.config import TrainConfig
from mg_mlflow.data.load import load_dataset_records, split_eval, to_trl_rows
from mg_mlflow.data.preference import check_shape
from mg_mlflow.errors import MGError
from mg_mlflow.training import batching
from mg_mlflow.training.common import no_answer_left, trainer_kwargs
from mg_mlflow.training.objectives.base import Objective


def load_data(cfg: TrainConfig):
    """Load and validate train/eval data before any model is loaded (fails fast with file:line); a
    preference file is refused naming the objective that trains on it."""
    check_shape(cfg.dataset, "sft")
    train = load_dataset_records(cfg.dataset, cfg.dataset_format, cfg.dataset_split)
    if cfg.eval_dataset:
        check_shape(cfg.eval_dataset, "sft")
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


class SFT(Objective):
    """Imitate the answers: TRL's ``SFTTrainer`` on chat/instruction records."""

    name, label = "sft", "SFT"
    trainer_class = ("trl", "SFTTrainer")

    def load_data(self):
        return load_data(self.cfg)

    def trainer(self, model, tokenizer, peft_config, output_dir: Path, backend: str, train_data, eval_data,
                callbacks: list, ref_model=None):
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
