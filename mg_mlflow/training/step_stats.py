"""Per-step loss and token counts kept on the device and read back every N steps.

transformers' Trainer reads the loss (``.item()``) at every logging step and, with
``include_num_input_tokens_seen``, the token count after every micro-batch: each read waits for the
GPU to finish. Steps of small models are bound by how fast Python launches kernels, so a wait per
step costs the launch time of the next one (the measurement is in docs/performance.md).

Here each optimizer step's loss (the sum of its micro-batches' losses, what the Trainer logs at
``logging_steps=1``) and its real (non-pad) input tokens are added up on the device, and read back
in one transfer every ``every`` steps (averaged, and summed, over the ranks of a distributed run,
as the Trainer does). Every step still gets its ``loss`` and ``learning_rate`` point in MLflow;
``grad_norm`` comes from the Trainer's own log, every ``every`` steps. ``every == 1`` is the
Trainer's own path (no wrapper), used on the CPU, where nothing runs ahead of Python.
"""

from __future__ import annotations

import math
import time
from typing import Any

from transformers import TrainerCallback

from mg_mlflow.errors import MGError
from mg_mlflow.training import distributed

GPU_EVERY = 10  # steps between reads on a GPU: one wait per 10 steps (docs/performance.md)


def sync_every(cfg) -> int:
    """``cfg.metrics_sync_steps``, 0 = auto: 1 on the CPU, :data:`GPU_EVERY` on a GPU."""
    if cfg.metrics_sync_steps > 0:
        return cfg.metrics_sync_steps
    import torch

    return GPU_EVERY if torch.cuda.is_available() else 1


PAIR_MASKS = ("chosen_attention_mask", "rejected_attention_mask")  # ORPO/CPO batches: prompt + answer each


def count_tokens(inputs, pad_token_id: int | None):
    """Real input tokens of one micro-batch, as a device tensor (the Trainer's non_padding rule; the
    chosen and rejected rows of a pair batch both count). None for a batch that is not tokens yet
    (GRPO's prompts: its trainer counts prompt + completion tokens itself, summed over the ranks)."""
    if not isinstance(inputs, dict):
        return None
    if "attention_mask" in inputs:
        return inputs["attention_mask"].sum()
    if all(k in inputs for k in PAIR_MASKS):
        return sum(inputs[k].sum() for k in PAIR_MASKS)
    if "input_ids" not in inputs:
        return None
    ids = inputs["input_ids"]
    return (ids != pad_token_id).sum() if pad_token_id is not None else ids.new_tensor(ids.numel())


class DeferredStepStats(TrainerCallback):
    """Collect per-step loss/tokens without waiting for the device; hand them to ``sink`` in batches.

    ``sink.on_steps(points, total_tokens, window_tokens, seconds)`` gets ``[(step, {"loss",
    "learning_rate", "epoch"}), ...]`` and the read window's tokens and seconds on the main rank; every rank takes part in the read (a collective when
    distributed), so every rank must carry this callback.
    """

    def __init__(self, every: int, sink: Any | None = None, guard: Any | None = None):
        self.every, self.sink, self.guard = every, sink, guard
        self._loss = None  # this step's loss so far (device tensor)
        self._tokens = None
        self._rows: list[tuple[int, Any, Any, float, float]] = []
        self._lr = 0.0
        self._pad_id = None
        self._since = time.perf_counter()
        self.total_tokens = 0.0
        self.trainer_counts = False  # the trainer keeps state.num_input_tokens_seen itself (GRPO)

    def attach(self, trainer) -> None:
        """Wrap ``trainer.training_step`` (an instance attribute: Unsloth's loop calls it too)."""
        inner = trainer.training_step
        proc = getattr(trainer, "processing_class", None)
        self._pad_id = getattr(getattr(proc, "tokenizer", proc), "pad_token_id", None)

        import torch

        def training_step(model, inputs, *args, **kwargs):
            loss = inner(model, inputs, *args, **kwargs)
            detached = loss.detach()
            tokens = count_tokens(inputs, self._pad_id)
            if tokens is None:
                self.trainer_counts, tokens = True, detached.new_zeros((), dtype=torch.int64)
            tokens = tokens.to(detached.device)
            self._loss = detached if self._loss is None else self._loss + detached
            self._tokens = tokens if self._tokens is None else self._tokens + tokens
            return loss

        trainer.training_step = training_step

    def on_train_begin(self, args, state, control, **kwargs):
        self._since = time.perf_counter()
        self.total_tokens = float(state.num_input_tokens_seen or 0)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None:  # the rate this step used (the scheduler steps after this)
            self._lr = float(optimizer.param_groups[0]["lr"])

    def on_step_end(self, args, state, control, **kwargs):
        if self._loss is not None:
            self._rows.append((int(state.global_step), self._loss, self._tokens, self._lr, float(state.epoch or 0)))
            self._loss = self._tokens = None
        # also before a checkpoint (its num_input_tokens_seen is then exact) and when a stop was asked
        # for (the flags are set by the callbacks before this one, identically on every rank)
        if (state.global_step % self.every == 0 or (state.max_steps and state.global_step >= state.max_steps)
                or control.should_save or control.should_training_stop):
            self.flush(state)
            if self.guard is not None and self.guard.should_stop:  # the same on every rank (all-reduced)
                control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.flush(state)

    def flush(self, state) -> None:
        """One read of every step collected so far (on every rank at the same steps)."""
        if not self._rows:
            return
        import torch

        rows, self._rows = self._rows, []
        losses = torch.stack([r[1].float().reshape(()) for r in rows])
        tokens = torch.stack([r[2].reshape(()).to(torch.float64) for r in rows])
        world = distributed.world_size()
        if world > 1 and torch.distributed.is_initialized():
            both = torch.cat([losses.to(torch.float64), tokens])
            torch.distributed.all_reduce(both)  # SUM (gloo has no AVG): loss is the mean over ranks
            losses, tokens = (both[:len(rows)] / world).float(), both[len(rows):]
        loss_values, token_values = losses.tolist(), tokens.tolist()
        now = time.perf_counter()
        seconds, self._since = now - self._since, now
        if self.trainer_counts:  # already summed over the ranks, the same on every rank
            window_tokens = float(state.num_input_tokens_seen or 0) - self.total_tokens
        else:
            window_tokens = float(sum(token_values))
        self.total_tokens += window_tokens
        state.num_input_tokens_seen = int(self.total_tokens)  # for the carbon callback's per-token figures
        points = [(step, {"loss": loss, "learning_rate": lr, "epoch": epoch})
                  for (step, _, _, lr, epoch), loss in zip(rows, loss_values)]
        if self.guard is not None:
            for step, metrics in points:
                self.guard.check(step, metrics, now=int(state.global_step))
        if self.sink is not None:
            self.sink.on_steps(points, self.total_tokens, window_tokens, seconds)


def install(trainer, cfg, metrics_cb, guard=None) -> DeferredStepStats | None:
    """On every rank: defer the per-step reads when ``sync_every(cfg) > 1``; ``metrics_cb`` (rank 0's
    MLflow callback, None elsewhere) then takes its per-step points from here, and ``guard`` (a
    :class:`~mg_mlflow.training.divergence.DivergenceGuard`) checks each of them."""
    every = sync_every(cfg)
    if every == 1:
        return None
    stats = DeferredStepStats(every, sink=metrics_cb, guard=guard)
    if metrics_cb is not None:
        metrics_cb.deferred = True
    stats.attach(trainer)
    trainer.add_callback(stats)
    return stats


# ---- divergence: a NaN/inf loss or gradient norm is recorded as one, never as a good run.
# transformers' Trainer replaces a NaN/inf step loss by the running average of the logging window
# (``logging_nan_inf_filter``), which at ``logging_steps=1`` is 0: a run whose weights turned to NaN
# would log ``loss=0`` and look converged. The training path switches that filter off (the loss is
# logged as the NaN it is) and carries a DivergenceGuard on every rank: the first non-finite ``loss``
# or ``grad_norm`` ends the training there (``on_divergence=stop``, the default) or is only remembered
# (``continue``: training goes on, and the model is saved and verified only if its trained weights are
# all finite). A stopped run, or one whose weights are not finite, fails with DivergenceGuard.error()
# and nothing is registered. The values checked are the ones every rank holds the same (the Trainer's
# log, the all-reduced per-step losses above), so every rank stops at the same step; on a GPU the
# losses are read back every ``metrics_sync_steps`` steps, so a divergence is found up to that many
# steps after it happened.

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
        return f"at step {self.step}" if self.exact else f"at or before step {self.found_at}"

    def error(self) -> MGError:
        detail = f"{self.key} {self.value}"
        if self.found_at != self.step:
            detail += f", found at step {self.found_at}"
        if self.every > 1:
            detail += f": the loss is read back from the device every {self.every} steps, --metrics-sync-steps"
        how = ("" if self.policy == "stop" else
               "; on_divergence=continue trained on to the end and the trained weights are not finite")
        return MGError(f"training diverged {self.where()} ({detail}){how}; the run is marked FAILED and nothing "
                       "was registered",
                       hint="lower the learning rate (--learning-rate), add warmup (--warmup-steps), or check "
                            "the data for extreme examples")


def weights_finite(model) -> bool:
    """Whether every trainable weight of ``model`` is finite (the frozen ones cannot have changed)."""
    import torch

    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def install_guard(trainer, cfg) -> DivergenceGuard:
    """A guard for ``trainer`` (on every rank), with the policy of ``cfg.on_divergence``."""
    guard = DivergenceGuard(cfg.on_divergence, sync_every(cfg))
    trainer.add_callback(guard)
    return guard
