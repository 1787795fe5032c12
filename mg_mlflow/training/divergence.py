"""A diverged training (a NaN/inf loss or gradient norm) is recorded as one, never as a good run.

transformers' Trainer replaces a NaN/inf step loss by the running average of the logging window
(``logging_nan_inf_filter``), which at ``logging_steps=1`` is 0: a run whose weights turned to NaN
would log ``loss=0`` and look converged. The training path switches that filter off (the loss is
logged as the NaN it is) and carries a :class:`DivergenceGuard` on every rank: the first non-finite
``loss`` or ``grad_norm`` it sees ends the training there (``on_divergence=stop``, the default) or
is only remembered (``continue``); either way the run then fails with :meth:`DivergenceGuard.error`
and nothing is registered.

The values it checks are the ones every rank holds the same (the Trainer's log, and the per-step
losses :mod:`mg_mlflow.training.step_stats` all-reduces), so every rank stops at the same step. On a
GPU those losses are read back every ``metrics_sync_steps`` steps: the divergence is then found up to
that many steps after it happened.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback

from mg_mlflow.errors import MGError

CHECKED = ("loss", "grad_norm")


class DivergenceGuard(TrainerCallback):
    """Watch ``loss``/``grad_norm``; ``policy``: ``stop`` or ``continue``; ``every``: steps between
    reads of the loss from the device (1 = each step's loss is known at that step)."""

    def __init__(self, policy: str = "stop", every: int = 1):
        self.policy, self.every = policy, every
        self.step: int | None = None  # the first step with a non-finite value
        self.key, self.value = "", 0.0
        self.found_at: int | None = None  # the step at which it was read (later on a GPU)
        self.exact = True

    @property
    def diverged(self) -> bool:
        return self.step is not None

    @property
    def should_stop(self) -> bool:
        return self.diverged and self.policy == "stop"

    def check(self, step: int, metrics: dict, now: int | None = None, exact: bool = True) -> None:
        """Remember the first non-finite ``loss``/``grad_norm`` of ``metrics`` (logged at ``step``,
        read at ``now``; ``exact``: the value belongs to that step alone)."""
        if self.diverged:
            return
        for key in CHECKED:
            value = metrics.get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                self.step, self.key, self.value = int(step), key, float(value)
                self.found_at, self.exact = int(step if now is None else now), exact
                return

    def on_log(self, args, state, control, logs=None, **kwargs):
        # the Trainer's loss here is the mean of the logging window; its grad_norm the last step's
        self.check(int(state.global_step), dict(logs or {}), exact=args.logging_steps == 1 and self.every == 1)
        if self.should_stop:
            control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.should_stop:
            control.should_training_stop = True

    def where(self) -> str:
        if not self.exact:
            return f"at or before step {self.found_at}"
        return f"at step {self.step}" + (f" (found at step {self.found_at})" if self.found_at != self.step else "")

    def error(self) -> MGError:
        how = ("" if self.policy == "stop" else
               "; on_divergence=continue trained on to the end, and a model with non-finite weights is "
               "never registered")
        late = ("" if self.every == 1 else
                f" (on this device the loss is read back every {self.every} steps: --metrics-sync-steps)")
        return MGError(f"training diverged {self.where()} ({self.key} {self.value}){late}{how}; the run is "
                       "marked FAILED and nothing was registered",
                       hint="lower the learning rate (--learning-rate), add warmup (--warmup-steps), or check "
                            "the data for extreme examples")


def install(trainer, cfg, every: int) -> DivergenceGuard:
    """A guard for ``trainer`` (on every rank), with the policy of ``cfg.on_divergence``."""
    guard = DivergenceGuard(cfg.on_divergence, every)
    trainer.add_callback(guard)
    return guard
