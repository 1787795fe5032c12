"""LoRA adapter vs merged model throughput, each deployed by `model-garden deploy` on its own GPU.

    python3 bench/gpu/bench_lora.py --out $OUT [--levels 8,64] [--eager] [--gpus 2,3]

gpu-merged is gpu-llama with gpu-lora-a merged in, so both serve the same function; the adapter
deployment computes the LoRA path at run time (vLLM's punica kernels). Results: $OUT/lora.json.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_serve  # noqa: E402
from serve_common import log, mg, record, save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--levels", default="1,8,64")
    ap.add_argument("--eager", action="store_true")
    ap.add_argument("--scale", type=int, default=1, help="N x the requests of each timed run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gpus", default="0,1", help="GPU of the merged model, GPU of the adapter")
    args = ap.parse_args()
    flags = ["--enforce-eager"] if args.eager else []
    bench_serve.LEVELS = tuple(int(x) for x in args.levels.split(","))
    bench_serve.SCALE.update(requests=args.scale, rounds=args.rounds)
    g_merged, g_lora = args.gpus.split(",")
    R: dict = {"flags": flags, **bench_serve.SCALE, "gpus": {"merged": g_merged, "lora": g_lora}}
    starts = {}

    def start(name, uri, gpu, port):
        starts[name] = mg("deploy", uri, "--name", name, "--port", str(port), "--gpu-memory-utilization", "0.85",
                          *flags, gpus=gpu)
    th = [threading.Thread(target=start, args=a) for a in (("bl-lora", "models:/gpu-lora-a@champion", g_lora, 8011),
                                                          ("bl-merged", "models:/gpu-merged@champion", g_merged, 8010))]
    for t in th:
        t.start()
    for t in th:
        t.join()
    R["starts"] = {k: {"rc": v["rc"], "seconds": v["seconds"], "stderr": v["stderr"][-800:]} for k, v in starts.items()}
    try:
        if record("bl-lora") and record("bl-merged"):
            R["lora_vs_merged"] = bench_serve.compare(("lora", 8011, "gpu-lora-a", int(g_lora)),
                                                      ("merged", 8010, "gpu-merged", int(g_merged)))
    finally:
        for name in ("bl-lora", "bl-merged"):
            if record(name):
                mg("deployments", "stop", name)
        save(args.out, "lora.json", R)
    log(str({k: v.get("ratio") for k, v in R.get("lora_vs_merged", {}).items()}))


if __name__ == "__main__":
    main()
