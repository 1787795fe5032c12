"""Baseline without Model Garden for the dpo group: TRL's ``DPOTrainer`` with a LoRA adapter.

`--backend hf`: transformers + peft + ``trl.DPOTrainer``; `--backend unsloth`: FastLanguageModel,
``PatchDPOTrainer()`` (a no-op in Unsloth 2026.10: importing Unsloth patches TRL's trainers itself)
and ``trl.DPOTrainer``, as Unsloth's DPO notebooks do it. Same model folder, pairs (``pref.pc.jsonl``,
written by bench_data.py through Model Garden's own normalisation), batch, accumulation, max length,
LoRA settings, beta and loss as the platform run; no MLflow, no carbon. Timed by bench/gpu/meter.py:
every micro-batch holds the prompt + chosen rows and the prompt + rejected rows, and the meter sums
their real (non-pad) tokens.

`--ref implicit` (the default, what Model Garden does with LoRA): no reference model; TRL computes
the reference log-probabilities with the adapter switched off. `--ref model`: a second, frozen copy
of the base model loaded and passed as ``ref_model=`` (hf only): what the implicit reference saves.

    python bench/gpu/bare_dpo.py --backend hf --model DIR --data pref.pc.jsonl --steps 80 --out bare.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bare_lora  # beside this script

HERE = Path(__file__).resolve().parent


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8, help="pairs per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seq", type=int, default=512, help="DPOConfig max_length (prompt + answer)")
    p.add_argument("--ref", choices=["implicit", "model"], default="implicit")
    p.add_argument("--beta", type=float, default=0.1)
    bare_lora.add_arguments(p, "prompt/chosen/rejected JSONL (bench_data.py writes it)")
    a = p.parse_args(argv)
    if a.ref == "model" and a.backend != "hf":
        p.error("--ref model is for --backend hf")
    return a


def main(argv=None) -> dict:
    a = parse(argv)
    if a.backend == "unsloth":
        os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
        from unsloth import (  # before transformers / trl / peft
            FastLanguageModel,
            PatchDPOTrainer,
        )

        PatchDPOTrainer()
    import torch
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer

    sys.path.insert(0, str(HERE))
    import meter as meter_mod

    cuda = torch.cuda.is_available()
    ds = load_dataset("json", data_files=a.data, split="train")
    peft_config, ref_model = None, None
    t_load = time.perf_counter()
    if a.backend == "unsloth":
        model, tok = FastLanguageModel.from_pretrained(a.model, max_seq_length=a.seq, dtype=None,
                                                       load_in_4bit=False, random_state=a.seed)
        model = bare_lora.unsloth_adapter(model, a, gradient_checkpointing=a.gc)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"dtype": torch.bfloat16 if cuda else torch.float32}
        if cuda:
            kwargs["attn_implementation"] = "sdpa"  # Model Garden's choice for padded batches
        model = AutoModelForCausalLM.from_pretrained(a.model, **kwargs)
        tok = AutoTokenizer.from_pretrained(a.model)
        peft_config = bare_lora.peft_config(a)
        if a.ref == "model":
            ref_model = AutoModelForCausalLM.from_pretrained(a.model, **kwargs).eval()
            for param in ref_model.parameters():
                param.requires_grad_(False)
    load_seconds = time.perf_counter() - t_load
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = DPOConfig(output_dir=f"/tmp/bare-dpo-{os.getpid()}", max_steps=a.steps, per_device_train_batch_size=a.batch,
                    gradient_accumulation_steps=a.grad_accum, learning_rate=a.lr, seed=a.seed, data_seed=a.seed,
                    bf16=cuda, max_length=a.seq, beta=a.beta, loss_type=["sigmoid"], logging_steps=a.steps,
                    report_to="none", save_strategy="no", gradient_checkpointing=a.gc and a.backend == "hf",
                    disable_tqdm=True, use_cpu=not cuda, dataset_num_proc=None)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=cfg, train_dataset=ds, processing_class=tok,
                         peft_config=peft_config)
    meter = meter_mod.attach(trainer, a.warmup)
    timed = bare_lora.train_timed(trainer)
    result = {"variant": f"bare-{a.backend}-dpo", "backend": a.backend, "objective": "dpo", "ref": a.ref,
              "batch": a.batch, "grad_accum": a.grad_accum, "steps": a.steps, "seq": a.seq,
              "gradient_checkpointing": a.gc, "load_seconds": load_seconds, **timed, **meter.result()}
    meter_mod.write(a.out, result)
    return result


if __name__ == "__main__":
    main()
