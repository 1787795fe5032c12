"""Step-time overhead of the carbon tracker: ratio of step time with the tracker on vs off, in one run.

Trains the same tiny model in alternating rounds (off, on, off, on, ...) with a real SFTTrainer, the
real codecarbon tracker (offline) and a real sqlite MLflow store, and times every optimizer step as the
interval between consecutive ``on_step_end`` events (so it includes every callback's own work; the
tracker's one-off start, ~1.5 s before the first step, is not a step), both in wall-clock time and in
CPU time of the whole process (all threads: the tracker's sampling and logging threads included). On a
machine shared with other jobs the CPU-time ratio is the steadier figure. The bar: < 1%.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_carbon_overhead.py --rounds 3 --steps 500

Use ``--model DIR`` for a bigger local model (e.g. on a GPU machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import bench_home, offline_env

offline_env()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (off, on)")
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps per round")
    parser.add_argument("--warmup", type=int, default=10, help="steps not timed at the start of a round")
    parser.add_argument("--interval-steps", type=int, default=10, help="carbon_interval_steps (config default 10)")
    parser.add_argument("--measure-secs", type=float, default=2.0,
                        help="carbon_measure_secs (config default 5; smaller = more points = more overhead)")
    parser.add_argument("--model", default="", help="local model folder (default: build the tiny Llama)")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mg-bench-carbon-"))
    bench_home(work / "home")
    import mlflow
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.data.sample import write_sample
    from mg_mlflow.dev.tiny import build_tiny_llama
    from mg_mlflow.tracking.carbon import CarbonCallback
    from mg_mlflow.tracking.run import ensure_experiment, use_tracking_uri
    from mg_mlflow.training.backends import load_model
    from mg_mlflow.training.text import load_data, sft_config

    model_dir = args.model or str(build_tiny_llama(work / "tiny"))
    data = write_sample(work / "data.jsonl", n=256)
    cfg = build_config(TrainConfig, overrides={"base_model": model_dir, "dataset": str(data), "backend": "hf",
                                               "max_steps": args.steps, "batch_size": args.batch_size})
    train, _ = load_data(cfg)
    rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in train.records]
    use_tracking_uri()
    exp_id = ensure_experiment("bench-carbon")

    class StepTimer(TrainerCallback):
        """Per-step wall and process-CPU time, and the CPU of threads other than the training thread."""

        def __init__(self):
            self.times: list[tuple[float, float]] = []  # (wall, process CPU) seconds per step
            self._last = None
            self.first = self.end = None  # (process CPU, training-thread CPU) at the timed window's edges

        def on_step_end(self, a, state, control, **kw):
            now = (time.perf_counter(), time.process_time())
            if self._last is not None and state.global_step > args.warmup:
                self.times.append((now[0] - self._last[0], now[1] - self._last[1]))
                self.end = (time.process_time(), time.thread_time())
            elif state.global_step == args.warmup:
                self.first = (time.process_time(), time.thread_time())
            self._last = now

        def other_threads_cpu(self) -> float:
            return (self.end[0] - self.first[0]) - (self.end[1] - self.first[1])

    class TimedCarbon(CarbonCallback):
        """The real callback, with the time its step hook takes on the training thread added up."""

        hook_seconds = 0.0

        def on_step_end(self, a, state, control, **kw):
            started = time.thread_time()
            super().on_step_end(a, state, control, **kw)
            self.hook_seconds += time.thread_time() - started

    def one_round(carbon_on: bool, index: int) -> list[tuple[float, float]]:
        model, tokenizer, peft_config = load_model("hf", cfg, model_dir, None)
        timer = StepTimer()
        callbacks = [timer]
        if carbon_on:
            callbacks.insert(0, TimedCarbon(work / f"round{index}", interval_steps=args.interval_steps,
                                               measure_secs=args.measure_secs))
        trainer = SFTTrainer(model=model, args=sft_config(cfg, work / f"round{index}", False, "hf"),
                             train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             peft_config=peft_config, callbacks=callbacks)
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
        with mlflow.start_run(experiment_id=exp_id, run_name=f"{'on' if carbon_on else 'off'}-{index}"):
            trainer.train()
        if carbon_on:
            assert callbacks[0].error is None, callbacks[0].error
            assert callbacks[0].points, "the tracker logged no points"
            points.append(len(callbacks[0].points))
        attributable[carbon_on].append((timer.other_threads_cpu() + getattr(callbacks[0], "hook_seconds", 0.0),
                                        sum(c for _, c in timer.times)))
        return timer.times

    points: list[int] = []
    attributable: dict[bool, list[tuple[float, float]]] = {False: [], True: []}  # (tracker CPU, step CPU)
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for r in range(args.rounds):
        for on in (False, True):
            t = one_round(on, 2 * r + on)
            times[on] += t
            print(f"round {r + 1} carbon {'on ' if on else 'off'}: mean step {statistics.mean(w for w, _ in t) * 1e3:.2f} ms "
                  f"wall, {statistics.mean(c for _, c in t) * 1e3:.2f} ms CPU over {len(t)} steps", flush=True)

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"\ndevice: {device}; torch threads {torch.get_num_threads()}; model {Path(model_dir).name}; "
          f"carbon every {args.interval_steps} steps, power sampled every {args.measure_secs}s; "
          f"{statistics.mean(points):.1f} carbon points per round; steps timed: {len(times[False])} off, {len(times[True])} on")
    for i, what in ((0, "wall"), (1, "CPU ")):
        off = [t[i] for t in times[False]]
        on = [t[i] for t in times[True]]
        for stat in (statistics.mean, statistics.median):
            ratio = stat(on) / stat(off)
            print(f"{what} {stat.__name__:6} step: off {stat(off) * 1e3:7.3f} ms, on {stat(on) * 1e3:7.3f} ms, "
                  f"ratio on/off = {ratio:.4f} ({(ratio - 1) * 100:+.2f}%)")
    for on in (False, True):
        extra, total = (sum(x) for x in zip(*attributable[on]))
        label = "tracker on: CPU of its threads + step hook" if on else "tracker off: CPU of other threads"
        print(f"{label} = {extra * 1e3:.1f} ms over {total:.2f} s of step CPU = {extra / total * 100:.3f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
