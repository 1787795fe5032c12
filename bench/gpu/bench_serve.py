"""Serving numbers side by side on one machine: `model-garden deploy` vs bare `vllm serve` on the same folder.

    python3 bench/gpu/bench_serve.py --out $OUT [--budget 540] [--mode eager-warm|graphs-cold]   # 2 GPUs

1. start-up, at the same time on two GPUs: `model-garden deploy models:/gpu-merged@champion` on GPU 0
   (until the command returns: resolve, inspect, plan, vLLM to /health, carbon monitor) and bare
   `vllm serve <the same folder>` on GPU 1 (until /health answers). ``eager-warm`` (default):
   `--enforce-eager` and the machine's JIT caches; ``graphs-cold``: vLLM's defaults (torch.compile +
   CUDA graphs) and an empty HOME per server, so no compile/Triton/FlashInfer cache is shared;
2. output tokens/s at 1, 8 and 64 concurrent requests (128 new tokens each, ignore_eos), deployment
   and bare vLLM alternately, twice, with GPU energy read from NVML around each run;
3. bare vLLM stopped; the LoRA adapter gpu-lora-a deployed on GPU 1 (base resolved from the registry;
   gpu-merged is that base with the same adapter merged in) and compared with the merged deployment;
4. the serving runs' carbon metrics read back from MLflow after `deployments stop`; a warm restart of
   the deployment if the budget allows.
Results: $OUT/bench.json. On 2026-11-27 the device time ran out during step 2; the remaining levels
and the LoRA comparison were run with `compare()` / bench_lora.py on the same servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_common import gpu_processes, gpu_processes_on, local_dir, log, log_numbers, mg, record, save, wait_health  # noqa: E402

T0 = time.time()
LEVELS = (1, 8, 64)
MAX_TOKENS = 128
PROMPT = "Write a long story about a fox who learns to fly. " * 4  # ~60 tokens with the tiny tokenizer
UTIL = "0.85"
SCALE = {"requests": 1, "rounds": 2}  # --scale N: N x the requests per run; --rounds
MODE = {"flags": ["--enforce-eager"], "cold": False}  # --mode: eager-warm (default) | graphs-cold
BARE: list = []


def fresh_home(tag: str) -> dict:
    if not MODE["cold"]:
        return {}  # the machine's own caches (FlashInfer / Triton JIT from earlier starts)
    home = Path(f"/tmp/home-{tag}")
    home.mkdir(parents=True, exist_ok=True)
    return {"HOME": str(home), "VLLM_CACHE_ROOT": str(home / "vllm"), "TRITON_CACHE_DIR": str(home / "triton"),
            "TORCHINDUCTOR_CACHE_DIR": str(home / "inductor"), "XDG_CACHE_HOME": str(home / "cache")}


async def _load(url: str, model: str, concurrency: int, n: int) -> dict:
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    tokens = 0
    latencies = []

    async def one(session):
        nonlocal tokens
        async with sem:
            t = time.perf_counter()
            async with session.post(url, json={"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS,
                                               "temperature": 0, "ignore_eos": True}) as r:
                body = await r.json()
            latencies.append(time.perf_counter() - t)
            tokens += body["usage"]["completion_tokens"]

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        t = time.perf_counter()
        await asyncio.gather(*(one(session) for _ in range(n)))
        wall = time.perf_counter() - t
    latencies.sort()
    return {"requests": n, "output_tokens": tokens, "seconds": round(wall, 3), "tok_s": round(tokens / wall, 1),
            "p50_latency_s": round(latencies[len(latencies) // 2], 3)}


def energy_mj(gpu: int) -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(pynvml.nvmlDeviceGetHandleByIndex(gpu))
    except Exception:  # noqa: BLE001
        return None


def load(port: int, model: str, concurrency: int, gpu: int) -> dict:
    url = f"http://127.0.0.1:{port}/v1/completions"
    asyncio.run(_load(url, model, concurrency, max(4, concurrency)))  # warm-up at this level
    e0 = energy_mj(gpu)
    res = asyncio.run(_load(url, model, concurrency, max(16, 4 * concurrency) * SCALE["requests"]))
    e1 = energy_mj(gpu)
    if e0 is not None and e1 is not None:
        res["gpu_joules"] = round((e1 - e0) / 1000, 1)
        res["joules_per_1k_tokens"] = round((e1 - e0) / res["output_tokens"], 2)
    return res


def compare(a: tuple, b: tuple, rounds: int | None = None) -> dict:
    """a, b = (label, port, model, gpu); alternate a, b at each level, ``rounds`` times."""
    rounds = rounds or SCALE["rounds"]
    out = {}
    for c in LEVELS:
        runs = {a[0]: [], b[0]: []}
        for _ in range(rounds):
            for label, port, model, gpu in (a, b):
                runs[label].append(load(port, model, c, gpu))
        med = {k: round(sum(r["tok_s"] for r in v) / len(v), 1) for k, v in runs.items()}
        out[str(c)] = {"runs": runs, "mean_tok_s": med, "ratio": round(med[a[0]] / med[b[0]], 3)}
        log(f"c={c}: {a[0]} {med[a[0]]:.0f} tok/s, {b[0]} {med[b[0]]:.0f} tok/s, ratio {out[str(c)]['ratio']}")
    return out


def serving_run_metrics(name: str) -> dict:
    import mlflow

    from mg_mlflow.tracking.run import use_tracking_uri

    use_tracking_uri()
    runs = mlflow.search_runs(experiment_names=["model-garden-serving"], filter_string=f"tags.`mg.deployment` = '{name}'",
                              output_format="list")
    if not runs:
        return {}
    run = runs[0]
    return {"run_id": run.info.run_id, "status": run.info.status,
            **{k: v for k, v in run.data.metrics.items() if k.startswith(("system/carbon/", "carbon/", "serving/", "energy", "power"))}}


def main() -> None:
    try:
        run()
    finally:  # never leave a server behind, whatever broke
        for name in ("bench-merged", "bench-lora", "bench-warm"):
            if record(name):
                mg("deployments", "stop", name)
        for proc in BARE:  # bare vLLM: its own process group
            if proc.poll() is None:
                os.killpg(proc.pid, 9)


def run() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=540, help="seconds; optional steps are skipped past it")
    ap.add_argument("--scale", type=int, default=1, help="N x the requests of each timed run (CUDA graphs: ~1 s at 1x)")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the two sides at each concurrency")
    ap.add_argument("--gpus", default="0,1", help="GPU of the deployment, GPU of bare vLLM (1,0 swaps them, to tell "
                                                  "a GPU difference from the platform's)")
    ap.add_argument("--skip-lora", action="store_true", help="no LoRA step (bench_lora.py measures it on other GPUs)")
    ap.add_argument("--mode", choices=["eager-warm", "graphs-cold"], default="eager-warm",
                    help="eager-warm: --enforce-eager, the machine's JIT caches; graphs-cold: vLLM's defaults "
                         "(torch.compile + CUDA graphs), each server an empty HOME")
    args = ap.parse_args()
    SCALE.update(requests=args.scale, rounds=args.rounds)
    if args.mode == "graphs-cold":
        MODE.update(flags=[], cold=True)
    R_mode = args.mode
    g_dep, g_bare = args.gpus.split(",")
    R: dict = {"util": UTIL, "max_tokens": MAX_TOKENS, "mode": R_mode, **SCALE, "gpus": {"deploy": g_dep, "bare": g_bare}}
    folder = local_dir("models:/gpu-merged@champion")
    R["folder"] = folder

    # 1. cold starts side by side
    env_b = {**os.environ, **fresh_home("bare"), "CUDA_VISIBLE_DEVICES": g_bare}
    blog = open(args.out / "bare_vllm.log", "w")
    t = time.time()
    import shutil

    vllm = [shutil.which("vllm"), "serve", folder] if shutil.which("vllm") else \
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder]
    R["bare_command"] = " ".join(vllm + ["--port", "8300", "--gpu-memory-utilization", UTIL, *MODE["flags"]])
    bare = subprocess.Popen(vllm + ["--port", "8300", "--gpu-memory-utilization", UTIL, *MODE["flags"]],
                            stdout=blog, stderr=subprocess.STDOUT, env=env_b, start_new_session=True)
    BARE.append(bare)
    dep = {}
    import threading

    def deploy_merged():
        dep.update(mg("deploy", "models:/gpu-merged@champion", "--name", "bench-merged", "--port", "8000",
                      "--gpu-memory-utilization",
                      UTIL, *MODE["flags"], gpus=g_dep, env=fresh_home("deploy")))
    th = threading.Thread(target=deploy_merged)
    th.start()
    bare_s = wait_health(8300, bare, timeout=600)
    th.join()
    rec = record("bench-merged")
    R["cold_start"] = {"bare_vllm_s": round(bare_s, 1) if bare_s else None, "deploy_cli_s": dep.get("seconds"),
                       "deploy_health_s": rec.get("startup_s") if rec else None,
                       "bare_log": log_numbers(args.out / "bare_vllm.log"),
                       "deploy_log": log_numbers(rec["log_file"]) if rec else {}, "deploy_rc": dep.get("rc"),
                       "deploy_stderr": dep.get("stderr", "")[-2000:], "command": rec.get("command") if rec else None}
    if bare_s and rec:
        R["cold_start"]["ratio"] = round(dep["seconds"] / bare_s, 3)
    log(f"cold start: {R['cold_start']}")
    save(args.out, "bench.json", R)
    if not (bare_s and rec):
        bare.terminate()
        return

    # 2. throughput, deployment vs bare
    R["deploy_vs_bare"] = compare(("deploy", rec["port"], "gpu-merged", int(g_dep)), ("bare", 8300, folder, int(g_bare)))
    save(args.out, "bench.json", R)
    os.killpg(bare.pid, 15)
    bare.wait(timeout=60)
    R["bare_gpu_after_stop"] = gpu_processes_on(int(g_bare), settle=30)

    # 3. LoRA adapter vs merged
    if args.skip_lora or time.time() - T0 > args.budget - 90:
        R["lora_skipped"] = "--skip-lora" if args.skip_lora else "budget"
        return finish(R, args)
    lora = mg("deploy", "models:/gpu-lora-a@champion", "--name", "bench-lora", "--port", "8001",
              "--gpu-memory-utilization", UTIL, *MODE["flags"],
              gpus=g_bare, env=fresh_home("bare"))
    lrec = record("bench-lora")
    R["lora_start"] = {"cli_s": lora["seconds"], "rc": lora["rc"], "stderr": lora["stderr"][-1500:],
                       "log": log_numbers(lrec["log_file"]) if lrec else {}, "command": lrec.get("command") if lrec else None}
    if lrec:
        R["lora_vs_merged"] = compare(("lora", lrec["port"], "gpu-lora-a", int(g_bare)),
                                       ("merged", rec["port"], "gpu-merged", int(g_dep)))
        save(args.out, "bench.json", R)
        R["lora_stop"] = mg("deployments", "stop", "bench-lora")

    return finish(R, args)


def finish(R: dict, args) -> None:
    # 5. stop, carbon
    R["merged_stop"] = mg("deployments", "stop", "bench-merged")
    time.sleep(2)
    R["carbon_merged"] = serving_run_metrics("bench-merged")
    R["carbon_lora"] = serving_run_metrics("bench-lora")
    save(args.out, "bench.json", R)

    # 4. warm restart (compile cache in the same HOME)
    if time.time() - T0 < args.budget - 150:
        warm = mg("deploy", "models:/gpu-merged@champion", "--name", "bench-warm", "--port", "8002",
                  "--gpu-memory-utilization", UTIL, *MODE["flags"],
                  gpus=args.gpus.split(",")[0], env=fresh_home("deploy"))
        wrec = record("bench-warm")
        R["warm_start"] = {"cli_s": warm["seconds"], "rc": warm["rc"], "log": log_numbers(wrec["log_file"]) if wrec else {}}
        if wrec:
            mg("deployments", "stop", "bench-warm")
    R["gpus_after"] = gpu_processes()
    R["seconds"] = round(time.time() - T0, 1)
    save(args.out, "bench.json", R)
    log(json.dumps({k: R.get(k) for k in ("cold_start", "warm_start", "carbon_merged")}, default=str)[:3000])


if __name__ == "__main__":
    main()
