"""Unsloth's attention for flattened rows on one GPU: one varlen flash call vs one SDPA call per segment.

Model Garden opens Unsloth's varlen flash path where torch's public ``varlen_attn`` lacks
``enable_gqa`` (``mg_mlflow.training.batching.unsloth_flat_attention``). This checks, on random
grouped-query tensors of a Llama-3.2-1B layer (32 query heads, 8 K/V heads, head dim 64, bf16):

1. the gate: ``_torch_varlen_takes`` refused before, takes after;
2. correctness: output and the gradients of Q, K and V against a float32 per-segment reference
   (relative error; bf16 lands near 1e-3 .. 1e-2), beside Unsloth's per-segment SDPA path;
3. speed: forward + backward of one layer's attention, median of CUDA-event timings, for 8
   variable-length examples in one row (padding-free) and 8 packed bins of 512 (packed).

    python bench/gpu/unsloth_varlen_check.py [--out check.json]     # Unsloth importable, CUDA GPU
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def lengths_var(n: int, rng: random.Random, lo: int = 64, hi: int = 511) -> list[int]:
    return [int(math.exp(rng.uniform(math.log(lo), math.log(hi)))) for _ in range(n)]


def lengths_packed(bins: int, rng: random.Random, size: int = 512) -> list[int]:
    out = []
    for _ in range(bins):
        room = size
        while room >= 16:
            n = min(room, lengths_var(1, rng, 16, 511)[0])
            out.append(n)
            room -= n
    return out


def reference(q, k, v, lengths):
    """float32, per segment, K/V expanded: (1, T, H, D)."""
    import torch.nn.functional as F

    groups = q.shape[1] // k.shape[1]
    outs, start = [], 0
    for n in lengths:
        sl = slice(start, start + n)
        qs, ks, vs = (x[:, :, sl].float() for x in (q, k, v))
        ks, vs = ks.repeat_interleave(groups, 1), vs.repeat_interleave(groups, 1)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(1, 2))
        start += n
    import torch

    return torch.cat(outs, dim=1)


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def run_path(fn, q, k, v, grad):
    for x in (q, k, v):
        x.grad = None
    out = fn(q, k, v)
    out.backward(grad)
    return out.detach(), [x.grad.detach().clone() for x in (q, k, v)]


def timed(fn, q, k, v, grad, reps: int = 30) -> float:
    import torch

    for _ in range(5):
        run_path(fn, q, k, v, grad)
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run_path(fn, q, k, v, grad)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="")
    return check(p.parse_args().out)


def check(out: str = "") -> dict:
    """The gate, the errors and the timings above as one dict (``ok``: gate open, errors < 2e-2)."""
    import unsloth  # noqa: F401  - before transformers
    import torch
    from unsloth.utils import attention_dispatch as ad
    from unsloth.utils.packing import get_packed_info_from_kwargs

    from mg_mlflow.training.batching import unsloth_flat_attention

    dev = torch.device("cuda")
    H, KV, D = 32, 8, 64
    rng = random.Random(0)
    torch.manual_seed(0)
    result = {"torch": torch.__version__, "card": torch.cuda.get_device_name(0),
              "unsloth_varlen_before": ad._TORCH_VARLEN_ATTN is not None}
    probe = torch.randn(1, H, 256, D, device=dev, dtype=torch.bfloat16)
    probe_kv = torch.randn(1, KV, 256, D, device=dev, dtype=torch.bfloat16)
    result["takes_before"] = bool(ad._torch_varlen_takes(probe, probe_kv, probe_kv, {}, True, None))
    result["mode"] = unsloth_flat_attention("packed", "unsloth")
    result["takes_after"] = bool(ad._torch_varlen_takes(probe, probe_kv, probe_kv, {}, True, None))
    for name, lengths in (("padding_free", lengths_var(8, rng)), ("packed", lengths_packed(8, rng))):
        total = sum(lengths)
        q = torch.randn(1, H, total, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(1, KV, total, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(1, KV, total, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn(1, total, H, D, device=dev, dtype=torch.bfloat16)
        info = get_packed_info_from_kwargs({"packed_seq_lengths": torch.tensor(lengths, dtype=torch.int32)}, dev)
        segs = tuple(lengths)
        beats = bool(ad._torch_varlen_beats_segments(q, k, segs, H // KV, True))

        def varlen(q, k, v):
            return ad._torch_varlen_packed(q, k, v, info, n_groups=H // KV, is_causal=True, sliding_window=None,
                                           scale=None)

        def segments(q, k, v):
            return ad._sdpa_packed_segments(q, k, v, segs, n_groups=H // KV, is_causal=True, sliding_window=None,
                                            sdpa_kwargs={}, training=True)

        qf, kf, vf = (x.detach().float().requires_grad_() for x in (q, k, v))
        ref_out = reference(qf, kf, vf, lengths)
        ref_out.backward(grad.float())
        ref_grads = [qf.grad, kf.grad, vf.grad]
        row = {"n_segments": len(lengths), "tokens": total, "varlen_beats_segments": beats}
        for label, fn in (("varlen", varlen), ("segments", segments)):
            out, grads = run_path(fn, q, k, v, grad)
            row[label] = {"out_rel_err": rel(out, ref_out), "grad_rel_err": [rel(g, r) for g, r in zip(grads, ref_grads)],
                          "finite": bool(torch.isfinite(out).all()), "ms_fwd_bwd": timed(fn, q, k, v, grad)}
        row["speedup"] = row["segments"]["ms_fwd_bwd"] / row["varlen"]["ms_fwd_bwd"]
        result[name] = row
    worst = max(max([r[p]["out_rel_err"], *r[p]["grad_rel_err"]]) for r in (result["padding_free"], result["packed"])
                for p in ("varlen",))
    result["ok"] = result["takes_after"] and worst < 2e-2 and result["packed"]["varlen"]["finite"]
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        Path(out).write_text(text)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
