"""The text modality of the one training path: text records -> the objective's TRL trainer.

:mod:`mg_mlflow.training.recipe` holds the skeleton (data -> backend -> MLflow run -> train -> save
-> verify -> register); this strategy says what is text-specific: what the run starts from
(:mod:`mg_mlflow.training.start`), how the model and tokenizer load (per backend), and what probe
verifies the reload. What is optimised, on which records and with which TRL trainer is the
objective's (:mod:`mg_mlflow.training.objectives`: sft, dpo, kto, orpo, simpo).
"""

from __future__ import annotations

from pathlib import Path

from mg_mlflow.config import TrainConfig
from mg_mlflow.training.backends import hf_load_kwargs, inference_attention, load_model
from mg_mlflow.training.objectives import objective_for
from mg_mlflow.training.objectives.sft import load_data, sft_config, token_rows
from mg_mlflow.training.start import Start, continue_adapter, plain_start, plan_start

__all__ = ["TextModality", "load_data", "sft_config", "token_rows"]


class TextModality:
    """Text records trained with the objective's TRL trainer (``SFTTrainer`` for sft)."""

    name = "text"
    command = "train"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.objective = objective_for(cfg)
        self.start: Start | None = None

    @property
    def extra_tags(self) -> dict:
        """Version tags: the parent version, when the run started from one."""
        return self.start.version_tags() if self.start is not None else {}

    def run_tags(self) -> dict:
        return self.start.run_tags() if self.start is not None else {}

    def run_params(self) -> dict:
        return self.objective.params()

    def load_data(self):
        return self.objective.load_data()

    def starting_point(self, base: str, revision: str | None) -> tuple[str, str | None]:
        """What from_pretrained loads: the base, or for a registered adapter its base (continue) or
        the merged copy (fresh); decided before any run exists."""
        self.start = plan_start(self.cfg, base, revision)
        return self.start.base, self.start.revision

    def base_reference(self, registers: bool, revision: str | None) -> dict:
        start = self.start or plain_start(self.cfg.base_model, revision, self.cfg.base_model)
        return start.base_reference(self.cfg.base_model, self.name, registers, revision)

    def prepare(self, base: str, revision: str | None, train_data, eval_data) -> None:
        """The objective's work on the records before any run exists (sft: tokenized and masked)."""
        self.objective.prepare(base, revision, train_data, eval_data)

    @property
    def profiles(self) -> dict[str, dict]:
        """Dataset profiles per context, logged with the dataset inputs."""
        return self.objective.profiles

    def load(self, backend: str, base: str, revision: str | None):
        """(model, tokenizer, peft_config): the backend's loader (Unsloth or transformers + peft); a
        registered adapter being continued goes on the model, trainable, instead of a new one."""
        model, tokenizer, peft_config = load_model(backend, self.cfg, base, revision, head=self.objective.head,
                                                   extra=self.objective.load_kwargs(backend))
        if self.start is not None and self.start.adapter is not None:
            return continue_adapter(model, self.start), tokenizer, None
        return model, tokenizer, peft_config

    def reference_model(self, backend: str, base: str, revision: str | None):
        """Full fine-tuning with an objective that keeps a reference: a frozen copy of what training
        starts from, loaded explicitly. None with LoRA (TRL's reference is the adapter switched off,
        or the frozen copy of a continued adapter)."""
        if not self.objective.uses_reference or self.cfg.method != "full":
            return None
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(base, **hf_load_kwargs(self.cfg, revision)).eval()
        for param in ref.parameters():
            param.requires_grad_(False)
        return ref

    def reference_description(self) -> str:
        """The tag ``mg.reference`` of a preference run (empty for sft)."""
        if self.cfg.objective == "sft":
            return ""
        if self.objective.reference_note() is not None:
            return self.objective.reference_note()
        if not self.objective.uses_reference:
            return "none (the objective needs no reference model)"
        if self.cfg.method == "full":
            return "a frozen copy of the starting model, loaded explicitly"
        if self.start is not None and self.start.adapter is not None:
            return f"{self.start.parent}: a frozen copy of the adapter being continued"
        if self.start is not None and self.start.parent:
            return f"{self.start.parent} (the new adapter switched off)"
        return "the base model (the adapter switched off)"

    def trainer(self, model, tokenizer, peft_config, output_dir: Path, backend: str, train_data, eval_data,
                callbacks: list, ref_model=None):
        return self.objective.trainer(model, tokenizer, peft_config, output_dir, backend, train_data, eval_data,
                                      callbacks, ref_model=ref_model)

    def before_training(self, model, tokenizer, train_data, eval_data) -> None:
        pass

    def after_training(self, model, tokenizer, output_dir: Path) -> dict[str, float]:
        inference_attention(model)  # the probe and the reloaded copies run the same attention
        if "ref" in (getattr(model, "peft_config", None) or {}):  # TRL's frozen reference copy is not saved
            model.delete_adapter("ref")
        return self.objective.summary()

    # the reload probe, the class a saved model loads with and how it is logged: the objective's (a causal LM
    # for every objective but reward, whose sequence-classification model scores texts)
    def probe(self, tokenizer, train_data, eval_data) -> dict:
        return self.objective.probe(tokenizer, train_data, eval_data)

    def auto_cls(self):
        return self.objective.auto_cls()

    def log_model(self, model_dir: Path):
        return self.objective.log_model(model_dir)

    def meta(self, model) -> dict:
        out = {"objective": self.cfg.objective, **self.objective.meta()}
        if self.start is not None and self.start.parent:
            out["parent_model"] = self.start.parent
        return out
