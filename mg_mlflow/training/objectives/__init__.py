"""Training objectives of the text path (:mod:`mg_mlflow.training.objectives.base` says what one is)."""

from mg_mlflow.training.objectives.base import Objective
from mg_mlflow.training.objectives.grpo import GRPO
from mg_mlflow.training.objectives.preference import DPO, KTO, ORPO, SimPO
from mg_mlflow.training.objectives.reward import Reward
from mg_mlflow.training.objectives.sft import SFT

OBJECTIVES: dict[str, type[Objective]] = {o.name: o for o in (SFT, DPO, KTO, ORPO, SimPO, GRPO, Reward)}


def objective_for(cfg) -> Objective:
    """The strategy for ``cfg.objective``."""
    return OBJECTIVES[cfg.objective](cfg)


__all__ = ["OBJECTIVES", "Objective", "objective_for", "SFT", "DPO", "KTO", "ORPO", "SimPO", "GRPO",
           "Reward"]
