"""The variants of bench_parity.py, by group, and the command line each one runs.

A variant is one fresh process (Unsloth patches libraries at import: backends must not share one):
``bare`` = bare_trl.py (no Model Garden), ``mg`` = `model-garden train` through mg_timed.py (the
real CLI plus the meter). Names read ``side-backend-method-shape-batching[-toggle]``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
# rough wall seconds per variant on one H100 (process start, imports, load, 30 steps, save), for the plan;
# calibrated on bench/results/gpu-2026-11-26-run*: model-garden train took 45-61 s (hf), 65-80 s (unsloth)
COST = {("bare", "hf"): 35, ("bare", "unsloth"): 60, ("mg", "hf"): 55, ("mg", "unsloth"): 80}


@dataclass(frozen=True)
class Variant:
    side: str  # bare | mg
    backend: str  # hf | unsloth
    method: str = "lora"  # lora | qlora
    shape: str = "var"  # fixed | var
    batching: str = "padded"  # padded | padded64 | padding_free | packed | default (bare: the library's own choice)
    toggle: str = ""  # attribution: "" (full tracking) | nolog | notok | nosys | nocarbon | loadseq | untracked
    num_gpus: int = 1
    objective: str = "sft"  # sft | dpo (shape "pref": prompt + chosen + rejected)
    ref: str = ""  # dpo: "" = implicit (the adapter switched off) | "model" (bare: a frozen copy as ref_model=)

    @property
    def name(self) -> str:
        if self.objective != "sft":
            ref = f"-ref{self.ref}" if self.ref else ""
            gpus = f"-{self.num_gpus}gpu" if self.num_gpus > 1 else ""
            return f"{self.side}-{self.backend}-{self.method}-{self.objective}{ref}{gpus}"
        base = f"{self.side}-{self.backend}-{self.method}-{self.shape}-{self.batching}"
        if self.toggle:
            base += f"-{self.toggle}"
        if self.num_gpus > 1:
            base += f"-{self.num_gpus}gpu"
        return base

    @property
    def cost_s(self) -> int:
        # dpo: the reference forward and the pair tokenization add ~15 s to the SFT figures
        extra = (20 if self.num_gpus > 1 else 0) + (15 if self.objective != "sft" else 0)
        return COST[(self.side, self.backend)] + extra


TOGGLES = {  # what each attribution variant switches OFF, relative to full tracking
    "nolog": "per-step metric logging (logging_steps = steps instead of 1)",
    "notok": "include_num_input_tokens_seen (a gather + .item() per micro-batch)",
    "nosys": "MLflow system metrics",
    "nocarbon": "codecarbon (NVML power sampling)",
    "loadseq": "load-time max_seq_length = 2048 instead of 512 (a cost ADDED, not removed)",
    "untracked": "all of logging, token counting, system metrics and carbon",
    "sync1": "metrics_sync_steps=1: loss and tokens read from the GPU at every step (the Trainer's own "
             "path; a cost ADDED, not removed)",
}


def dpo_variant(side: str, backend: str, ref: str = "") -> Variant:
    return Variant(side, backend, shape="pref", objective="dpo", ref=ref)


def groups(smoke: bool = False) -> dict[str, list[Variant]]:
    if smoke:  # CPU: the hf plumbing only (bare + platform, both data shapes)
        return {"smoke": [Variant("bare", "hf", shape="var"), Variant("mg", "hf", shape="var")],
                "smoke-toggles": [Variant("mg", "hf", shape="fixed", toggle="notok")],
                "smoke-dpo": [dpo_variant("bare", "hf"), dpo_variant("mg", "hf"), dpo_variant("bare", "hf", "model")]}
    parity = []
    for shape in ("fixed", "var"):
        parity += [Variant("bare", "unsloth", shape=shape), Variant("mg", "unsloth", shape=shape),
                   Variant("bare", "hf", shape=shape), Variant("mg", "hf", shape=shape)]
    batching_u = [Variant("bare", "unsloth", batching="default"),
                  Variant("bare", "unsloth", batching="packed"), Variant("mg", "unsloth", batching="packed"),
                  Variant("bare", "unsloth", batching="padding_free"),
                  Variant("mg", "unsloth", batching="padding_free")]
    batching_h = [Variant("bare", "hf", batching="packed"), Variant("mg", "hf", batching="packed"),
                  Variant("mg", "hf", batching="padding_free")]
    attrib = [Variant("mg", "unsloth")] + [Variant("mg", "unsloth", toggle=t) for t in TOGGLES if t != "sync1"]
    # fixed-length rows: steps of equal work, so a platform cost is not lost in the var rows' noise
    attrib_fixed = [Variant("bare", "unsloth", shape="fixed"), Variant("mg", "unsloth", shape="fixed")] + [
        Variant("mg", "unsloth", shape="fixed", toggle=t) for t in ("sync1", "untracked", "nosys", "nocarbon")]
    qlora = [Variant(s, b, method="qlora") for b in ("unsloth", "hf") for s in ("bare", "mg")]
    ddp = [Variant("mg", "hf"), Variant("mg", "hf", num_gpus=2)]
    # the same, batch lengths bucketed to multiples of 64: fewer new shapes, so the 1-GPU run's warm-up
    # does not inflate the 2-GPU ratio (2026-11-27: 2.96x by the median, 1.57x in the last window)
    ddp_bucket = [Variant("mg", "hf", batching="padded64"), Variant("mg", "hf", batching="padded64", num_gpus=2)]
    # padded to a multiple of 64 (pad_to_multiple_of): at most 8 batch shapes at 512, against the
    # warm-up every new padded length costs (2026-11-27: var windows climbed 0.9k -> 6.2k -> 11.0k tok/s)
    bucket = [Variant(s, b, batching="padded64") for b in ("unsloth", "hf") for s in ("bare", "mg")]
    # var rows bucketed: short launch-bound steps, where a per-step host cost of the platform shows
    attrib_bucket = [Variant("mg", "unsloth", batching="padded64", toggle=t)
                     for t in ("untracked", "nosys", "nocarbon", "nolog")]
    # variable-length rows at fixed-row speed: fixed rows, today's bucketed padding and the flattened
    # layouts (hf: FlexAttention document masks; Unsloth: its own packed attention), per backend
    packing_h = [Variant("mg", "hf", shape="fixed"), Variant("mg", "hf", batching="padded64"),
                 Variant("mg", "hf", batching="padding_free"), Variant("mg", "hf", batching="packed"),
                 Variant("bare", "hf", batching="padding_free")]
    packing_u = [Variant("mg", "unsloth", shape="fixed"), Variant("mg", "unsloth", batching="padded64"),
                 Variant("mg", "unsloth", batching="padding_free"), Variant("mg", "unsloth", batching="packed")]
    # one block for both questions on Unsloth: flattened rows vs fixed rows and today's default, and the
    # platform on var rows (full tracking, all of it off, bare): neighbours in both orders of the ABBA
    packing_track_u = [Variant("mg", "unsloth", shape="fixed"), Variant("mg", "unsloth", batching="padding_free"),
                       Variant("mg", "unsloth", batching="packed"), Variant("mg", "unsloth", batching="padded64"),
                       Variant("mg", "unsloth", batching="padded64", toggle="untracked"),
                       Variant("bare", "unsloth", batching="padded64")]
    # the platform's per-step costs on variable-length rows, each switched off in turn
    toggles_var = [Variant("mg", "unsloth", batching="padded64")] + [
        Variant("mg", "unsloth", batching="padded64", toggle=t) for t in ("nosys", "nocarbon", "nolog")]
    # DPO with LoRA: bare TRL DPOTrainer vs `model-garden train --objective dpo`, per backend, the implicit
    # reference (adapter switched off) on both sides; bare hf also with an explicit reference copy (memory)
    dpo = [dpo_variant("bare", "hf"), dpo_variant("mg", "hf"), dpo_variant("bare", "hf", "model"),
           dpo_variant("bare", "unsloth"), dpo_variant("mg", "unsloth")]
    # DPO scaling: the same platform run on 1 and 2 GPUs of one host (needs 2 GPUs)
    dpo_ddp = [dpo_variant("mg", "hf"), Variant("mg", "hf", shape="pref", objective="dpo", num_gpus=2)]
    return {"dpo": dpo, "dpo-h": dpo[:3], "dpo-ddp": dpo_ddp,
            "packing-h": packing_h, "packing-u": packing_u, "packing-track-u": packing_track_u,
            "toggles-var": toggles_var,
            "parity": parity, "attrib-bucket": attrib_bucket, "batching": batching_u + batching_h + bucket, "bucket": bucket, "batching-u": batching_u,
            "batching-h": batching_h, "attrib": attrib, "attrib-fixed": attrib_fixed, "qlora": qlora, "ddp": ddp,
            "ddp-bucket": ddp_bucket}


def select(spec: str, smoke: bool = False) -> list[Variant]:
    """``spec``: comma-separated group names and/or variant names, in order, no duplicates."""
    return [v for block in blocks(spec, smoke) for v in block]


def blocks(spec: str, smoke: bool = False) -> list[list[Variant]]:
    """The variants of ``spec`` in blocks: one per group named (variant names given one by one form
    one block together); a variant already chosen is not repeated."""
    table = {**groups(False), **groups(True)} if smoke else groups(False)
    by_name = {v.name: v for t in (groups(False), groups(True)) for vs in t.values() for v in vs}
    out: list[list[Variant]] = []
    seen: list[Variant] = []
    loose: list[Variant] = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        chosen = table.get(item) or ([by_name[item]] if item in by_name else None)
        if chosen is None:
            raise SystemExit(f"unknown group or variant {item!r}; groups: {', '.join(table)}")
        new = [v for v in chosen if v not in seen]
        seen += new
        if item in table:
            out.append(new)
        else:
            loose += new
    return [b for b in out + [loose] if b]


def schedule(spec: str, repeat: int, smoke: bool = False) -> list[tuple[int, Variant]]:
    """(round, variant) in run order. Each block runs ``repeat`` times, forward then backward (ABBA:
    A B C, C B A, A B C, ...), so a drift of the machine during the block weighs on every variant alike
    and each pair of rounds gives one ratio between any two variants of the block."""
    out = []
    for block in blocks(spec, smoke):
        for r in range(repeat):
            out += [(r, v) for v in (block if r % 2 == 0 else block[::-1])]
    return out


def bare_command(v: Variant, a, data: dict, model: str, out_json: Path) -> list[str]:
    if v.objective == "dpo":
        cmd = [sys.executable, str(HERE / "bare_dpo.py"), "--backend", v.backend, "--model", model,
               "--data", data["pc_data"], "--steps", str(a.steps), "--warmup", str(a.warmup),
               "--batch", str(a.batch), "--grad-accum", "1", "--seq", str(a.seq), "--ref", v.ref or "implicit",
               "--lora-r", "16", "--lora-alpha", "16", "--out", str(out_json)]
        return cmd + (["--gc"] if a.gc else [])
    bucket = ["--pad-multiple", "64"] if v.batching == "padded64" else []
    cmd = [sys.executable, str(HERE / "bare_trl.py"), "--backend", v.backend, "--method", v.method,
           "--model", model, "--data", data["pc_data"], "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--batch", str(a.batch), "--grad-accum", "1", "--seq", str(a.seq), *bucket,
           "--batching", "padded" if v.batching == "padded64" else v.batching,
           "--lora-r", "16", "--lora-alpha", "16", "--out", str(out_json)]
    return cmd + (["--gc"] if a.gc else [])


def config_fields() -> set[str]:
    from dataclasses import fields

    from mg_mlflow.config import TrainConfig

    return {f.name for f in fields(TrainConfig)}


def batching_args(mode: str) -> list[str]:
    """``--set batching=MODE``; in a checkout from before TrainConfig had ``batching``: padded is the
    default there (for hf; Unsloth then decides itself), packed is ``packing=true``, padding_free
    cannot be asked for (the row then fails with this message)."""
    if mode == "padded64":
        if "pad_to_multiple_of" not in config_fields():
            raise ValueError("padded64 needs TrainConfig.pad_to_multiple_of, which this checkout does not have")
        return ["--set", "batching=padded", "--set", "pad_to_multiple_of=64"]
    if "batching" in config_fields():
        # pad_to_multiple_of's auto (-1) buckets padded batches on a GPU: `padded` pins it off
        unbucketed = ["--set", "pad_to_multiple_of=0"] if mode == "padded" and "pad_to_multiple_of" in config_fields() else []
        return ["--set", f"batching={mode}", *unbucketed]
    if mode == "packed":
        return ["--set", "packing=true"]
    if mode == "padded":
        return []
    raise ValueError(f"batching={mode} needs TrainConfig.batching, which this checkout does not have")


def mg_command(v: Variant, a, data: dict, model: str, out_json: Path, experiment: str,
               run_name: str = "") -> list[str]:
    pre = [sys.executable, str(HERE / "mg_timed.py"), "--meter-out", str(out_json), "--warmup", str(a.warmup)]
    if v.toggle in ("notok", "untracked"):
        pre.append("--no-tokens-seen")
    if v.toggle == "loadseq":
        pre += ["--load-seq", "2048"]
    cli = ["train", "--base-model", model, "--dataset", data["data"], "--backend", v.backend,
           "--method", v.method, "--max-steps", str(a.steps), "--batch-size", str(a.batch), "--grad-accum", "1",
           "--max-seq-length", str(a.seq), "--lora-r", "16", "--lora-alpha", "16", "--learning-rate", "2e-4",
           "--gradient-checkpointing" if a.gc else "--no-gradient-checkpointing", "--register-as", "none",
           "--experiment", experiment, "--run-name", run_name or v.name, "--no-progress"]
    if v.objective == "dpo":
        if v.ref:
            raise ValueError("model-garden keeps no explicit reference copy with LoRA (the adapter switched off is it)")
        cli += ["--objective", "dpo", "--beta", "0.1"]  # TRL's padded preference batches, as on the bare side
    else:
        cli += batching_args(v.batching)
    cli += ["--logging-steps", str(a.steps) if v.toggle in ("nolog", "untracked") else "1"]
    if v.toggle in ("nosys", "untracked"):
        cli.append("--no-system-metrics")
    if v.toggle in ("nocarbon", "untracked"):
        cli.append("--no-carbon")
    if v.toggle == "sync1":
        cli += ["--set", "metrics_sync_steps=1"]
    if v.num_gpus > 1:
        cli += ["--set", f"num_gpus={v.num_gpus}"]
        return [sys.executable, "-m", "mg_mlflow", *cli]  # ranks are new processes: MLflow's figures only
    return pre + ["--", *cli]

