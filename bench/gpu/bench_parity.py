"""Bare Unsloth/HF vs `model-garden train`, back to back on one card, with MFU and cost attribution.

One call on the GPU machine runs the chosen groups (bench/gpu/variants.py) on the same card; each
group runs ``--repeat`` rounds in alternating order (A B C, C B A: ABBA), so any two variants of a
group are compared in ``--repeat`` pairs and the report gives the median ratio and its spread:

    packing-h / packing-u   fixed rows vs variable rows: bucketed padding (today's default),
              padding-free and packed rows; hf (FlexAttention for flattened rows) and Unsloth
    parity    bare Unsloth+TRL, `model-garden train --backend unsloth` (full tracking), bare HF+peft,
              `model-garden train --backend hf`; padded batches; fixed-length AND variable-length rows
    batching  the same on variable rows with padding_free and packed batches (and bare Unsloth's own
              default choice)
    attrib, toggles-var   `--backend unsloth` with each per-step cost of the platform switched off
    qlora     parity's four on variable rows with a 4-bit base
    ddp       `--backend hf`, --num-gpus 1 vs 2 (needs 2 GPUs): tokens/s and the loss curves

Every single-GPU variant is timed by bench/gpu/meter.py (the same two-sync window for bare and
platform, real non-pad tokens counted on the device); platform runs also carry Model Garden's own
MLflow figures. The card's bf16 peak is measured first (bench/gpu/mfu.py: the median of several
timed bursts), so MFU = 6N x tokens/s / peak comes from this call. Output (3 files):
OUT/results.json, OUT/results.md, OUT/logs.tar.gz (each variant's log + the MLflow runs as JSON).

    python bench/gpu/bench_parity.py --out $OUT --groups packing-h,packing-u    # on the GPU
    python bench/gpu/bench_parity.py --groups parity,attrib --plan              # device seconds, here
    python bench/gpu/bench_parity.py --cpu-smoke --out /tmp/smoke               # plumbing, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT)]

import variants as V  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/mg-parity-out"))
    p.add_argument("--workdir", default="/tmp/mg-parity", help="model, data (shared by lanes) and lane stores")
    p.add_argument("--groups", default="parity", help="groups and/or variant names, comma-separated")
    p.add_argument("--size", choices=["tiny", "1b", "8b"], default="1b")
    # 50 steps timed after 40: on variable-length rows every new padded length costs time when first
    # seen, and shorter warm-ups still held part of it
    p.add_argument("--steps", type=int, default=90)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--rows", type=int, default=1200)
    p.add_argument("--min-len", type=int, default=64, help="shortest variable-length row (tokens)")
    p.add_argument("--gc", action="store_true", help="gradient checkpointing in every variant (default off)")
    p.add_argument("--repeat", type=int, default=2,
                   help="rounds per group in alternating order (ABBA); the report gives no ratio from fewer than 2")
    p.add_argument("--gpu", default="", help="CUDA_VISIBLE_DEVICES for this lane (two lanes on a 2-GPU machine)")
    p.add_argument("--lane", default="", help="name of this lane (default: gpu<N> or main)")
    p.add_argument("--peak-n", type=int, default=8192)
    p.add_argument("--variant-timeout", type=float, default=420, help="seconds before a variant is killed")
    p.add_argument("--prepare-only", action="store_true", help="build model + data, then stop")
    p.add_argument("--plan", action="store_true", help="print the variants and estimated device seconds, run nothing")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny model, 3 steps, the hf variants only: proves the plumbing on a CPU")
    a = p.parse_args(argv)
    if a.cpu_smoke:
        a.size, a.steps, a.warmup, a.batch, a.seq, a.rows, a.min_len, a.peak_n = "tiny", 3, 1, 4, 128, 48, 32, 256
        a.repeat = min(a.repeat, 2)
        if a.groups == "parity":
            a.groups = "smoke"
    a.lane = a.lane or (f"gpu{a.gpu}" if a.gpu else "main")
    return a


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "unsloth", "unsloth_zoo",
                 "bitsandbytes", "mlflow", "codecarbon", "nvidia-ml-py"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def prepare(a, shapes=("fixed", "var", "pref")) -> tuple[str, dict]:
    """The model folder and the datasets of ``shapes`` (built once per workdir; lanes share them)."""
    from bench_data import build, build_preference
    from bench_train import build_model

    work = Path(a.workdir)
    model = build_model(a.size, work / f"llama-{a.size}")
    data = {shape: build(model, work / f"data-{a.seq}-{a.rows}", shape, a.rows, a.seq, a.min_len)
            for shape in ("fixed", "var") if shape in shapes}
    if "pref" in shapes:
        data["pref"] = build_preference(model, work / f"data-{a.seq}-{a.rows}", a.rows, a.seq)
    return str(model), data


def lane_env(a, lane_dir: Path) -> dict:
    env = {**os.environ, "MG_HOME": str(lane_dir / "home"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{lane_dir / 'mlflow.db'}", "DO_NOT_TRACK": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "UNSLOTH_DISABLE_STATISTICS": "1",
           "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if a.gpu:
        env["CUDA_VISIBLE_DEVICES"] = a.gpu
    return env


def run_variant(v: V.Variant, a, model: str, data: dict, env: dict, lane_dir: Path, experiment: str,
                round_: int = 0) -> dict:
    logs = lane_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tag = f"{v.name}.r{round_}"
    meter_json = logs / f"{tag}.meter.json"
    meter_json.unlink(missing_ok=True)
    ident = {"variant": v.name, "side": v.side, "backend": v.backend, "method": v.method, "shape": v.shape,
             "batching": v.batching, "toggle": v.toggle, "num_gpus": v.num_gpus, "objective": v.objective,
             "ref": v.ref, "lane": a.lane, "round": round_}
    try:
        cmd = (V.bare_command(v, a, data[v.shape], model, meter_json) if v.side == "bare"
               else V.mg_command(v, a, data[v.shape], model, meter_json, experiment, run_name=tag))
    except ValueError as exc:
        return {**ident, "error": str(exc)}
    if v.num_gpus == 1 and "CUDA_VISIBLE_DEVICES" not in env:
        # one card: with several visible and no launcher, transformers' Trainer would wrap the model in
        # nn.DataParallel over all of them
        env = {**env, "CUDA_VISIBLE_DEVICES": "0"}
    elif v.num_gpus > 1 and "CUDA_VISIBLE_DEVICES" in env and env["CUDA_VISIBLE_DEVICES"].count(",") + 1 < v.num_gpus:
        return {**ident, "error": f"{v.num_gpus} GPUs needed: run this group without --gpu"}
    started = time.perf_counter()
    proc = run_bounded(cmd, env, lane_dir, a.variant_timeout)
    wall = time.perf_counter() - started
    (logs / f"{tag}.log").write_text(" ".join(cmd) + "\n\n" + proc.stdout + "\n---- stderr ----\n"
                                        + proc.stderr[-200000:])
    row = json.loads(meter_json.read_text()) if meter_json.is_file() else {}
    row.update({**ident, "wall_s": wall, "returncode": proc.returncode})
    if proc.returncode != 0 or row.get("exit_code"):
        tail = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()][-3:]
        row["error"] = " | ".join(tail)[-600:] or f"exit {proc.returncode}"
    if v.side == "mg":
        try:
            row.update(mlflow_figures(tag, experiment, a.warmup, env["MLFLOW_TRACKING_URI"]))
        except Exception as exc:  # noqa: BLE001 - a missing run is recorded, the lane goes on
            row.setdefault("error", f"no MLflow run read back: {exc}")
    if v.num_gpus > 1 and not row.get("error"):  # launched ranks carry no meter: MLflow's own figures
        row["tokens_per_s"], row["s_per_step"] = row.get("mg_tokens_per_s"), row.get("mg_step_time_median_s")
        row["timing_source"] = "mlflow"
    elif "tokens_per_s" in row:
        row["timing_source"] = "meter"
    return row


def run_bounded(cmd: list[str], env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run one variant in its own process group; past ``timeout`` the group (the variant and any ranks
    it launched) is killed and the row records it, so one hung variant does not take the rest of the machine time."""
    import signal

    proc = subprocess.Popen(cmd, env=env, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\nKILLED: the variant ran past --variant-timeout {timeout:.0f} s"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def mlflow_figures(run_name: str, experiment: str, warmup: int, uri: str) -> dict:
    """Model Garden's own record of the run: summary metrics, the per-step tokens/s after warm-up,
    the loss curve, carbon tags, what batching it logged."""
    import statistics

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    run = runs[0]
    m, t, p = run.data.metrics, run.data.tags, run.data.params
    history = sorted((x.step, x.value) for x in client.get_metric_history(run.info.run_id, "train/tokens_per_second"))
    tps = [v for step, v in history if step > warmup]
    loss = sorted((x.step, x.value) for x in client.get_metric_history(run.info.run_id, "train/loss"))
    return {"run_id": run.info.run_id, "run_status": run.info.status,
            "mg_tokens_per_s": statistics.median(tps) if tps else None,
            # the last window (10 steps on a GPU): past the warm-up of every new padded length
            "mg_tokens_per_s_last": history[-1][1] if history else None, "mg_tokens_per_s_points": history,
            "mg_step_time_median_s": m.get("step_time_median_s"), "mg_trained_tokens": m.get("trained_tokens"),
            "mg_train_seconds": m.get("train_seconds"), "mg_train_steps": m.get("train_steps"),
            "mg_peak_gpu_gb": m.get("peak_gpu_memory_gb"), "loss_first": m.get("train/loss_first"),
            "loss_final": m.get("train/loss_final"), "loss_curve": loss,
            "carbon": {k: v for k, v in m.items() if k.startswith(("system/carbon/", "carbon/"))},
            "carbon_tags": {k: v for k, v in t.items() if k.startswith("mg.carbon")},
            "system_metric_keys": sorted(k for k in m if k.startswith("system/"))[:40],
            "params": {k: p[k] for k in ("batching", "batching_resolved", "num_gpus", "world_size", "grad_accum",
                                         "logging_steps", "max_seq_length") if k in p}}


def export_runs(lane_dir: Path) -> Path | None:
    db = lane_dir / "mlflow.db"
    if not db.is_file():
        return None
    sys.path.insert(0, str(ROOT / "bench"))
    from export_runs import export  # runs as JSON: no database leaves the machine

    return export(db)


def main(argv=None) -> dict:
    a = parse(argv)
    plan = V.schedule(a.groups, a.repeat, smoke=a.cpu_smoke)
    if a.plan:
        total = sum(v.cost_s for _, v in plan)
        for r, v in plan:
            print(f"{v.cost_s:5d} s  {v.name} (round {r})")
        print(f"{len(plan)} runs, ~{total} s ({total / 60:.1f} min) + ~60 s model/data/peak")
        return {"plan": [f"{v.name}.r{r}" for r, v in plan], "estimate_s": total}
    if a.gpu:  # before torch is imported anywhere in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = a.gpu
    out, work = Path(a.out), Path(a.workdir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, data = prepare(a, {v.shape for _, v in plan})
    print(f"model + data ready in {time.perf_counter() - t0:.1f} s: {json.dumps(data)}", flush=True)
    if a.prepare_only:
        return {"model": model, "data": data}
    import mfu

    peak = mfu.measure_peak(n=a.peak_n, iters=50 if not a.cpu_smoke else 2, repeats=5 if not a.cpu_smoke else 2)
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"peak {peak['peak_tflops']:.1f} TFLOP/s bf16 on {peak['device']}", flush=True)
    params = mfu.param_count(model)
    lane_dir = work / f"lane-{a.lane}"
    lane_dir.mkdir(parents=True, exist_ok=True)
    env = lane_env(a, lane_dir)
    experiment = f"bench-parity-{a.size}"
    meta = {"lane": a.lane, "gpu": a.gpu, "card": peak["device"], "peak": peak, "params": params,
            "versions": versions(), "args": vars(a), "data": data, "cpu_smoke": a.cpu_smoke,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "planned": [f"{v.name}.r{r}" for r, v in plan], "repeat": a.repeat}
    result = {"meta": meta, "rows": []}
    for i, (r, v) in enumerate(plan):
        row = run_variant(v, a, model, data, env, lane_dir, experiment, r)
        # several GPUs: the tokens of all ranks against the peak of all cards
        row.update(mfu.mfu_fields(row.get("tokens_per_s"), params["n_params"], peak["peak_flops"] * v.num_gpus))
        result["rows"].append(row)
        print(json.dumps({k: row.get(k) for k in ("variant", "round", "s_per_step", "tokens_per_s", "mfu",
                                                  "wall_s", "error")}, default=str), flush=True)
        meta["wall_s"] = time.perf_counter() - t0
        write_outputs(result, out, lane_dir, final=i == len(plan) - 1)  # after each: a run cut short keeps the rest
    import parity_report

    print(parity_report.markdown([result]))
    return result


def write_outputs(result: dict, out: Path, lane_dir: Path, final: bool) -> None:
    """results.json + results.md (+ logs.tar.gz with the MLflow runs as JSON once the lane is done)."""
    import parity_report

    result["ratios"] = parity_report.ratios(result["rows"])
    result["meta"]["complete"] = final
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "results.md").write_text(parity_report.markdown([result]))
    runs_json = export_runs(lane_dir) if final else None
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(lane_dir / "logs", arcname="logs")
        if runs_json:
            tar.add(runs_json, arcname="mlflow_runs.json")


if __name__ == "__main__":
    main()
