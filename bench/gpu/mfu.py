"""Model FLOP utilisation (MFU) for the training bench: the arithmetic, the parameter count and the
card's peak, measured in the same call.

Convention (PaLM/Chinchilla style): one trained token costs ``6 * N``
FLOP, 2N forward + 4N backward, where ``N`` is the parameter count of the BASE model, frozen weights
included, the tied embedding counted once, LoRA's own ~0.5% left out:

- frozen weights still cost their forward matmul and the backward matmul that carries the gradient to
  the activations below; only their weight-gradient matmul (2N of the 4N) is skipped by LoRA. So for
  LoRA the work the chip must do is nearer 4N; 6N is the convention every published MFU uses, and
  ``mfu_4n = mfu * 4/6`` is reported beside it so nobody mistakes one for the other;
- the embedding matrix counts because with tied weights it is also the LM head, a real
  ``hidden x vocab`` matmul per token (128256 x 2048 on the Llama-3.2-1B shape: 21% of N);
- attention's own ``12 * layers * hidden * seq`` FLOP per token (the QK^T and AV products) is not
  in 6N; :func:`attention_flops_per_token` gives it (~2.7% of 6N at 512 tokens on the 1B shape);
- gradient checkpointing recomputes the forward (another 2N of hardware work) that 6N does not count:
  MFU measures useful model FLOP, not what the hardware executed.

``peak`` is the card's dense bf16 matmul rate MEASURED by :func:`measure_peak` (a large bf16 matmul,
the median of several timed bursts), not the datasheet figure: an H100 SXM's datasheet says 989 TFLOP/s
dense bf16; torch's matmul reaches ~600-800 of it, and that is the ceiling a training step can see.
"""

from __future__ import annotations

import time


def matmul_flops(m: int, n: int | None = None, k: int | None = None) -> float:
    """FLOP of one (m x k) @ (k x n) product: 2*m*n*k (a multiply and an add per term)."""
    n = m if n is None else n
    k = m if k is None else k
    return 2.0 * m * n * k


def flops_per_token(n_params: float) -> float:
    """The 6N convention: training FLOP per token (forward 2N + backward 4N)."""
    return 6.0 * n_params


def attention_flops_per_token(layers: int, hidden: int, seq: float) -> float:
    """The attention-score FLOP per trained token that 6N leaves out: 12 * layers * hidden * seq
    (QK^T and AV, forward and backward, causal masking not discounted). ``seq``: the mean sequence
    length a token attends within (sum(L_i^2) / sum(L_i) over the rows)."""
    return 12.0 * layers * hidden * seq


def mfu(tokens_per_s: float, n_params: float, peak_flops: float) -> float:
    """Fraction of the measured peak that the 6N model FLOP of ``tokens_per_s`` reach."""
    if peak_flops <= 0:
        raise ValueError(f"peak must be > 0 FLOP/s, got {peak_flops}")
    return flops_per_token(n_params) * tokens_per_s / peak_flops


def mfu_fields(tokens_per_s: float | None, n_params: float | None, peak_flops: float | None) -> dict:
    """The MFU columns of a result row (empty when something is missing)."""
    if not tokens_per_s or not n_params or not peak_flops:
        return {}
    value = mfu(tokens_per_s, n_params, peak_flops)
    return {"model_tflops": flops_per_token(n_params) * tokens_per_s / 1e12, "mfu": value,
            "mfu_4n": value * 4 / 6}


def param_count(model_dir: str) -> dict:
    """Parameters of the model in ``model_dir`` without loading its weights (built on the meta
    device from config.json): total (tied embedding once), embedding, layers, hidden."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    embed = model.get_input_embeddings().weight.numel()
    text = cfg.get_text_config()
    return {"n_params": int(total), "n_embedding": int(embed), "layers": int(text.num_hidden_layers),
            "hidden": int(text.hidden_size), "tied_embeddings": bool(getattr(text, "tie_word_embeddings", False))}


def measure_peak(n: int = 8192, iters: int = 20, repeats: int = 5, dtype: str = "bfloat16",
                 device: str | None = None) -> dict:
    """Dense matmul rate of this device: ``repeats`` timed runs of ``iters`` products of two random
    n x n matrices (random, not zeros: zeros run faster on some chips); the median burst counts (one
    lucky burst does not set the ceiling), the best and the spread are kept beside it.
    CUDA: timed with events after a warm-up; CPU (for the smoke test): perf_counter."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dt = getattr(torch, dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dt, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dt, generator=gen)
    out = torch.empty(n, n, device=device, dtype=dt)
    cuda = device.startswith("cuda")
    for _ in range(3):  # warm-up: cuBLAS handle, kernel selection, clocks
        torch.matmul(a, b, out=out)
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                torch.matmul(a, b, out=out)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                torch.matmul(a, b, out=out)
            times.append(time.perf_counter() - t0)
    if not torch.isfinite(out.float()).all():
        raise RuntimeError("the peak matmul produced non-finite values")
    import statistics

    mid, best = statistics.median(times), min(times)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    return {"peak_flops": matmul_flops(n) * iters / mid, "peak_tflops": matmul_flops(n) * iters / mid / 1e12,
            "best_tflops": matmul_flops(n) * iters / best / 1e12,
            "spread": (max(times) - best) / mid, "statistic": "median",
            "n": n, "iters": iters, "repeats": repeats, "dtype": dtype, "device": name,
            "seconds": times}
