"""``reward``: a reward model, TRL's ``RewardTrainer`` on preference pairs (the data of dpo/orpo/simpo).

The base gets a score head (sequence classification, one logit) and learns to score the chosen answer above
the rejected one (Bradley-Terry loss); TRL logs ``accuracy``, ``margin`` and ``mean_reward`` per step. What is
registered is that scoring model (LoRA adapter with its head, or merged): ``mg_model.json`` says ``head:
sequence-classification``, the reload probe compares its scores, and the pyfunc returns one score per text.
A registered reward model is a grpo reward by its URI (``--reward models:/NAME@ALIAS``). With an eval set
(``eval_dataset`` or ``eval_split``) the summary has ``eval/pairwise_accuracy``: the share of held-out pairs
whose chosen answer scores higher.
"""

from __future__ import annotations

from pathlib import Path

from mg_mlflow import metric_names as mn
from mg_mlflow.errors import MGError
from mg_mlflow.registry.loader import REWARD_HEAD, RewardHead, reward_scores, reward_text
from mg_mlflow.registry.publish import log_reward_model
from mg_mlflow.training.objectives.base import Objective


class Reward(Objective):
    """Train a reward model on preference pairs."""

    name, label = "reward", "reward model"
    trainer_class = ("trl", "RewardTrainer")
    step_metrics = ("accuracy", "margin", "mean_reward")
    head = REWARD_HEAD

    def __init__(self, cfg):
        super().__init__(cfg)
        self._trainer = self._eval_records = None

    def load_data(self):
        if self.cfg.backend == "unsloth":
            raise MGError("objective reward trains a sequence-classification model, which the unsloth backend "
                          "does not load here", hint="use --backend hf (or auto)")
        self.cfg.backend = "hf"  # auto: the transformers loader, whatever the device
        return super().load_data()

    def trainer(self, model, tokenizer, peft_config, output_dir: Path, backend: str, train_data, eval_data,
                callbacks: list, ref_model=None):
        self._eval_records = eval_data.records if eval_data is not None else None
        self._tokenizer = tokenizer
        self._trainer = super().trainer(model, tokenizer, peft_config, output_dir, backend, train_data, eval_data,
                                        callbacks)
        return self._trainer

    def auto_cls(self):
        return RewardHead

    def log_model(self, model_dir: Path):
        return log_reward_model(model_dir)

    def meta(self) -> dict:
        return {"head": REWARD_HEAD}

    def params(self) -> dict[str, str]:
        return {"head": REWARD_HEAD}

    def summary(self) -> dict[str, float]:
        if not self._eval_records or self._trainer is None:
            return {}
        model, tok = self._trainer.model.eval(), self._tokenizer
        chosen = reward_scores(model, tok, [reward_text(tok, r["prompt"], r["chosen"]) for r in self._eval_records])
        rejected = reward_scores(model, tok, [reward_text(tok, r["prompt"], r["rejected"]) for r in self._eval_records])
        wins = sum(c > r for c, r in zip(chosen, rejected))
        return {mn.trainer_metric("eval_pairwise_accuracy"): wins / len(chosen)}
