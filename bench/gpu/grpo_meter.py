"""One way of timing a GRPO run, for bare ``GRPOTrainer`` and `model-garden train --objective grpo` alike.

``attach(trainer, warmup)`` wraps the trainer's generation method (TRL's ``GRPOTrainer._generate``: the
sampling of every completion, by vLLM or ``model.generate``, weight sync to vLLM included) and adds a callback:

- the window: the device is synchronised at the end of optimizer step ``warmup`` and of the last step, so it
  holds ``max_steps - warmup`` whole steps;
- generation: each call is timed from a device sync before it (the previous step's kernels are not counted
  as generation) to its return (it returns token ids as Python lists: the device is done); the calls inside
  the window give the generation seconds, the completions and their tokens;
- optimisation: the window's seconds minus generation (log-probs, rewards, loss, backward, optimizer step,
  the platform's logging).

Prints and writes the same ``METER {...}`` line as ``meter.py`` (``meter.write``).
"""

from __future__ import annotations

import time

from meter import _sync, write  # noqa: F401 - write is this module's writer too


class GrpoMeter:
    def __init__(self, warmup: int = 5):
        self.warmup = warmup
        self.calls: list[tuple[float, float, int, int]] = []  # (start, end, completions, completion tokens)
        self.t0 = self.t1 = None
        self.step0 = self.step1 = None
        self.effective: dict = {}

    def on_step_end(self, state) -> None:
        step = int(state.global_step)
        if step == self.warmup or (self.t0 is None and step > self.warmup):
            _sync()
            self.t0, self.step0 = time.perf_counter(), step
        if state.max_steps and step >= state.max_steps and self.t0 is not None and self.t1 is None:
            _sync()
            self.t1, self.step1 = time.perf_counter(), step

    def wrap(self, generate):
        def timed(*args, **kwargs):
            _sync()
            started = time.perf_counter()
            out = generate(*args, **kwargs)
            completion_ids = out[1]  # (prompt_ids, completion_ids, ...)
            self.calls.append((started, time.perf_counter(), len(completion_ids),
                               sum(len(c) for c in completion_ids)))
            return out

        return timed

    def result(self) -> dict:
        out = {"meter_warmup_steps": self.warmup, "generation_calls": len(self.calls), **self.effective}
        if self.t0 is None or self.t1 is None or self.step1 <= self.step0:
            return {**out, "meter_error": f"too few steps to time (warm-up {self.warmup})"}
        seconds, steps = self.t1 - self.t0, self.step1 - self.step0
        inside = [c for c in self.calls if c[0] >= self.t0 and c[1] <= self.t1]
        gen = sum(end - start for start, end, _, _ in inside)
        completions, tokens = sum(c[2] for c in inside), sum(c[3] for c in inside)
        return {**out, "timed_steps": steps, "timed_seconds": seconds, "s_per_step": seconds / steps,
                "completions_per_s": completions / seconds, "completion_tokens_per_s": tokens / seconds,
                "generation_tokens_per_s": tokens / gen if gen > 0 else None,
                "completions_per_step": completions / steps, "gen_s_per_step": gen / steps,
                "opt_s_per_step": (seconds - gen) / steps, "generation_share": gen / seconds}


def effective_settings(trainer) -> dict:
    args = trainer.args
    engine = getattr(getattr(trainer, "vllm_generation", None), "llm", None)
    return {"eff_use_vllm": bool(getattr(args, "use_vllm", False)),
            "eff_vllm_mode": str(getattr(args, "vllm_mode", "")) if getattr(args, "use_vllm", False) else "",
            "eff_vllm_gpu_memory_utilization": getattr(args, "vllm_gpu_memory_utilization", None),
            "eff_vllm_engine": type(engine).__name__ if engine is not None else "",
            "eff_num_generations": int(args.num_generations), "eff_batch": int(args.per_device_train_batch_size),
            "eff_max_completion_length": int(args.max_completion_length), "eff_loss_type": str(args.loss_type),
            "eff_beta": float(args.beta), "eff_trainer_class": type(trainer).__name__,
            "eff_args": {k: repr(v) for k, v in sorted(args.to_dict().items())},
            "eff_prompt_format": prompt_format(trainer.train_dataset)}


def prompt_format(dataset) -> str:
    """"conversational" (messages: the chat template applies) or "text" (generated from as it is)."""
    try:
        return "conversational" if isinstance(dataset[0]["prompt"], list) else "text"
    except (TypeError, KeyError, IndexError):
        return "unknown"


def attach(trainer, warmup: int = 5) -> GrpoMeter:
    from transformers import TrainerCallback

    meter = GrpoMeter(warmup)
    meter.effective = effective_settings(trainer)

    class _Callback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            meter.on_step_end(state)

    trainer._generate = meter.wrap(trainer._generate)
    trainer.add_callback(_Callback())
    return meter
