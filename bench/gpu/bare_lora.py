"""What the bare baselines (`bare_trl.py`, `bare_dpo.py`, `bare_grpo.py`) share: their LoRA and the timed train.

Both backends get the same adapter: rank `a.lora_r`, alpha `a.lora_alpha`, no dropout, no bias, on the seven
projections of a Llama block (`all-linear` for peft, named for Unsloth, which takes no `all-linear`).
"""

from __future__ import annotations

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def add_arguments(p, data_help: str, lr: float = 2e-4, gc: bool = True, warmup: int = 5) -> None:
    """The options every bare baseline takes: the backend, model and data, the timed window, the adapter, the
    learning rate, the seed, the result file."""
    p.add_argument("--backend", choices=["hf", "unsloth"], default="hf")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=warmup, help="steps before the timed window")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=42)
    if gc:
        p.add_argument("--gc", action="store_true", help="gradient checkpointing")
    p.add_argument("--out", default="")


def unsloth_adapter(model, a, gradient_checkpointing: bool = False):
    """Unsloth's own LoRA on ``model`` (a FastLanguageModel), as its notebooks set it up."""
    from unsloth import FastLanguageModel

    return FastLanguageModel.get_peft_model(model, r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=0.0,
                                            target_modules=TARGETS, bias="none", random_state=a.seed,
                                            use_gradient_checkpointing="unsloth" if gradient_checkpointing else False)


def peft_config(a):
    """The peft ``LoraConfig`` a TRL trainer applies (``peft_config=``)."""
    from peft import LoraConfig

    return LoraConfig(r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM", bias="none")


def train_timed(trainer, last: str = "loss") -> dict:
    """Train with the peak memory counted from the first step: seconds, the last logged ``last`` (the Trainer's
    mean over all steps when logged once at the end) and the peak GiB (None on CPU)."""
    import time

    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    logged = [h[last] for h in trainer.state.log_history if last in h]
    return {"train_seconds": seconds, f"{last}_mean": logged[-1] if logged else None,
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
