"""The Optuna pruning callback of a sweep trial (a transformers ``TrainerCallback``, so this module
imports transformers at its top: import it inside the function that trains)."""

from __future__ import annotations

from transformers import TrainerCallback


class PruningCallback(TrainerCallback):
    """Report each evaluation's loss to the Optuna trial; stop training when the pruner says so."""

    def __init__(self, trial, metric: str = "eval_loss"):
        self.trial, self.metric = trial, metric
        self.reported: list[tuple[int, float]] = []
        self.pruned_at: int | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.metric)
        if value is None or self.pruned_at is not None:
            return control
        step = int(state.global_step)
        self.trial.report(float(value), step)
        self.reported.append((step, float(value)))
        if self.trial.should_prune():
            self.pruned_at = step
            control.should_training_stop = True
        return control
