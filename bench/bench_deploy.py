"""Deployment overhead, side by side in one run: `deploy URI` vs bare vLLM on the same folder.

For a merged model and a LoRA adapter (tiny models trained on the fly, offline), it measures
1. seconds from the call to a healthy server (warm download cache) through Model Garden's `deploy`
   (resolve, inspect, plan, launch, health) vs launching the identical vLLM command by hand;
2. output tokens/s for N concurrent completions through the deployment vs the bare server.
Servers run one at a time.

    OMP_NUM_THREADS=1 python bench/bench_deploy.py [--home /tmp/mg-bench] [--requests 32] [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import bench_home, train_registered


def _train(home: Path) -> dict[str, str]:
    uris = {"merged": "models:/bench-merged@prod", "adapter": "models:/bench-lora@prod"}
    train_registered(home, {"bench-merged": "merged_16bit", "bench-lora": "lora"}, max_steps=30)
    return uris


def _throughput(port: int, model: str, requests: int, tokens: int) -> float:
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=600)

    def one(i):
        out = client.completions.create(model=model, prompt=f"Describe the animal {i}.", max_tokens=tokens,
                                        temperature=0, extra_body={"ignore_eos": True})
        return out.usage.completion_tokens

    client.completions.create(model=model, prompt="warm up", max_tokens=4)
    start = time.perf_counter()
    with ThreadPoolExecutor(requests) as pool:
        total = sum(pool.map(one, range(requests)))
    return total / (time.perf_counter() - start)


def _via_deploy(uri: str, port: int, args) -> tuple[float, float, list[str], dict]:
    from mg_mlflow.deploy.manager import deploy, stop
    from mg_mlflow.deploy.plan import DeployOptions

    opts = DeployOptions(name="bench", port=port, max_model_len=512, carbon=False)
    start = time.perf_counter()
    record = deploy([uri], opts, show_progress=False)
    ready = time.perf_counter() - start
    try:
        tps = _throughput(port, record.default_model, args.requests, args.tokens)
    finally:
        stop("bench")
    return ready, tps, record, opts


def _bare(uri: str, port: int, args) -> tuple[float, float]:
    """The identical vLLM command, started by hand on the already-downloaded folder."""
    from mg_mlflow.deploy.manager import prepare
    from mg_mlflow.deploy.net import health_ok
    from mg_mlflow.deploy.plan import DeployOptions
    from mg_mlflow.proc import stop_group

    plan, _ = prepare([uri], DeployOptions(name="bare", port=port, max_model_len=512, carbon=False))
    log = open(Path(os.environ["MG_HOME"]) / "bare.log", "wb")
    start = time.perf_counter()
    proc = subprocess.Popen(plan.argv, env={**os.environ, **plan.env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        while not health_ok("127.0.0.1", port, timeout=1.0):
            if proc.poll() is not None:
                raise RuntimeError(f"bare vLLM exited {proc.returncode}; see {log.name}")
            time.sleep(0.5)
        ready = time.perf_counter() - start
        tps = _throughput(port, plan.default_model, args.requests, args.tokens)
    finally:
        stop_group(proc.pid, grace=10)
        log.close()
    return ready, tps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="mg-bench-"))
    bench_home(home)
    uris = _train(home)
    rows = []
    for kind, uri in uris.items():
        d_ready, d_tps, _, _ = _via_deploy(uri, args.port, args)
        b_ready, b_tps = _bare(uri, args.port, args)
        rows.append((kind, d_ready, b_ready, d_tps, b_tps))
        print(f"{kind}: deploy ready {d_ready:.1f} s, bare {b_ready:.1f} s; "
              f"tok/s deploy {d_tps:.0f}, bare {b_tps:.0f}", flush=True)
    print(f"\n{args.requests} concurrent completions x {args.tokens} tokens, tiny Llama, {os.cpu_count()} CPU cores")
    print(f"{'model':<8} {'deploy->healthy':>16} {'bare vLLM':>10} {'ratio':>6} {'tok/s deploy':>13} "
          f"{'tok/s bare':>11} {'ratio':>6}")
    for kind, d_ready, b_ready, d_tps, b_tps in rows:
        print(f"{kind:<8} {d_ready:>15.1f}s {b_ready:>9.1f}s {d_ready / b_ready:>6.2f} {d_tps:>13.0f} "
              f"{b_tps:>11.0f} {d_tps / b_tps:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
