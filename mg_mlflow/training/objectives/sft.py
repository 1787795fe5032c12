"""``sft``: supervised fine-tuning on conversations with TRL's ``SFTTrainer`` (batching modes included).

The records are tokenized before any run exists (:meth:`SFT.prepare`), through the base model's chat
template with the role-based loss mask (:mod:`mg_mlflow.data.chat_tokens`): the trainer gets
``input_ids`` and ``labels`` (-100 where a position is not trained).
"""

from __future__ import annotations

from pathlib import Path

from mg_mlflow.config import TrainConfig
from mg_mlflow.data.chat_tokens import profile, tokenize_dataset
from mg_mlflow.data.load import load_dataset_records, split_eval
from mg_mlflow.data.preference import check_shape
from mg_mlflow.data.stats import load_tokenizer
from mg_mlflow.errors import MGError
from mg_mlflow.tracking.datasets import log_dataset_profile
from mg_mlflow.training import batching, distributed
from mg_mlflow.training.common import no_answer_left, trainer_kwargs
from mg_mlflow.training.objectives.base import Objective


def load_data(cfg: TrainConfig):
    """Load and validate train/eval data before any model is loaded (fails fast with file:line); a
    preference file is refused naming the objective that trains on it."""
    check_shape(cfg.dataset, "sft", cfg.columns, cfg.ignore_columns)
    train = load_dataset_records(cfg.dataset, cfg.dataset_format, cfg.dataset_split, cfg.columns,
                                 cfg.ignore_columns)
    if cfg.eval_dataset:
        check_shape(cfg.eval_dataset, "sft", cfg.columns, cfg.ignore_columns)
        return train, load_dataset_records(cfg.eval_dataset, cfg.dataset_format, "validation", cfg.columns,
                                           cfg.ignore_columns)
    return split_eval(train, cfg.eval_split, cfg.seed)


def token_rows(cfg: TrainConfig, tokenizer, data, base: str) -> list[dict]:
    """The records of ``data`` as trainer rows: ``input_ids`` and ``labels`` (-100 where the role-based
    mask is 0). TRL's SFTTrainer takes a labels column as is, truncates it and drops the examples left
    with no label; a backend that patches the trainer (Unsloth) honours labels too."""
    rows = tokenize_dataset(tokenizer, data, base, cfg.train_on_responses_only, cfg.train_on_tool_calls)
    return [labelled(r) for r in rows]


def labelled(row: dict) -> dict:
    return {"input_ids": row["input_ids"],
            "labels": [t if m else -100 for t, m in zip(row["input_ids"], row["assistant_masks"])]}


def sft_config(cfg: TrainConfig, output_dir: Path, has_eval: bool, backend: str, mode: str | None = None):
    """TRL's ``SFTConfig`` for the run, batching included (``mode``: the resolved batching, else
    resolved here by :func:`mg_mlflow.training.batching.resolve_batching`)."""
    from trl import SFTConfig

    mode = mode or batching.resolve_batching(cfg, backend)
    return SFTConfig(
        **trainer_kwargs(cfg, output_dir, has_eval, backend),
        max_length=cfg.max_seq_length, **batching.sft_kwargs(mode, backend),
        dataset_num_proc=None,  # the rows come tokenized, with their labels (token_rows)
        pad_to_multiple_of=batching.resolve_pad_multiple(cfg, mode)[0] or None,
    )


class SFT(Objective):
    """Imitate the answers: TRL's ``SFTTrainer`` on chat/instruction records."""

    name, label = "sft", "SFT"
    trainer_class = ("trl", "SFTTrainer")

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.rows_by_context: dict[str, list[dict]] = {}

    def load_data(self):
        return load_data(self.cfg)

    def prepare(self, base: str, revision: str | None, train_data, eval_data) -> None:
        """Tokenize every record through the base model's chat template with the role-based loss mask,
        before any run exists: a template that cannot render the data, or a dataset that max_seq_length
        leaves with no trained token, fails here. The profiles are logged with the dataset inputs. A hub
        model whose tokenizer cannot be fetched is left to the model load, inside the run, which records
        the error."""
        try:
            tokenizer = load_tokenizer(base, "base_model", revision)
        except MGError:
            if Path(base).is_dir():
                raise
            return
        self.tokenize(tokenizer, train_data, eval_data)

    def tokenize(self, tokenizer, train_data, eval_data) -> None:
        cfg = self.cfg
        for context, data in (("training", train_data), ("evaluation", eval_data)):
            if data is not None:
                rows = tokenize_dataset(tokenizer, data, cfg.base_model, cfg.train_on_responses_only,
                                        cfg.train_on_tool_calls)
                self.profiles[context] = profile(data, rows, cfg.max_seq_length)
                self.rows_by_context[context] = [labelled(r) for r in rows]
        if self.profiles["training"].get("no_trained_token") == len(train_data):
            raise no_answer_left(len(train_data), cfg.max_seq_length)

    def trainer(self, model, tokenizer, peft_config, output_dir: Path, backend: str, train_data, eval_data,
                callbacks: list, ref_model=None):
        from datasets import Dataset
        from trl import SFTTrainer

        cfg = self.cfg
        mode = batching.resolve_batching(cfg, backend)  # the mode logged as batching_resolved
        batching.check_boundaries(model, mode, backend)
        if "training" not in self.rows_by_context:  # not tokenized before the run (see prepare)
            import mlflow

            self.tokenize(tokenizer, train_data, eval_data)
            if distributed.is_main() and mlflow.active_run() is not None:  # never start a run here
                for context, data in (("training", train_data), ("evaluation", eval_data)):
                    if data is not None:
                        log_dataset_profile(data, context, self.profiles[context])
        rows, eval_rows = self.rows_by_context["training"], self.rows_by_context.get("evaluation")
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
        flat = batching.unsloth_flat_attention(mode, backend)
        if flat:
            import mlflow

            if mlflow.active_run():  # rank 0 only
                mlflow.set_tag("mg.flat_attention", flat)
        if len(trainer.train_dataset) == 0:  # TRL drops examples cut before their answer
            raise no_answer_left(len(rows), cfg.max_seq_length)
        return trainer
