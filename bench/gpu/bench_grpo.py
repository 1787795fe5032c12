"""GRPO: bare ``GRPOTrainer`` vs `model-garden train --objective grpo`, on one card, same prompts and reward.

Each variant is a fresh process, ``--repeat`` rounds in alternating order (bare, mg, then mg, bare: ABBA) per
backend. Both sides are timed by ``grpo_meter.py`` over the same window (steps after ``--warmup``): completions
per second, seconds per step split into generation (TRL's ``_generate``: vLLM in colocate mode or Unsloth's
fast inference on CUDA with vllm, ``model.generate`` on CPU) and optimisation (the rest of the step), and the
generation share. The platform rows also carry Model Garden's own record: ``generation_share``, the carbon
split ``system/carbon/generation/*`` and ``system/carbon/optimisation/*``, the reward curve. The ratio mg/bare
of completions/s is the median over pairs of the same round (none printed from fewer than 2 pairs).

    python bench/gpu/bench_grpo.py --out $OUT                      # on the GPU: hf and unsloth, 1B shape
    python bench/gpu/bench_grpo.py --plan                          # the runs and their device seconds, here
    python bench/gpu/bench_grpo.py --cpu-smoke --out /tmp/grpo     # plumbing on a CPU (model.generate, 3 steps)
    python bench/gpu/bench_grpo.py --merge A/results.json B/results.json --out DIR   # one report from several calls

Output: OUT/results.json and OUT/results.md (plus logs.tar.gz with every variant's log and the MLflow runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT)]

import bench_parity  # noqa: E402
from parity_report import MIN_PAIRS  # noqa: E402

# wall seconds per variant on one H200, 1B shape, 30 steps (process start, imports, model and vLLM engine load
# included; the first run of a machine compiles and takes the upper end): measured 60-106 / 69-115 (hf),
# 114-163 / 97-147 (unsloth)
COST = {("bare", "hf"): 90, ("mg", "hf"): 100, ("bare", "unsloth"): 150, ("mg", "unsloth"): 140}
SIDES = ("bare", "mg")
# trainer settings that may differ between the sides: where each side writes, and the platform's own
# tracking (what a user gets; its cost is part of the measurement). Any other difference is printed in the
# report as a setting the two sides did not share.
OWN_SETTINGS = {"output_dir", "logging_dir", "run_name", "report_to", "logging_steps", "logging_first_step",
                "logging_nan_inf_filter", "include_num_input_tokens_seen", "disable_tqdm",
                "per_device_eval_batch_size", "num_train_epochs"}  # max_steps ends both runs


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/mg-grpo-out"))
    p.add_argument("--workdir", default="/tmp/mg-grpo")
    p.add_argument("--backends", default="hf,unsloth", help="comma-separated: hf, unsloth")
    p.add_argument("--size", choices=["tiny", "1b", "8b"], default="1b")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch", type=int, default=16, help="completions per step")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=256)
    p.add_argument("--target", type=int, default=64, help="the length reward's target (characters)")
    p.add_argument("--prompts", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.0,
                   help="vLLM's share of the GPU on both sides (0: the library's default)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--gpu", default="", help="CUDA_VISIBLE_DEVICES")
    p.add_argument("--lane", default="main")
    p.add_argument("--variant-timeout", type=float, default=540)
    p.add_argument("--plan", action="store_true", help="print the runs and their estimated seconds, run nothing")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny model, 3 steps, hf only: the plumbing on a CPU")
    p.add_argument("--mg-variant", action="append", default=[], metavar='NAME="OPTIONS"',
                   help="one more platform side with extra train options, e.g. "
                        "quiet=\"--no-carbon --no-system-metrics --logging-steps 30\" (side mg-NAME, paired "
                        "with bare like mg): what a piece of tracking costs")
    p.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                   help="write one report (--out) from the results.json of several calls, their rounds kept apart")
    a = p.parse_args(argv)
    a.extra = {}
    for spec in a.mg_variant:
        name, sep, opts = spec.partition("=")
        if not sep or not name.isidentifier():
            p.error(f"--mg-variant {spec!r}: give NAME=\"OPTIONS\", e.g. quiet=\"--no-carbon\"")
        a.extra[f"mg-{name}"] = opts.split()
    if a.cpu_smoke:
        a.size, a.steps, a.warmup, a.batch, a.num_generations = "tiny", 3, 1, 4, 2
        a.max_completion_length, a.target, a.prompts, a.repeat, a.backends = 8, 16, 16, 1, "hf"
    return a


def schedule(a) -> list[tuple[int, str, str]]:
    """(round, side, backend) in run order: per backend, bare then mg (then the mg variants), then the same
    sides reversed (ABBA)."""
    sides = (*SIDES, *a.extra)
    out = []
    for backend in a.backends.split(","):
        for r in range(a.repeat):
            out += [(r, side, backend) for side in (sides if r % 2 == 0 else sides[::-1])]
    return out


def shared_args(a) -> dict:
    return {"steps": a.steps, "warmup": a.warmup, "batch": a.batch, "num_generations": a.num_generations,
            "max_completion_length": a.max_completion_length, "target": a.target, "lr": a.lr}


def bare_command(a, backend: str, model: str, prompts: str, out_json: Path) -> list[str]:
    cmd = [sys.executable, str(HERE / "bare_grpo.py"), "--backend", backend, "--model", model, "--data", prompts,
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--batch", str(a.batch),
           "--num-generations", str(a.num_generations), "--max-completion-length", str(a.max_completion_length),
           "--target", str(a.target), "--lr", str(a.lr), "--lora-r", "16", "--lora-alpha", "16",
           "--out", str(out_json)]
    if a.vllm_gpu_memory_utilization:
        cmd += ["--vllm-gpu-memory-utilization", str(a.vllm_gpu_memory_utilization)]
    return cmd


def mg_command(a, backend: str, model: str, prompts: str, out_json: Path, experiment: str, run_name: str,
               extra: tuple[str, ...] = ()) -> list[str]:
    cli = ["train", "--objective", "grpo", "--base-model", model, "--dataset", prompts, "--backend", backend,
           "--method", "lora", "--lora-r", "16", "--lora-alpha", "16", "--reward", "length",
           "--reward-length-target", str(a.target), "--num-generations", str(a.num_generations),
           "--max-completion-length", str(a.max_completion_length), "--temperature", "1.0", "--beta", "0",
           "--loss-type", "dapo", "--batch-size", str(a.batch), "--grad-accum", "1", "--max-steps", str(a.steps),
           "--learning-rate", str(a.lr), "--no-gradient-checkpointing", "--register-as", "none",
           "--experiment", experiment, "--run-name", run_name, "--no-progress"]
    if a.vllm_gpu_memory_utilization:
        cli += ["--trainer-arg", f"vllm_gpu_memory_utilization={a.vllm_gpu_memory_utilization}"]
    cli += list(extra)
    return [sys.executable, str(HERE / "mg_timed.py"), "--meter", "grpo", "--meter-out", str(out_json),
            "--warmup", str(a.warmup), "--", *cli]


def mlflow_figures(run_name: str, experiment: str, uri: str) -> dict:
    """Model Garden's own record of a GRPO run: its time split, its carbon split, the reward curve."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    run = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'",
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    m, p = run.data.metrics, run.data.params
    reward = [x.value for x in sorted(client.get_metric_history(run.info.run_id, "train/reward"), key=lambda x: x.step)]
    return {"run_id": run.info.run_id, "run_status": run.info.status,
            "mg_generation_seconds": m.get("generation_seconds"), "mg_generation_share": m.get("generation_share"),
            "mg_optimisation_seconds": m.get("optimisation_seconds"), "mg_train_seconds": m.get("train_seconds"),
            "mg_reward_first": reward[0] if reward else None, "mg_reward_last": reward[-1] if reward else None,
            "mg_generation_resolved": p.get("generation_resolved"),
            "carbon": {k: v for k, v in m.items() if k.startswith("system/carbon/")},
            "carbon_phases_source": run.data.tags.get("mg.carbon.phases")}


def run_variant(a, r: int, side: str, backend: str, model: str, prompts: str, env: dict, lane_dir: Path) -> dict:
    logs = lane_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tag = f"{side}-{backend}-grpo.r{r}"
    meter_json = logs / f"{tag}.meter.json"
    meter_json.unlink(missing_ok=True)
    experiment = f"bench-grpo-{a.size}"
    cmd = (bare_command(a, backend, model, prompts, meter_json) if side == "bare"
           else mg_command(a, backend, model, prompts, meter_json, experiment, tag,
                           a.extra.get(side, ())))
    env = {**env, "CUDA_VISIBLE_DEVICES": env.get("CUDA_VISIBLE_DEVICES", "0")}
    started = time.perf_counter()
    proc = bench_parity.run_bounded(cmd, env, lane_dir, a.variant_timeout)
    (logs / f"{tag}.log").write_text(" ".join(cmd) + "\n\n" + proc.stdout + "\n---- stderr ----\n"
                                        + proc.stderr[-200000:])
    row = json.loads(meter_json.read_text()) if meter_json.is_file() else {}
    row.update({"variant": f"{side}-{backend}-grpo", "side": side, "backend": backend, "round": r,
                "wall_s": time.perf_counter() - started, "returncode": proc.returncode})
    if proc.returncode != 0 or row.get("exit_code") or row.get("meter_error"):
        tail = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()][-3:]
        row["error"] = row.get("meter_error") or " | ".join(tail)[-600:] or f"exit {proc.returncode}"
    if side != "bare":
        try:
            row.update(mlflow_figures(tag, experiment, env["MLFLOW_TRACKING_URI"]))
        except Exception as exc:  # noqa: BLE001 - recorded, the lane goes on
            row.setdefault("error", f"no MLflow run read back: {exc}")
    return row


def write_chat_prompts(path: Path, records: list[dict]) -> Path:
    """The prompts as one user turn each, for both sides: Model Garden turns a text prompt into the user's turn
    (the chat template applies), where TRL given text would generate from it raw, a shorter prompt."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({**r, "prompt": [{"role": "user", "content": r["prompt"]}]}) + "\n"
                            for r in records))
    return path


def summary(rows: list[dict]) -> dict:
    """Per variant: medians over its good rounds; per backend: mg/bare completions/s over same-round pairs."""
    good = [r for r in rows if not r.get("error") and r.get("completions_per_s")]
    variants: dict[str, dict] = {}
    for name in sorted({r["variant"] for r in good}):
        mine = [r for r in good if r["variant"] == name]
        variants[name] = {k: statistics.median(r[k] for r in mine) for k in (
            "completions_per_s", "s_per_step", "gen_s_per_step", "opt_s_per_step", "generation_share")}
        variants[name]["rounds"] = len(mine)
    ratios, differences = {}, {}
    for backend in sorted({r["backend"] for r in good}):
        by = {(r["side"], r["round"]): r for r in good if r["backend"] == backend}
        for platform in sorted({side for side, _ in by if side != "bare"}, key=lambda s: (s != "mg", s)):
            pairs = [by[(platform, n)]["completions_per_s"] / by[("bare", n)]["completions_per_s"]
                     for (side, n) in by if side == platform and ("bare", n) in by]
            key = backend if platform == "mg" else f"{backend} {platform}"
            ratios[key] = {"pairs": len(pairs), "median": statistics.median(pairs) if len(pairs) >= MIN_PAIRS else None,
                           "min": min(pairs, default=None), "max": max(pairs, default=None)}
            for (side, n), row in by.items():
                if side == platform and ("bare", n) in by:
                    differences.update({f"{key}: {k}": v for k, v in unshared(by[("bare", n)], row).items()})
    return {"variants": variants, "ratios": ratios, "unshared_settings": differences}


def unshared(bare: dict, mg: dict) -> dict[str, str]:
    """The trainer settings (``eff_args``) the two rows did not share, outside the platform's own
    (``OWN_SETTINGS``): ``{name: "bare=... mg=..."}``. Equal numbers in other types (0 and 0.0) and a single
    reward's weight (None and [1.0]) count as shared."""
    def same(x: str | None, y: str | None) -> bool:
        if x == y:
            return True
        try:
            return float(x) == float(y)
        except (TypeError, ValueError):
            return {x, y} == {"None", "[1.0]"}

    a = {**(bare.get("eff_args") or {}), "prompt format": bare.get("eff_prompt_format")}
    b = {**(mg.get("eff_args") or {}), "prompt format": mg.get("eff_prompt_format")}
    return {k: f"bare={a.get(k)} mg={b.get(k)}" for k in sorted(set(a) | set(b))
            if k not in OWN_SETTINGS and not same(a.get(k), b.get(k))}


def merge(paths: list[str]) -> dict:
    """One result from several calls' ``results.json`` (one card): each call's rounds are renumbered after the
    previous call's, so a pair is still bare and mg of the same round of the same call."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    cards = {r["meta"]["card"] for r in results}
    if len(cards) != 1:
        raise SystemExit(f"--merge: the results come from different cards ({', '.join(sorted(cards))}): "
                         "a ratio pairs runs of one card only")
    rows, offset = [], 0
    for path, result in zip(paths, results):
        for row in result["rows"]:
            rows.append({**row, "round": row["round"] + offset, "source": str(path)})
        offset += 1 + max((row["round"] for row in result["rows"]), default=-1)
    meta = {**results[0]["meta"], "merged_from": [str(p) for p in paths],
            "calls": [{k: r["meta"].get(k) for k in ("date", "versions", "wall_s", "complete")} for r in results]}
    return {"meta": meta, "rows": rows, "summary": summary(rows)}


def markdown(result: dict) -> str:
    meta, s = result["meta"], result["summary"]
    lines = [f"# GRPO: bare GRPOTrainer vs model-garden train --objective grpo ({meta['card']})", "",
             f"{meta['args']['size']} shape, {meta['args']['steps']} steps (timed after {meta['args']['warmup']}), "
             f"{meta['args']['batch']} completions per step, groups of {meta['args']['num_generations']}, "
             f"completions of up to {meta['args']['max_completion_length']} tokens"
             + (" — CPU SMOKE: plumbing only, no speed figure" if meta["cpu_smoke"] else "")
             + (f"; {len(meta['merged_from'])} calls merged, rounds numbered across them" if meta.get("merged_from")
                else ""), "",
             "| variant | rounds | completions/s | s/step | generation s/step | optimisation s/step | generation share |",
             "|---|---|---|---|---|---|---|"]
    for name, v in s["variants"].items():
        lines.append(f"| {name} | {v['rounds']} | {v['completions_per_s']:.3g} | {v['s_per_step']:.3g} | "
                     f"{v['gen_s_per_step']:.3g} | {v['opt_s_per_step']:.3g} | {v['generation_share']:.0%} |")
    lines += ["", "| backend | mg/bare completions/s (median of pairs) | pairs | range |", "|---|---|---|---|"]
    for backend, ratio in s["ratios"].items():
        mid = f"{ratio['median']:.3f}" if ratio["median"] is not None else f"n/a (< {MIN_PAIRS} pairs)"
        rng = f"{ratio['min']:.3f}-{ratio['max']:.3f}" if ratio["pairs"] else "-"
        lines.append(f"| {backend} | {mid} | {ratio['pairs']} | {rng} |")
    unshared_lines = [f"- {k}: {v}" for k, v in s.get("unshared_settings", {}).items()]
    if unshared_lines:
        lines += ["", "Trainer settings the sides did not share (the ratio compares different work):", *unshared_lines]
    errors = [f"- {r['variant']} r{r['round']}: {r['error']}" for r in result["rows"] if r.get("error")]
    return "\n".join(lines + (["", "Errors:", *errors] if errors else [])) + "\n"


def main(argv=None) -> dict:
    a = parse(argv)
    if a.merge:
        result, out = merge(a.merge), Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
        (out / "results.md").write_text(markdown(result))
        print(markdown(result))
        return result
    plan = schedule(a)
    if a.plan:
        cost = {(side, backend): COST[("bare" if side == "bare" else "mg", backend)] for _, side, backend in plan}
        total = sum(cost[(side, backend)] for _, side, backend in plan)
        for r, side, backend in plan:
            print(f"{cost[(side, backend)]:5d} s  {side}-{backend}-grpo (round {r})")
        print(f"{len(plan)} runs, ~{total} s ({total / 60:.1f} min) + ~30 s model/prompts")
        return {"plan": [f"{side}-{backend}-grpo.r{r}" for r, side, backend in plan], "estimate_s": total}
    if a.gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = a.gpu
    from bench_train import build_model

    from mg_mlflow.data.sample import prompt_records

    out, work = Path(a.out), Path(a.workdir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = str(build_model(a.size, work / f"llama-{a.size}"))
    prompts = str(write_chat_prompts(work / f"prompts-{a.prompts}.chat.jsonl", prompt_records(a.prompts)))
    import torch

    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    lane_dir = work / f"lane-{a.lane}"
    lane_dir.mkdir(parents=True, exist_ok=True)
    env = bench_parity.lane_env(a, lane_dir)
    result = {"meta": {"card": card, "cpu_smoke": a.cpu_smoke, "args": vars(a), "versions": bench_parity.versions(),
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": model, "prompts": prompts,
                       "planned": [f"{side}-{backend}-grpo.r{r}" for r, side, backend in plan]},
              "rows": []}
    for i, (r, side, backend) in enumerate(plan):
        row = run_variant(a, r, side, backend, model, prompts, env, lane_dir)
        result["rows"].append(row)
        print(json.dumps({k: row.get(k) for k in ("variant", "round", "completions_per_s", "s_per_step",
                                                  "gen_s_per_step", "generation_share", "wall_s", "error")},
                         default=str), flush=True)
        result["summary"] = summary(result["rows"])
        result["meta"]["wall_s"], result["meta"]["complete"] = time.perf_counter() - t0, i == len(plan) - 1
        (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
        (out / "results.md").write_text(markdown(result))
    runs_json = bench_parity.export_runs(lane_dir)
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(lane_dir / "logs", arcname="logs")
        if runs_json:
            tar.add(runs_json, arcname="mlflow_runs.json")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
