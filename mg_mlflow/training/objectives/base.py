"""The objective strategy of the text path: what a run optimises, with which TRL trainer, on what data.

An objective is small: its TRL trainer and settings classes, the data shape it trains on (how its
records load and become TRL rows), its own settings (beta, loss_type, ...), the per-step metrics it
logs and whether it keeps a reference model. Everything else (data checked before any run, one MLflow
run, the same callbacks, verification before registration, carbon, resume, sweeps, jobs) is the
skeleton's (:mod:`mg_mlflow.training.recipe`), written once. The reload probe is the text probe for
every objective; what is registered is a causal LM, except for an objective whose ``head`` says otherwise
(``reward``: a sequence-classification model), which also says how it is loaded and logged.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

from mg_mlflow.config import OBJECTIVE_SETTINGS, TrainConfig
from mg_mlflow.data.load import split_eval
from mg_mlflow.data.preference import NEEDS, check_both_labels, check_shape, load_preference_records
from mg_mlflow.registry.publish import log_text_model, text_probe
from mg_mlflow.training.common import trainer_kwargs


def load_class(where: tuple[str, str]) -> type:
    module, name = where
    return getattr(importlib.import_module(module), name)


class Objective:
    """One training objective (subclasses set the class attributes and, where needed, ``own_settings``)."""

    name = ""                       # the config value: sft, dpo, ...
    label = ""                      # for people: "DPO"
    trainer_class: tuple[str, str] = ("", "")  # (module, class) of the TRL trainer
    uses_reference = False          # keeps a frozen reference model (implicit with LoRA)
    step_metrics: tuple[str, ...] = ()  # what it logs per step besides loss, learning_rate, grad_norm
    head = "causal-lm"              # what is trained and registered (reward: sequence-classification)

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.profiles: dict[str, dict] = {}  # per context (training, evaluation): logged with the dataset inputs

    def prepare(self, base: str, revision: str | None, train_data, eval_data) -> None:
        """Work on the records that needs the base model's tokenizer, before any run exists (sft:
        tokenize and mask them)."""

    @property
    def shape(self) -> str:
        """The data shape it trains on (:data:`mg_mlflow.data.preference.NEEDS`)."""
        return NEEDS[self.name]

    @property
    def settings_class(self) -> tuple[str, str]:
        return OBJECTIVE_SETTINGS[self.name]

    def load_records(self, source: str, split: str):
        data = load_preference_records(source, self.shape, split, self.cfg.columns, self.cfg.ignore_columns)
        check_both_labels(data)
        return data

    def load_data(self):
        """(train, eval) records, validated (file:line) before any model; a file of another shape is
        refused naming the shape this objective needs."""
        cfg = self.cfg
        check_shape(cfg.dataset, self.name, cfg.columns, cfg.ignore_columns)
        train = self.load_records(cfg.dataset, cfg.dataset_split)
        if cfg.eval_dataset:
            check_shape(cfg.eval_dataset, self.name, cfg.columns, cfg.ignore_columns)
            return train, self.load_records(cfg.eval_dataset, "validation")
        return split_eval(train, cfg.eval_split, cfg.seed)

    def rows(self, records: list[dict]) -> list[dict]:
        """Records -> the rows the TRL trainer takes (preference records already are TRL's form)."""
        return [dict(r) for r in records]

    def own_settings(self) -> dict:
        """The objective's settings (beta, loss_type, ...) in the settings class's names."""
        return {}

    def load_kwargs(self, backend: str) -> dict:
        """Extra ``from_pretrained`` settings of the backend's loader the objective needs (grpo on Unsloth:
        fast inference)."""
        return {}

    def params(self) -> dict[str, str]:
        """What the run logs about its objective beyond the config (e.g. the loss it resolved to)."""
        return {}

    def settings(self, output_dir: Path, has_eval: bool, backend: str):
        """The TRL settings instance: the shared TrainingArguments, max_length, then the objective's own."""
        cls = load_class(self.settings_class)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {**trainer_kwargs(self.cfg, output_dir, has_eval, backend), "max_length": self.cfg.max_seq_length,
                  **self.own_settings()}
        if "dataset_num_proc" in names:
            kwargs["dataset_num_proc"] = None
        return cls(**kwargs)

    def trainer(self, model, tokenizer, peft_config, output_dir: Path, backend: str, train_data, eval_data,
                callbacks: list, ref_model=None):
        from datasets import Dataset

        cls = load_class(self.trainer_class)
        kwargs = dict(model=model, args=self.settings(output_dir, eval_data is not None, backend),
                      train_dataset=Dataset.from_list(self.rows(train_data.records)),
                      eval_dataset=Dataset.from_list(self.rows(eval_data.records)) if eval_data else None,
                      processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
        if self.uses_reference:
            kwargs["ref_model"] = ref_model
        return self.adapt(cls(**kwargs))

    def adapt(self, trainer):
        """The trainer as built, adjusted where the objective's TRL trainer needs it."""
        return trainer

    # ---- what is registered: a causal LM (the text probe, the text pyfunc) unless the objective says otherwise

    def auto_cls(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def probe(self, tokenizer, train_data, eval_data) -> dict:
        return text_probe(tokenizer)

    def log_model(self, model_dir: Path):
        return log_text_model(model_dir)

    def meta(self) -> dict:
        """Extra lineage for ``mg_model.json`` (e.g. the head of a reward model)."""
        return {}

    def reference_note(self) -> str | None:
        """What the reference model is, for an objective whose trainer keeps its own (None: the skeleton's rule)."""
        return None

    def summary(self) -> dict[str, float]:
        """Summary metrics of the objective after training (e.g. held-out pairwise accuracy, time shares)."""
        return {}
