"""The sweep's overhead per trial beyond the training itself: N trials through ``run_sweep`` against the
same N trainings called directly (``training.recipe.train`` into plain runs), alternating, in one process, on one
sqlite MLflow store.

Both sides do the same training work (same config, ``register_as=none``, carbon and system metrics
off); the sweep side adds what a sweep costs: the Optuna study in its RDB storage (ask/tell, pruner
reports), the nested child run created by hand, the parent's per-trial metrics, tags and the final
plots and ``trials.json``. Printed: seconds per trial each way, the difference per trial, the ratio.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_sweep.py --trials 4 --steps 30 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import bench_home, offline_env

offline_env()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="trials per sweep (a grid over seeds)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per trial")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (direct, sweep)")
    args = parser.parse_args()

    home = bench_home(Path(tempfile.mkdtemp(prefix="mg-bench-sweep-")))
    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.data.sample import write_sample
    from mg_mlflow.dev.tiny import build_tiny_llama
    from mg_mlflow.experiment.sweep import SweepSpec, run_sweep
    from mg_mlflow.training.recipe import train

    model = build_tiny_llama(home / "tiny")
    data = write_sample(home / "data.jsonl", n=64)
    options = {"base_model": str(model), "dataset": str(data), "max_steps": args.steps, "learning_rate": 3e-3,
               "eval_split": 0.2, "eval_steps": max(1, args.steps // 3), "system_metrics": False,
               "carbon": False, "register_as": "none"}
    seeds = list(range(1, args.trials + 1))

    def direct() -> float:
        start = time.perf_counter()
        for seed in seeds:
            train(build_config(TrainConfig, overrides={**options, "seed": seed}), show_progress=False)
        return time.perf_counter() - start

    def sweep() -> float:
        spec = SweepSpec(options=dict(options), grid=[f"seed={','.join(map(str, seeds))}"], pruner="median",
                         register="none")
        start = time.perf_counter()
        result = run_sweep(spec, echo=lambda _: None)
        elapsed = time.perf_counter() - start
        assert len(result.outcomes) == args.trials, result.outcomes
        return elapsed

    direct()  # warm-up: imports, first model load
    plain, swept = [], []
    for _ in range(args.rounds):
        plain.append(direct() / args.trials)
        swept.append(sweep() / args.trials)
    p, s = statistics.median(plain), statistics.median(swept)
    print(f"trials per round: {args.trials}, steps per trial: {args.steps}, rounds: {args.rounds}")
    print(f"direct training : {p:.2f} s per trial  (rounds: {', '.join(f'{x:.2f}' for x in plain)})")
    print(f"through a sweep : {s:.2f} s per trial  (rounds: {', '.join(f'{x:.2f}' for x in swept)})")
    print(f"sweep overhead  : {s - p:+.2f} s per trial, ratio {s / p:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
