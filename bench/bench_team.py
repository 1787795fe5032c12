"""Team platform figures, measured side by side in one run (not part of the test suite).

    PYTHONPATH=$PWD .venv/bin/python bench/bench_team.py --home /tmp/mg-bench-team [--jobs 3 --steps 20]

1. The tracking round trip: N synchronous log_metric calls to the embedded sqlite store vs the same
   store behind `model-garden server` (HTTP), alternating rounds; ratio server/direct.
2. The local Ray instance: start time and memory (PSS of its process tree), jobs queued on one slot:
   submit -> run started -> run ended per job, and the whole queue's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def _cli(args, env):
    return subprocess.run([str(BIN / "model-garden"), *args], env=env, capture_output=True, text=True, check=True)


def log_round_trip(uri: str, n: int) -> float:
    import mlflow

    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("bench") or client.get_experiment(client.create_experiment("bench"))
    run = client.create_run(exp.experiment_id)
    started = time.perf_counter()
    for i in range(n):
        client.log_metric(run.info.run_id, "x", float(i), step=i)
    seconds = (time.perf_counter() - started) / n
    client.set_terminated(run.info.run_id)
    return seconds


def tree_pss(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except psutil.Error:
            pass
    return total / 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default="/tmp/mg-bench-team")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MG_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    os.environ.update({k: env[k] for k in ("MG_HOME", "MLFLOW_TRACKING_URI")})
    result: dict = {"load_average_start": os.getloadavg()}

    # 1. tracking round trip
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(BIN / "model-garden"), "server", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        direct, served = [], []
        for _ in range(args.rounds):
            direct.append(log_round_trip(env["MLFLOW_TRACKING_URI"], args.calls))
            served.append(log_round_trip(f"http://127.0.0.1:{port}", args.calls))
        result["log_metric_ms_direct_sqlite"] = statistics.median(direct) * 1000
        result["log_metric_ms_via_server"] = statistics.median(served) * 1000
        result["server_over_direct"] = statistics.median(served) / statistics.median(direct)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)

    # 2. local Ray and the queue
    tiny, data = home / "tiny", home / "data.jsonl"
    _cli(["dev", "tiny-model", str(tiny)], env)
    _cli(["data", "sample", str(data), "-n", "64"], env)
    started = time.perf_counter()
    _cli(["jobs", "start", "--slots", "1"], env)
    result["ray_start_s"] = time.perf_counter() - started
    state = json.loads((home / "ray" / "cluster.json").read_text())
    result["ray_idle_pss_gib"] = tree_pss(state["pid"])
    t0 = time.time()
    ids = []
    for i in range(args.jobs):
        out = _cli(["submit", "--base-model", str(tiny), "--dataset", str(data), "--max-steps", str(args.steps),
                    "--learning-rate", "3e-3", "--register-as", "bench-team", "--run-name", f"bench-{i}",
                    "--no-system-metrics"], env)
        ids.append(out.stdout.strip().splitlines()[-1])
    result["submit_s_each"] = (time.time() - t0) / args.jobs
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(state["dashboard_url"])
    while not all(client.get_job_info(j).status.is_terminal() for j in ids):
        time.sleep(2)
    result["queue_wall_s"] = time.time() - t0
    rows = {r["job_id"]: r for r in json.loads(_cli(["jobs", "list", "--json"], env).stdout)}
    result["jobs"] = [{k: rows[j][k] for k in ("state", "run_status", "registered", "run_started", "run_seconds",
                                                "loss", "tokens_per_second", "emissions_kg")} for j in ids]
    _cli(["jobs", "shutdown"], env)
    result["load_average_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
