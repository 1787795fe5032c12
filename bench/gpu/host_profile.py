"""Where the host's time goes in one training step: one bench_parity variant under py-spy.

The variant (default: `model-garden train --backend unsloth`, variable rows padded to 64, full
tracking) runs as bench_parity.py runs it, under ``py-spy record`` (every thread, samples of
threads on a CPU only, raw collapsed stacks). ``summarize`` then keeps the training thread's samples
taken inside the Trainer's loop and splits them by what it was doing (forward, backward, optimizer,
the platform's callbacks, logging, ...), and counts the other threads' samples (system metrics,
carbon, the metric spool). A thread waiting for the GPU in a CUDA sync spins, so it counts as busy:
the split says where the loop's time goes, not how much of it the host alone needs.

    python bench/gpu/host_profile.py --out $OUT [--variant NAME] [--steps 250]   # GPU machine, py-spy on PATH
    python bench/gpu/host_profile.py --summarize pyspy_raw.txt                      # anywhere
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

# (label, a frame name that marks it), first match from the leaf wins; order: most specific first
BUCKETS = [("optimizer", "optimizer_step"), ("optimizer", " step (torch/optim"),
           ("backward", "backward"), ("callbacks", "call_event"), ("logging", "_maybe_log_save_evaluate"),
           ("forward", "compute_loss"), ("batch to device", "_prepare_inputs"),
           ("data loading", "get_batch_samples"), ("data loading", "__next__")]
LOOP = "_inner_training_loop"


def bucket(frames: list[str]) -> str:
    for label, mark in BUCKETS:
        if any(mark in f for f in frames):
            return label
    return "other (in the loop)"


def summarize(raw: Path) -> dict:
    """Samples inside the Trainer's loop, by thread and by what the training thread was doing."""
    threads: Counter = Counter()
    main: Counter = Counter()
    loop_thread = None
    lines = [ln.rsplit(" ", 1) for ln in raw.read_text().splitlines() if ln.strip()]
    for stack, count in lines:  # find the training thread: the one whose stacks hold the loop
        if LOOP in stack:
            loop_thread = stack.split(";", 1)[0]
            break
    for stack, count in lines:
        n = int(count)
        frames = stack.split(";")
        thread = frames[0]
        if thread == loop_thread:
            if LOOP not in stack:
                continue
            main[bucket(frames[::-1])] += n
        else:
            threads[thread.split(": ", 1)[-1]] += n
    total = sum(main.values())
    return {"training_thread": loop_thread, "loop_samples": total,
            "share": {k: round(v / total, 3) for k, v in main.most_common()} if total else {},
            "other_threads_samples": dict(threads.most_common(12))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/host-profile")
    p.add_argument("--workdir", default="/tmp/mgp/work")
    p.add_argument("--variant", default="mg-unsloth-lora-var-padded64")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--summarize", type=Path, help="only summarize this raw py-spy file")
    a = p.parse_args()
    if a.summarize:
        print(json.dumps(summarize(a.summarize), indent=1))
        return
    import bench_parity as BP
    import variants as V

    b = BP.parse(["--workdir", a.workdir, "--steps", str(a.steps), "--groups", a.variant])
    model, data = BP.prepare(b)
    v = next(x for x in V.select(a.variant))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lane_dir = Path(a.workdir) / "lane-profile"
    lane_dir.mkdir(parents=True, exist_ok=True)
    env = {**BP.lane_env(b, lane_dir), "CUDA_VISIBLE_DEVICES": "0"}
    meter = out / "meter.json"
    cmd = (V.bare_command(v, b, data[v.shape], model, meter) if v.side == "bare"
           else V.mg_command(v, b, data[v.shape], model, meter, "host-profile", run_name=v.name))
    raw = out / "pyspy_raw.txt"
    spy = [shutil.which("py-spy") or "py-spy", "record", "--threads", "--nonblocking", "-r", str(a.rate),
           "-f", "raw", "-o", str(raw), "--"]
    t0 = time.perf_counter()
    proc = subprocess.run(spy + cmd, env=env, cwd=str(lane_dir), capture_output=True, text=True)
    (out / "variant.log").write_text(proc.stdout[-20000:] + "\n---- stderr ----\n" + proc.stderr[-40000:])
    result = {"variant": v.name, "steps": a.steps, "wall_s": time.perf_counter() - t0, "returncode": proc.returncode,
              "meter": json.loads(meter.read_text()) if meter.is_file() else None}
    if raw.is_file():
        result["profile"] = summarize(raw)
    (out / "host_profile.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: result[k] for k in ("variant", "wall_s", "returncode", "profile") if k in result}, indent=1))


if __name__ == "__main__":
    main()
