"""The LoRA of the bare baselines (`bare_trl.py`, `bare_dpo.py`, `bare_grpo.py`), set up once.

Both backends get the same adapter: rank `a.lora_r`, alpha `a.lora_alpha`, no dropout, no bias, on the seven
projections of a Llama block (`all-linear` for peft, named for Unsloth, which takes no `all-linear`).
"""

from __future__ import annotations

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


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
