"""The machine's NVIDIA GPUs (via ``nvidia-smi``) and the tensor-parallel size planned from them.

``inventory()`` lists the GPUs this process may use (``CUDA_VISIBLE_DEVICES`` respected), with their
memory; an empty list when there is no NVIDIA driver. ``plan_tensor_parallel`` picks the fewest GPUs
whose share of the weights, plus a working reserve, fits the memory vLLM is allowed to take on each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from mg_mlflow.errors import MGError

DEFAULT_UTILIZATION = 0.92           # vLLM's --gpu-memory-utilization default (0.26: 0.92)
RESERVE_BYTES = 1 << 30              # activations, CUDA graphs and a minimal KV cache per GPU


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    memory_total: int                # bytes
    memory_used: int                 # bytes


def parse_nvidia_smi(text: str, visible: str | None = None) -> list[GPU]:
    """GPUs from ``nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader,nounits``
    output, restricted to ``visible`` (a CUDA_VISIBLE_DEVICES value of indices) when given."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        gpus.append(GPU(int(parts[0]), parts[1], int(float(parts[2])) << 20, int(float(parts[3])) << 20))
    if visible is not None and visible.strip() != "":
        wanted = [v.strip() for v in visible.split(",")]
        if all(v.isdigit() for v in wanted):
            by_index = {g.index: g for g in gpus}
            gpus = [by_index[int(v)] for v in wanted if int(v) in by_index]
    return gpus


def inventory() -> list[GPU]:
    """The GPUs this process may use; [] without nvidia-smi or a driver."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,memory.total,memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return parse_nvidia_smi(out.stdout, os.environ.get("CUDA_VISIBLE_DEVICES"))


def plan_tensor_parallel(weight_bytes: int, gpus: list[GPU], requested: int | None = None,
                         utilization: float | None = None, num_heads: int | None = None) -> tuple[int | None, str]:
    """(tensor-parallel size, why). ``requested`` is checked against the machine; without it the
    smallest power of two whose weight share + reserve fits ``utilization`` of each GPU's memory
    (and divides the attention heads). (None, why) when there are no GPUs to plan from."""
    if requested is not None:
        if requested < 1:
            raise MGError(f"--tensor-parallel-size {requested}: must be at least 1")
        if gpus and requested > len(gpus):
            raise MGError(f"--tensor-parallel-size {requested} but this machine has {len(gpus)} usable GPU(s) "
                          f"({', '.join(str(g.index) for g in gpus)})",
                          hint=f"use --tensor-parallel-size {len(gpus)} or fewer, or check CUDA_VISIBLE_DEVICES")
        if num_heads and num_heads % requested:
            raise MGError(f"--tensor-parallel-size {requested} does not divide the model's {num_heads} "
                          "attention heads", hint="pick a divisor of the head count")
        return requested, "given"
    if not gpus:
        return None, "no NVIDIA GPU found"
    util = utilization or DEFAULT_UTILIZATION
    budget = min(g.memory_total for g in gpus) * util
    tp = 1
    while tp <= len(gpus):
        if (not num_heads or num_heads % tp == 0) and weight_bytes / tp + RESERVE_BYTES <= budget:
            gib = 2**30
            return tp, (f"{weight_bytes / gib:.2f} GiB of weights over {tp} GPU(s): "
                        f"{weight_bytes / tp / gib:.2f} GiB + {RESERVE_BYTES / gib:.0f} GiB reserve each, "
                        f"budget {budget / gib:.2f} GiB per GPU ({util:g} of {min(g.memory_total for g in gpus) / gib:.0f} GiB)")
        tp *= 2
    raise MGError(f"the weights ({weight_bytes / 2**30:.2f} GiB) do not fit {len(gpus)} GPU(s) at "
                  f"--gpu-memory-utilization {util:g} ({budget / 2**30:.2f} GiB each)",
                  hint="quantize the model (FP8/INT4), raise --gpu-memory-utilization, or use more GPUs")
