"""The preference objectives: DPO (and its loss variants), KTO, ORPO and SimPO, each a TRL trainer.

Pairs (``prompt``/``chosen``/``rejected``) train DPO, ORPO and SimPO; unpaired labelled answers train
KTO (:mod:`mg_mlflow.data.preference`). DPO and KTO hold the policy to a frozen reference: with LoRA
it costs no second copy (TRL computes it with the adapter switched off, or with the frozen ``ref`` copy
of a registered adapter being continued); full fine-tuning loads it explicitly
(:meth:`mg_mlflow.training.text.TextModality.reference_model`). ORPO and SimPO need none. In TRL 1.16,
ORPO and CPO (SimPO is CPO with ``loss_type="simpo"``) live under ``trl.experimental``.
"""

from __future__ import annotations

from mg_mlflow.training.objectives.base import Objective

PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected")


def count_pair_tokens(trainer) -> None:
    """tokens/s for TRL's experimental ORPO and CPO trainers: their batches hold ``chosen_*`` and
    ``rejected_*`` rows (prompt + answer each) and no ``input_ids``, which transformers counts; count
    the non-padding tokens of both, as DPO's stacked rows are counted."""
    def track(inputs):
        if trainer.args.include_num_input_tokens_seen == "no":
            return
        import torch

        seen = sum(inputs[k].sum() for k in ("chosen_attention_mask", "rejected_attention_mask") if k in inputs)
        seen = torch.as_tensor(seen, device=trainer.args.device, dtype=torch.int64)
        trainer.state.num_input_tokens_seen += trainer.accelerator.gather(seen).sum().item()

    trainer._track_num_input_tokens = track


class DPO(Objective):
    """Direct preference optimisation: raise chosen over rejected relative to the reference."""

    name, label = "dpo", "DPO"
    trainer_class = ("trl", "DPOTrainer")
    uses_reference = True
    step_metrics = PAIR_METRICS

    @property
    def loss_type(self) -> str:
        return self.cfg.loss_type or "sigmoid"

    def own_settings(self) -> dict:
        return {"beta": self.cfg.beta, "loss_type": [self.loss_type], "label_smoothing": self.cfg.label_smoothing}

    def params(self) -> dict[str, str]:
        return {"loss_type_resolved": self.loss_type}


class KTO(Objective):
    """Kahneman-Tversky optimisation: unpaired answers labelled desirable or not, against the reference."""

    name, label = "kto", "KTO"
    trainer_class = ("trl", "KTOTrainer")
    uses_reference = True
    step_metrics = ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                    "kl")

    @property
    def loss_type(self) -> str:
        return self.cfg.loss_type or "kto"

    def own_settings(self) -> dict:
        return {"beta": self.cfg.beta, "loss_type": self.loss_type}

    def params(self) -> dict[str, str]:
        return {"loss_type_resolved": self.loss_type}


class ORPO(Objective):
    """Odds-ratio preference optimisation: the SFT loss on chosen plus an odds-ratio term (no reference)."""

    name, label = "orpo", "ORPO"
    trainer_class = ("trl.experimental.orpo", "ORPOTrainer")
    step_metrics = (*PAIR_METRICS, "nll_loss", "log_odds_ratio")

    def own_settings(self) -> dict:
        return {"beta": self.cfg.beta}

    def adapt(self, trainer):
        count_pair_tokens(trainer)
        return trainer

    def params(self) -> dict[str, str]:
        return {"loss_type_resolved": "orpo"}


class SimPO(Objective):
    """SimPO: length-normalised log-probabilities with a target margin, no reference (TRL's CPO trainer)."""

    name, label = "simpo", "SimPO"
    trainer_class = ("trl.experimental.cpo", "CPOTrainer")
    step_metrics = PAIR_METRICS

    def own_settings(self) -> dict:
        # cpo_alpha=0: SimPO alone, without CPO's behaviour-cloning term (trainer_args may set it)
        return {"beta": self.cfg.beta, "loss_type": "simpo", "label_smoothing": self.cfg.label_smoothing,
                **({"cpo_alpha": 0.0} if "cpo_alpha" not in self.cfg.trainer_args else {})}

    def params(self) -> dict[str, str]:
        return {"loss_type_resolved": "simpo"}

    def adapt(self, trainer):
        count_pair_tokens(trainer)
        return trainer
