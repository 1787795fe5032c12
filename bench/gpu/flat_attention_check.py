"""Flattened (padding-free) rows through FlexAttention vs padded rows through SDPA, on one GPU.

Needs only torch and transformers (no Unsloth, TRL or Model Garden), so it runs on a bare GPU image:

1. correctness: one batch of variable-length examples, flattened with restarting ``position_ids``
   (FlexAttention) and padded with an attention mask (SDPA), same random-init model: loss and the
   gradients of every weight must agree to bf16 rounding;
2. speed: forward + backward of a Llama-3.2-1B-shaped model (random init, bf16) on the same stream of
   variable-length batches, padded to a multiple of 64 (SDPA) vs flattened (FlexAttention) vs
   fixed-length rows (SDPA), real tokens/s over the timed steps (CUDA-synchronised window).

    python bench/gpu/flat_attention_check.py [--steps 30] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time


def lengths(n: int, lo: int, hi: int, rng: random.Random) -> list[int]:
    return [int(math.exp(rng.uniform(math.log(lo), math.log(hi)))) for _ in range(n)]


def padded(rows, multiple: int, device):
    import torch

    width = max(len(r) for r in rows)
    width = -(-width // multiple) * multiple if multiple else width
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def flat(rows, device):
    import torch

    ids = torch.tensor([t for r in rows for t in r])[None]
    pos = torch.cat([torch.arange(len(r)) for r in rows])[None]
    labels = ids.clone()
    labels[pos == 0] = -100  # no example predicts the first token of the next one
    return {"input_ids": ids.to(device), "position_ids": pos.to(device), "labels": labels.to(device)}


def loss_of(model, batch, n_targets):
    import torch.nn.functional as F

    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits.float()
    labels = batch["labels"]
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100, reduction="sum") / n_targets


def model_of(cfg_kwargs, attn, seed=0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg_kwargs)).to("cuda", torch.bfloat16)
    model.set_attn_implementation(attn)
    return model


def check(rng) -> dict:
    """Loss and gradients of the two layouts on one small random model (bf16)."""
    import torch

    small = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024)
    rows = [[rng.randrange(1, 1024) for _ in range(n)] for n in lengths(8, 16, 400, rng)]
    out = {}
    grads = {}
    for attn, batch in (("sdpa", padded(rows, 64, "cuda")), ("flex_attention", flat(rows, "cuda"))):
        model = model_of(small, attn)
        n = int(batch["labels"][:, 1:].ne(-100).sum())
        loss = loss_of(model, batch, n)
        loss.backward()
        out[attn] = {"loss": float(loss), "targets": n}
        grads[attn] = torch.cat([p.grad.float().flatten() for p in model.parameters()])
    g0, g1 = grads["sdpa"], grads["flex_attention"]
    out["grad_rel_diff"] = float((g0 - g1).norm() / g0.norm())
    out["loss_rel_diff"] = abs(out["sdpa"]["loss"] - out["flex_attention"]["loss"]) / out["sdpa"]["loss"]
    out["ok"] = out["grad_rel_diff"] < 2e-2 and out["loss_rel_diff"] < 1e-2 and \
        out["sdpa"]["targets"] == out["flex_attention"]["targets"]
    return out


def speed(rng, steps: int, warmup: int, batch: int, seq: int) -> dict:
    import torch

    one_b = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=seq,
                 tie_word_embeddings=True, rope_theta=500000.0)
    stream = [[[rng.randrange(1, 128000) for _ in range(n)] for n in lengths(batch, 64, seq - 1, rng)]
              for _ in range(steps)]
    fixed = [[[rng.randrange(1, 128000) for _ in range(seq - 1)] for _ in range(batch)] for _ in range(steps)]
    results = {}
    for name, attn, rows_of, make in (
            ("fixed-sdpa", "sdpa", fixed, lambda r: padded(r, 0, "cuda")),
            ("var-padded64-sdpa", "sdpa", stream, lambda r: padded(r, 64, "cuda")),
            ("var-flat-flex", "flex_attention", stream, lambda r: flat(r, "cuda"))):
        model = model_of(one_b, attn)
        opt = torch.optim.SGD(model.parameters(), lr=1e-6)
        real, t0, first = 0, None, time.perf_counter()
        for step, rows in enumerate(rows_of):
            if step == warmup:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
            b = make(rows)
            n = int(b["labels"][:, 1:].ne(-100).sum())
            loss_of(model, b, n).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step >= warmup:
                real += sum(len(r) for r in rows)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        results[name] = {"tokens_per_s": real / seconds, "s_per_step": seconds / (steps - warmup),
                         "warmup_s": t0 - first}
        del model, opt
        torch.cuda.empty_cache()
    base = results["fixed-sdpa"]["tokens_per_s"]
    for r in results.values():
        r["vs_fixed"] = r["tokens_per_s"] / base
    return results


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    import torch
    import transformers

    rng = random.Random(0)
    res = {"torch": torch.__version__, "transformers": transformers.__version__,
           "card": torch.cuda.get_device_name(), "check": check(rng)}
    print(json.dumps(res["check"]), flush=True)
    res["speed"] = speed(rng, a.steps, a.warmup, a.batch, a.seq)
    for name, r in res["speed"].items():
        print(f"{name:20s} {r['tokens_per_s']:9,.0f} tok/s  {r['s_per_step']:.3f} s/step  "
              f"{r['vs_fixed']:.2f}x fixed  (warm-up {r['warmup_s']:.1f} s)", flush=True)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    main()
