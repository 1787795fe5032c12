"""Baseline without Model Garden: the same LoRA/QLoRA fine-tune with the bare libraries.

`--backend hf`: transformers + peft + trl SFTTrainer; `--backend unsloth`: FastLanguageModel +
SFTTrainer, as Unsloth's own notebooks do it. Same model folder, rows (prompt/completion JSONL, written
by bench_data.py with Model Garden's own record conversion, so both sides tokenize identical text),
batch, accumulation, sequence length, LoRA settings and batching as the platform run; no MLflow, no
carbon. Timed by bench/gpu/meter.py (the same meter as the platform runs). Prints one JSON line
(``METER {...}``) and writes it to ``--out``.

    python bench/gpu/bare_trl.py --backend unsloth --model DIR --data rows.jsonl --batching padded \
        --grad-accum 1 --steps 30 --out bare.json

`--grad-accum` is explicit (default 1, the platform's default): Unsloth's SFTConfig otherwise
defaults to 2, which would compare 16-row steps with 8-row ones.
`--attn` (hf): the attention implementation, by default the one Model Garden picks (FlexAttention
for padding-free and packed rows on a GPU, SDPA otherwise).
`--batching`: padded (Unsloth's automatic padding-free switched off: UNSLOTH_PADDING_CHOICE=padded,
UNSLOTH_DISABLE_AUTO_PADDING_FREE=1 and padding_free=False), padding_free (padding_free=True,
UNSLOTH_PADDING_CHOICE=padding_free), packed (TRL's BFD packing,
padding-free with position ids), or default (whatever the library decides). What the trainer really did is read back and recorded (eff_*).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bare_lora  # beside this script

BATCHING = ("padded", "padding_free", "packed", "default")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=["lora", "qlora"], default="lora")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1, help="gradient_accumulation_steps (set explicitly)")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--load-seq", type=int, default=0, help="Unsloth's load-time max_seq_length (default: --seq)")
    p.add_argument("--batching", choices=BATCHING, default="padded")
    p.add_argument("--attn", default="auto",
                   help="hf attn_implementation; auto: flex_attention for padding_free/packed on CUDA "
                        "(Model Garden's rule), sdpa otherwise")
    p.add_argument("--pad-multiple", type=int, default=0, help="SFTConfig pad_to_multiple_of (0 = off)")
    bare_lora.add_arguments(p, "prompt/completion JSONL (bench_data.py writes it)")
    return p.parse_args(argv)


def to_prompt_completion(r: dict) -> dict:
    user = r["instruction"] + ("\n" + r["input"] if (r.get("input") or "").strip() else "")
    return {"prompt": [{"role": "user", "content": user}],
            "completion": [{"role": "assistant", "content": r["output"]}]}


def sft_kwargs(a) -> dict:
    """SFTConfig arguments for the batching mode (TRL 1.15/1.16 names)."""
    kw = {}
    if a.batching == "padded":
        kw["padding_free"] = False
    elif a.batching == "padding_free":
        kw["padding_free"] = True
    elif a.batching == "packed":
        kw.update(packing=True, packing_strategy="bfd")
    return kw


def max_length(a):
    # TRL refuses padding_free without packing when max_length is set (it would not be enforced);
    # the bench rows are already shorter than --seq, so nothing is cut either way
    return None if a.batching == "padding_free" else a.seq


def main(argv=None) -> dict:
    a = parse(argv)
    if a.backend == "unsloth":
        if a.batching == "padded":
            os.environ["UNSLOTH_PADDING_CHOICE"] = "padded"
            os.environ["UNSLOTH_DISABLE_AUTO_PADDING_FREE"] = "1"
        elif a.batching == "padding_free":  # the knob's other value, as the platform sets it
            os.environ["UNSLOTH_PADDING_CHOICE"] = "padding_free"
        os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
        from unsloth import FastLanguageModel  # before transformers / trl / peft
    import torch
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import meter as meter_mod

    cuda = torch.cuda.is_available()
    ds = load_dataset("json", data_files=a.data, split="train")
    if "instruction" in ds.column_names:  # bench_train.py's instruction rows: the conversion Model Garden does
        ds = ds.map(to_prompt_completion, remove_columns=ds.column_names)
    peft_config = None
    t_load = time.perf_counter()
    if a.backend == "unsloth":
        model, tok = FastLanguageModel.from_pretrained(a.model, max_seq_length=a.load_seq or a.seq, dtype=None,
                                                       load_in_4bit=a.method == "qlora", random_state=a.seed)
        model = bare_lora.unsloth_adapter(model, a, gradient_checkpointing=a.gc)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"dtype": torch.bfloat16 if cuda else torch.float32}
        if cuda:
            flat = a.batching in ("padding_free", "packed")
            kwargs["attn_implementation"] = a.attn if a.attn != "auto" else "flex_attention" if flat else "sdpa"
        if a.method == "qlora":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(a.model, **kwargs)
        tok = AutoTokenizer.from_pretrained(a.model)
        if a.method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=a.gc)
        peft_config = bare_lora.peft_config(a)
    load_seconds = time.perf_counter() - t_load
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = SFTConfig(output_dir=f"/tmp/bare-out-{os.getpid()}", max_steps=a.steps, per_device_train_batch_size=a.batch,
                    gradient_accumulation_steps=a.grad_accum, learning_rate=a.lr, seed=a.seed, data_seed=a.seed,
                    bf16=cuda, max_length=max_length(a), logging_steps=a.steps, report_to="none",
                    save_strategy="no", gradient_checkpointing=a.gc and a.backend == "hf", disable_tqdm=True,
                    use_cpu=not cuda, dataset_num_proc=None, pad_to_multiple_of=a.pad_multiple or None,
                    **sft_kwargs(a))
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_config)
    meter = meter_mod.attach(trainer, a.warmup)
    timed = bare_lora.train_timed(trainer)
    result = {"variant": f"bare-{a.backend}", "backend": a.backend, "method": a.method, "batching": a.batching,
              "grad_accum": a.grad_accum, "batch": a.batch, "steps": a.steps, "seq": a.seq,
              "load_seq": a.load_seq or a.seq, "gradient_checkpointing": a.gc, "load_seconds": load_seconds,
              **timed,
              "unsloth_env": {k: v for k, v in os.environ.items() if k.startswith("UNSLOTH_")},
              **meter.result()}
    meter_mod.write(a.out, result)
    return result


if __name__ == "__main__":
    main()
