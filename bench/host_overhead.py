"""What Model Garden adds per training step on the host, measured by sampling a real run with py-spy.

    .venv/bin/python bench/host_overhead.py [--steps 400] [--out /tmp/mg-host]     # CPU, ~2 min

Builds the tiny model and 4,000 instruction rows, runs `model-garden train` (full tracking: per-step
metrics, system metrics, carbon; ``--set metrics_sync_steps=10``, the GPU's deferred reads) under
``py-spy record --threads --format raw`` (py-spy is pip-installed into the out folder if missing), and
prints: the share of the training loop's main-thread samples spent in Trainer callbacks (ours and the
Trainer's own), that time per step, and the seconds each other thread spent working rather than waiting.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

WAITING = ("Condition.wait", "select", "sleep", "_wait_for_tstate_lock")


def py_spy(out: Path) -> str:
    found = shutil.which("py-spy")
    if found:
        return found
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(out / "pyspy"), "py-spy"], check=True)
    return str(out / "pyspy" / "bin" / "py-spy")


def analyse(raw: Path) -> dict:
    loop = callbacks = 0
    busy: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if frames[0].startswith("process "):  # with --subprocesses, the process comes first
            frames = frames[1:]
        if len(frames) < 2:
            continue
        if "MainThread" in frames[0] or ": " not in frames[0]:  # py-spy leaves the main thread unnamed at times
            if any("_inner_training_loop" in f for f in frames):
                loop += int(n)
                callbacks += int(n) if any("call_event" in f or "callback" in f.lower() for f in frames) else 0
        elif not any(w in frames[-1] for w in WAITING):
            busy[frames[0].split(": ", 1)[-1][:40]] += int(n)
    return {"loop_samples": loop, "callback_samples": callbacks,
            "callback_share": callbacks / loop if loop else None, "busy_samples_by_thread": dict(busy.most_common(8))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--out", type=Path, default=Path("/tmp/mg-host"))
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    spy = py_spy(a.out)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "MG_HOME": str(a.out / "home"), "HF_HUB_OFFLINE": "1"}
    subprocess.run([str(bindir / "model-garden"), "dev", "tiny-model", str(a.out / "tiny"), "--hidden-size", "64",
                    "--layers", "1"], check=True, env=env, capture_output=True)
    rng = random.Random(0)
    with open(a.out / "data.jsonl", "w") as fh:
        for _ in range(4000):
            fh.write(json.dumps({"instruction": "say " + " ".join(["word"] * rng.randint(3, 40)),
                                 "output": " ".join(["ok"] * rng.randint(2, 30))}) + "\n")
    raw = a.out / "raw.txt"
    subprocess.run([spy, "record", "--threads", "--rate", str(a.rate), "--format", "raw", "-o", str(raw), "--",
                    str(bindir / "model-garden"), "train", "--base-model", str(a.out / "tiny"), "--dataset",
                    str(a.out / "data.jsonl"), "--max-steps", str(a.steps), "--batch-size", "8", "--register-as",
                    "none", "--set", "metrics_sync_steps=10"], check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    res = analyse(raw)
    ms = 1000 / a.rate
    print(f"training loop, main thread: {res['loop_samples'] * ms / 1000:.1f} s; in callbacks "
          f"{100 * (res['callback_share'] or 0):.2f}% ({res['callback_samples'] * ms / a.steps:.2f} ms per step)")
    for thread, n in res["busy_samples_by_thread"].items():
        print(f"  {thread:<40} working {n * ms / 1000:.2f} s")
    (a.out / "host_overhead.json").write_text(json.dumps({"steps": a.steps, "rate": a.rate, **res}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
