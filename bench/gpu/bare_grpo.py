"""Baseline without Model Garden: the same GRPO run with TRL's ``GRPOTrainer`` (and Unsloth, as its notebooks do).

Same model folder, prompts (JSONL with a ``prompt`` column), reward (``length``: ``-|chars - target| / target``,
the formula of Model Garden's built-in), batch, group size, completion length, LoRA settings and generation
engine as the platform run: on CUDA with vllm, TRL's vLLM in colocate mode (``--backend hf``) or Unsloth's fast
inference (``--backend unsloth``: ``fast_inference=True``, TRL's trainer patched by Unsloth to use its engine);
``model.generate`` otherwise. No MLflow, no carbon. Timed by ``grpo_meter.py`` (the platform run's meter too).

    python bench/gpu/bare_grpo.py --backend hf --model DIR --data prompts.jsonl --steps 30 --out bare.json
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bare_lora  # beside this script


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16, help="completions per step (per_device_train_batch_size)")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=256)
    p.add_argument("--target", type=int, default=64, help="the length reward's target, in characters")
    p.add_argument("--seq", type=int, default=1024, help="Unsloth's max_seq_length")
    p.add_argument("--generation", choices=["auto", "vllm", "generate"], default="auto")
    p.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.0, help="0: the library's default")
    bare_lora.add_arguments(p, "prompts JSONL (a prompt column)", lr=1e-5, gc=False, warmup=10)
    return p.parse_args(argv)


def make_reward(target: int):
    def length(completions, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
        return [-abs(len(t.strip()) - target) / target for t in texts]

    return length


def main(argv=None) -> dict:
    a = parse(argv)
    if a.backend == "unsloth":
        os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
        from unsloth import FastLanguageModel  # before transformers / trl / peft
    import grpo_meter
    import torch
    from datasets import load_dataset
    from trl import GRPOConfig, GRPOTrainer

    cuda = torch.cuda.is_available()
    vllm = a.generation == "vllm" or (a.generation == "auto" and cuda and importlib.util.find_spec("vllm") is not None)
    ds = load_dataset("json", data_files=a.data, split="train")
    peft_config = None
    t_load = time.perf_counter()
    share = {"gpu_memory_utilization": a.vllm_gpu_memory_utilization} if a.vllm_gpu_memory_utilization else {}
    if a.backend == "unsloth":
        fast = {"fast_inference": True, "max_lora_rank": a.lora_r, **share} if vllm else {}
        model, tok = FastLanguageModel.from_pretrained(a.model, max_seq_length=a.seq, dtype=None, load_in_4bit=False,
                                                       random_state=a.seed, **fast)
        model = bare_lora.unsloth_adapter(model, a, gradient_checkpointing=False)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16 if cuda else torch.float32)
        tok = AutoTokenizer.from_pretrained(a.model)
        peft_config = bare_lora.peft_config(a)
    load_seconds = time.perf_counter() - t_load
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    vllm_kw = {"use_vllm": True, "vllm_mode": "colocate"} if vllm else {"use_vllm": False}
    if vllm and a.vllm_gpu_memory_utilization:
        vllm_kw["vllm_gpu_memory_utilization"] = a.vllm_gpu_memory_utilization
    cfg = GRPOConfig(output_dir=f"/tmp/bare-grpo-{os.getpid()}", max_steps=a.steps, per_device_train_batch_size=a.batch,
                     gradient_accumulation_steps=1, learning_rate=a.lr, seed=a.seed, data_seed=a.seed, bf16=cuda,
                     use_cpu=not cuda, num_generations=a.num_generations,
                     max_completion_length=a.max_completion_length, temperature=1.0, beta=0.0, loss_type="dapo",
                     epsilon=0.2, scale_rewards="group", logging_steps=a.steps, report_to="none", save_strategy="no",
                     gradient_checkpointing=False,  # GRPOConfig's default is on; the platform run has it off
                     disable_tqdm=True, log_completions=False, **vllm_kw)
    trainer = GRPOTrainer(model=model, reward_funcs=[make_reward(a.target)], args=cfg, train_dataset=ds,
                          processing_class=tok, peft_config=peft_config)
    meter = grpo_meter.attach(trainer, a.warmup)
    timed = bare_lora.train_timed(trainer, last="reward")
    result = {"variant": f"bare-{a.backend}", "backend": a.backend, "steps": a.steps, "batch": a.batch,
              "num_generations": a.num_generations, "max_completion_length": a.max_completion_length,
              "generation": "vllm" if vllm else "generate", "load_seconds": load_seconds, **timed,
              **meter.result()}
    grpo_meter.write(a.out, result)
    return result


if __name__ == "__main__":
    main()
