"""GPU training benchmark: `model-garden train` itself, unsloth vs hf, LoRA vs QLoRA, tracking on vs off.

Runs on the borrowed NVIDIA machine (see bench/gpu/README.md for the calls). Each variant is a fresh
`python -m mg_mlflow train` process (Unsloth patches libraries at import, so backends must not share
a process) on a random-init model of a real architecture and a synthetic dataset, offline. Results
are read back from the MLflow store the runs wrote, printed as a table, and written to OUT:
results.json, results.md, mlflow_runs.json (the store's runs exported as JSON).

    python bench/gpu/bench_train.py --out $OUT --size 1b --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIZES = {  # Llama-3.2-1B and Llama-3.1-8B shapes
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=1024, tie_word_embeddings=False),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}
VARIANTS = {
    "hf-lora": ("hf", "lora", True), "unsloth-lora": ("unsloth", "lora", True),
    "hf-qlora": ("hf", "qlora", True), "unsloth-qlora": ("unsloth", "qlora", True),
    "hf-lora-untracked": ("hf", "lora", False), "unsloth-lora-untracked": ("unsloth", "lora", False),
}
GC = True  # gradient checkpointing in every variant (--no-gc turns it off)


def build_model(size: str, out: Path) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from mg_mlflow.dev.tiny import build_tokenizer

    if (out / "config.json").is_file():
        return out
    tok = build_tokenizer(1024)
    shape = SIZES[size]
    cfg = LlamaConfig(**shape, head_dim=shape["hidden_size"] // shape["num_attention_heads"],
                      max_position_embeddings=4096, rope_theta=500000.0, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model.to(torch.bfloat16 if device == "cuda" else torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    return out


def build_data(path: Path, rows: int, words_in: int, words_out: int) -> Path:
    from mg_mlflow.data.sample import _ANIMALS, _COLOURS, _WORDS

    vocab = _WORDS + _ANIMALS + _COLOURS + ["the", "and", "is", "a", "of", "to", "in", "it"]
    rng = random.Random(0)
    with path.open("w") as fh:
        for _ in range(rows):
            text = " ".join(rng.choice(vocab) for _ in range(words_in))
            answer = " ".join(rng.choice(vocab) for _ in range(words_out))
            fh.write(json.dumps({"instruction": "Summarise the text.", "input": text, "output": answer}) + "\n")
    return path


def run_variant(name: str, model: Path, data: Path, args, env: dict) -> dict:
    backend, method, tracked = VARIANTS[name]
    cmd = [sys.executable, "-m", "mg_mlflow", "train", "--base-model", str(model), "--dataset", str(data),
           "--backend", backend, "--method", method, "--max-steps", str(args.steps),
           "--batch-size", str(args.batch), "--max-seq-length", str(args.seq), "--lora-r", "16",
           "--lora-alpha", "16", "--learning-rate", "2e-4",
           "--gradient-checkpointing" if GC else "--no-gradient-checkpointing",
           "--register-as", "none", "--experiment", f"gpu-bench-{args.size}", "--run-name", name,
           "--no-progress"]
    cmd += ["--logging-steps", "1"] if tracked else ["--logging-steps", str(args.steps), "--no-carbon",
                                                    "--no-system-metrics"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    log = Path(args.out) / f"{name}.log"
    log.write_text(proc.stdout + "\n---- stderr ----\n" + proc.stderr)
    if proc.returncode != 0:
        return {"variant": name, "error": proc.stderr.strip().splitlines()[-1:] or ["?"], "wall_s": wall}
    return {"variant": name, "wall_s": wall, **collect(name, f"gpu-bench-{args.size}", args.steps)}


def run_bare(backend: str, model: Path, data: Path, args, env: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).with_name("bare_trl.py")), "--backend", backend, "--model", str(model),
           "--data", str(data), "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq),
           "--grad-accum", "1", "--batching", "default"]  # accumulation as the platform's; library's batching
    if GC:
        cmd.append("--gc")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (Path(args.out) / f"bare-{backend}.log").write_text(proc.stdout + "\n---- stderr ----\n" + proc.stderr[-20000:])
    lines = [ln.removeprefix("METER ") for ln in proc.stdout.splitlines() if ln.startswith("METER {")]
    if proc.returncode != 0 or not lines:
        return {"variant": f"bare-{backend}", "error": proc.stderr.strip().splitlines()[-1:] or ["?"]}
    row = json.loads(lines[-1])  # bench/gpu/meter.py's figures, in this table's names
    return {**row, "variant": f"bare-{backend}", "tok_s_steady": row.get("tokens_per_s"),
            "step_time_median_s": row.get("s_per_step")}


def collect(run_name: str, experiment: str, steps: int) -> dict:
    import mlflow

    from mg_mlflow import metric_names as mn

    client = mlflow.tracking.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    run = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'",
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    m, t = run.data.metrics, run.data.tags
    tps = [p.value for p in client.get_metric_history(run.info.run_id, "train/tokens_per_second") if p.step > 5]
    return {"run_id": run.info.run_id, "backend": t.get("mg.backend"),
            "tok_s_steady": statistics.median(tps) if tps else None,
            "step_time_median_s": m.get("step_time_median_s"),
            "tok_s_step": (m.get("trained_tokens", 0) / max(m.get("train_steps", steps), 1) / m["step_time_median_s"])
            if m.get("step_time_median_s") else None,
            "tok_s_run": m.get("trained_tokens", 0) / m["train_seconds"] if m.get("train_seconds") else None,
            "s_per_step": m.get("train_seconds", 0) / max(m.get("train_steps", steps), 1),
            "peak_gpu_gb": m.get("peak_gpu_memory_gb"), "loss_first": m.get("train/loss_first"),
            "loss_final": m.get("train/loss_final"), "gpu_power_w": m.get("system/carbon/gpu_power_w", m.get("carbon/gpu_power_w")),
            "emissions_kg": mn.carbon_value(m, mn.EMISSIONS_KG),  # runs log mg (or kg before): in kg
            "carbon_measured": {k: v for k, v in t.items() if k.startswith("mg.carbon")}}


def table(rows: list[dict]) -> str:
    head = ("| variant | tok/s (median step) | tok/s (whole run) | s/step (median) | peak GPU GiB "
            "| loss first -> final | GPU W |")
    lines = [head, "|" + "---|" * 7]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | error: {r['error'][0][:80]} | | | | | |")
            continue
        if r["variant"].startswith("bare"):
            lines.append(f"| {r['variant']} (no Model Garden) | {fmt(r['tok_s_steady'], ',.0f')} | - | "
                         f"{fmt(r['step_time_median_s'], '.3f')} | {fmt(r['peak_gpu_gb'], '.2f')} | - | - |")
            continue
        lines.append(f"| {r['variant']} | {fmt(r['tok_s_step'], ',.0f')} | {fmt(r['tok_s_run'], ',.0f')} | "
                     f"{fmt(r['step_time_median_s'], '.3f')} | {fmt(r['peak_gpu_gb'], '.2f')} | "
                     f"{fmt(r['loss_first'], '.3f')} -> {fmt(r['loss_final'], '.3f')} | {fmt(r['gpu_power_w'], '.0f')} |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[str]:
    by = {r["variant"]: r for r in rows if "error" not in r}
    out = []
    if "bare-hf" in by and "hf-lora-untracked" in by:
        out.append(f"model-garden hf (untracked) vs bare TRL: median step "
                   f"{by['hf-lora-untracked']['step_time_median_s'] / by['bare-hf']['step_time_median_s']:.3f}x")
    if "bare-unsloth" in by and "unsloth-lora-untracked" in by:
        out.append(f"model-garden unsloth (untracked) vs bare Unsloth: median step "
                   f"{by['unsloth-lora-untracked']['step_time_median_s'] / by['bare-unsloth']['step_time_median_s']:.3f}x")
    for a, b, what in (("unsloth-lora", "hf-lora", "unsloth/hf LoRA throughput"),
                       ("unsloth-qlora", "hf-qlora", "unsloth/hf QLoRA throughput"),
                       ("unsloth-lora-untracked", "unsloth-lora", "unsloth untracked/tracked run time"),
                       ("hf-lora-untracked", "hf-lora", "hf untracked/tracked run time")):
        if a in by and b in by:
            if "untracked" in a:
                out.append(f"{what}: median step {by[b]['step_time_median_s'] / by[a]['step_time_median_s']:.3f}x, "
                           f"whole train() {by[b]['s_per_step'] / by[a]['s_per_step']:.3f}x (tracked/untracked)")
            elif by[a].get("step_time_median_s") and by[b].get("step_time_median_s"):
                mem = by[b]["peak_gpu_gb"] / by[a]["peak_gpu_gb"] if by[a]["peak_gpu_gb"] else float("nan")
                out.append(f"{what}: {by[b]['step_time_median_s'] / by[a]['step_time_median_s']:.2f}x faster steps; "
                           f"peak memory hf/unsloth {mem:.2f}x")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/results/gpu"))
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--workdir", default="/tmp/mg-bench")
    parser.add_argument("--no-gc", action="store_true", help="no gradient checkpointing in any variant")
    args = parser.parse_args()
    out, work = Path(args.out), Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MG_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    os.environ.update({k: env[k] for k in ("MG_HOME", "MLFLOW_TRACKING_URI")})
    t0 = time.perf_counter()
    model = build_model(args.size, work / f"llama-{args.size}")
    data = build_data(work / "data.jsonl", args.rows, words_in=250, words_out=70)
    print(f"model + data ready in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    global GC
    GC = not args.no_gc
    for name in args.variants.split(","):
        if name.startswith("bare-"):
            rows.append(run_bare(name.removeprefix("bare-"), model, data, args, env))
        else:
            rows.append(run_variant(name, model, data, args, env))
        print(json.dumps(rows[-1], default=str), flush=True)
    text = table(rows) + "\n\n" + "\n".join(ratios(rows))
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=2, default=str))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from export_runs import export  # the runs as JSON: no database goes into git

    shutil.copy(work / "mlflow.db", out / "mlflow.db")
    export(out / "mlflow.db")
    (out / "mlflow.db").unlink()
    print(text)


if __name__ == "__main__":
    main()
