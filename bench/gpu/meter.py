"""One way of timing a training run, used for bare TRL/Unsloth and for `model-garden train` alike.

``attach(trainer, warmup)`` adds a callback and wraps the trainer's ``training_step``:

- time: the device is synchronized TWICE only, at the end of optimizer step ``warmup`` and at the
  end of the last step, so the window holds exactly ``max_steps - warmup`` steps of real device work
  and the meter adds no per-step sync of its own (a per-step sync would hide the cost of the ones
  the platform may add: logging, ``include_num_input_tokens_seen``);
- tokens: every micro-batch's real (non-pad) input tokens are added up ON the device, no sync:
  ``attention_mask.sum()`` for padded batches, ``input_ids.numel()`` for padding-free/packed ones
  (one flattened row, no pad); the slots the batches occupied (``input_ids.numel()``) beside them give
  the padding overhead;
- what the trainer really did: its batching (padding_free / packing as the trainer's args and
  collator ended up, after Unsloth's own choices), accumulation and token counting.

Import after Unsloth: nothing here imports transformers before ``attach`` is called.
"""

from __future__ import annotations

import json
import statistics
import time


def _peak_gb():
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Meter:
    def __init__(self, warmup: int = 5):
        self.warmup = warmup
        self.real = None  # device tensor: non-pad tokens of every micro-batch so far
        self.slots = 0  # input_ids.numel() of every micro-batch so far (host int, no sync)
        self.micro = 0
        self.snapshot = None
        self.slots_snapshot = 0
        self.micro_snapshot = 0
        self.t0 = self.t1 = None
        self.step0 = self.step1 = None
        self.ends: list[float] = []
        self.effective: dict = {}
        self.peak_gb = None  # max_memory_allocated at the last step (both sides reset it before train())

    def count(self, inputs) -> None:
        import torch

        ids = inputs.get("input_ids")
        if ids is None:
            return
        mask = inputs.get("attention_mask")
        real = mask.sum() if mask is not None else torch.tensor(ids.numel(), device=ids.device)
        self.real = real.detach().long() if self.real is None else self.real + real.detach().long()
        self.slots += ids.numel()
        self.micro += 1

    def on_step_end(self, state) -> None:
        self.ends.append(time.perf_counter())
        step = int(state.global_step)
        if step == self.warmup or (self.t0 is None and step > self.warmup):
            _sync()
            self.t0, self.step0 = time.perf_counter(), step
            self.snapshot = None if self.real is None else self.real.clone()
            self.slots_snapshot, self.micro_snapshot = self.slots, self.micro
        if state.max_steps and step >= state.max_steps and self.t0 is not None and self.t1 is None:
            _sync()
            self.t1, self.step1 = time.perf_counter(), step
            self.peak_gb = _peak_gb()

    def result(self) -> dict:
        out = {"meter_warmup_steps": self.warmup, **self.effective}
        if self.t0 is None or self.t1 is None or self.step1 <= self.step0:
            return {**out, "meter_error": f"too few steps to time (warm-up {self.warmup})"}
        seconds, steps = self.t1 - self.t0, self.step1 - self.step0
        real = float((self.real - (self.snapshot if self.snapshot is not None else 0)).item())
        slots = self.slots - self.slots_snapshot
        ends = self.ends[self.warmup:]
        host = statistics.median(b - a for a, b in zip(ends, ends[1:])) if len(ends) > 2 else None
        return {**out, "timed_steps": steps, "timed_seconds": seconds, "s_per_step": seconds / steps,
                "tokens_per_s": real / seconds, "tokens_per_step": real / steps,
                "slots_per_step": slots / steps, "pad_fraction": 1 - real / slots if slots else None,
                "micro_batches_per_step": (self.micro - self.micro_snapshot) / steps,
                "host_step_median_s": host, "peak_train_gb": self.peak_gb}


def effective_settings(trainer) -> dict:
    """What the trainer will really do, read back after construction (Unsloth may change it)."""
    args = trainer.args
    collator = getattr(trainer, "data_collator", None)
    return {"eff_padding_free": bool(getattr(args, "padding_free", False) or getattr(collator, "padding_free", False)),
            "eff_packing": bool(getattr(args, "packing", False)),
            "eff_grad_accum": int(args.gradient_accumulation_steps),
            "eff_batch": int(args.per_device_train_batch_size),
            "eff_logging_steps": float(args.logging_steps),
            "eff_tokens_seen": str(getattr(args, "include_num_input_tokens_seen", "")),
            "eff_gradient_checkpointing": bool(args.gradient_checkpointing),
            "eff_trainer_class": type(trainer).__name__,
            # preference trainers: the reference (none: the adapter switched off, or precomputed log-probs)
            "eff_ref_model": type(getattr(trainer, "ref_model", None)).__name__,
            "eff_precompute_ref": bool(getattr(args, "precompute_ref_log_probs", False)),
            "eff_attn": str(getattr(getattr(trainer.model, "config", None), "_attn_implementation", ""))}


def attach(trainer, warmup: int = 5) -> Meter:
    from transformers import TrainerCallback

    meter = Meter(warmup)
    meter.effective = effective_settings(trainer)

    class _Callback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            meter.on_step_end(state)

    step = trainer.training_step

    def training_step(model, inputs, *args, **kwargs):
        meter.count(inputs)
        return step(model, inputs, *args, **kwargs)

    trainer.training_step = training_step
    trainer.add_callback(_Callback())
    return meter


def write(path: str | None, data: dict) -> None:
    text = json.dumps(data, default=str)
    print("METER " + text, flush=True)
    if path:
        with open(path, "w") as fh:
            fh.write(text + "\n")
