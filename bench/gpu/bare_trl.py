"""Baseline without Model Garden: the same LoRA fine-tune with the bare libraries, timed per step.

`--backend hf`: transformers + peft + trl SFTTrainer; `--backend unsloth`: FastLanguageModel +
SFTTrainer, as Unsloth's own notebooks do it. Same model folder, data, batch, sequence length and
LoRA settings as bench_train.py, no MLflow, no carbon. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=["hf", "unsloth"], default="hf")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--gc", action="store_true", help="gradient checkpointing")
    a = p.parse_args()
    if a.backend == "unsloth":
        from unsloth import FastLanguageModel
    import torch
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    def to_pc(r):
        user = r["instruction"] + "\n" + r["input"]
        return {"prompt": [{"role": "user", "content": user}],
                "completion": [{"role": "assistant", "content": r["output"]}]}

    ds = load_dataset("json", data_files=a.data, split="train").map(to_pc, remove_columns=["instruction", "input", "output"])
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_config = None
    if a.backend == "unsloth":
        model, tok = FastLanguageModel.from_pretrained(a.model, max_seq_length=a.seq, dtype=None, load_in_4bit=False)
        model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, target_modules=targets,
                                                 use_gradient_checkpointing="unsloth" if a.gc else False)
    else:
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16, attn_implementation="sdpa")
        tok = AutoTokenizer.from_pretrained(a.model)
        peft_config = LoraConfig(r=16, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")

    class Timer(TrainerCallback):
        ends: list[float] = []

        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    cfg = SFTConfig(output_dir="/tmp/bare-out", max_steps=a.steps, per_device_train_batch_size=a.batch,
                    learning_rate=2e-4, bf16=True, max_length=a.seq, logging_steps=a.steps, report_to="none",
                    save_strategy="no", gradient_checkpointing=a.gc and a.backend == "hf", disable_tqdm=True,
                    include_num_input_tokens_seen="non_padding")
    timer = Timer()
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_config,
                         callbacks=[timer])
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    ends = timer.ends[3:]
    step = statistics.median(b - x for x, b in zip(ends, ends[1:]))
    tokens = trainer.state.num_input_tokens_seen
    print(json.dumps({"variant": f"bare-{a.backend}{'-gc' if a.gc else ''}", "step_time_median_s": step,
                      "tok_s_steady": tokens / a.steps / step, "train_seconds": total,
                      "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30}))


if __name__ == "__main__":
    main()
