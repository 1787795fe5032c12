"""In-process evaluation: teacher-forced loss on the answers and batched greedy generation.

The loss uses the training masking (TRL's completion-only loss on prompt/completion rows): the
prompt is the chat template with the generation prompt, the answer is what the full conversation
adds after it (answer text plus the end-of-turn tokens); only answer tokens count. The figure is the
token-weighted mean over the whole set, and perplexity is its exponential.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class Generations:
    texts: list[str]
    seconds: float                                   # wall time of all generation
    output_tokens: int = 0
    latencies: list[float] = field(default_factory=list)  # per request (remote only)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def answer_row(tokenizer, prompt_turns: list[dict], answer: str, max_length: int = 2048) -> tuple[list, list]:
    """(token ids, labels) of prompt + answer: the labels are -100 on the prompt, the ids elsewhere."""
    prompt = _ids(tokenizer, render(tokenizer, prompt_turns, True))
    full = _ids(tokenizer, render(tokenizer, prompt_turns + [{"role": "assistant", "content": answer}], False))
    if full[:len(prompt)] != prompt:  # templates that rewrite earlier turns: fall back to concatenation
        full = prompt + _ids(tokenizer, answer + (tokenizer.eos_token or ""))
    full = full[:max_length]
    return full, [-100] * min(len(prompt), len(full)) + full[len(prompt):]


def answer_logps(model, tokenizer, items: list[tuple[list[dict], str]], batch_size: int = 8,
                 max_length: int = 2048) -> list[tuple[float, int]]:
    """(sum of the answer tokens' log-probabilities, answer tokens) for each (prompt turns, answer)."""
    import torch

    rows = [answer_row(tokenizer, prompt, answer, max_length) for prompt, answer in items]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in chunk], device=device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in chunk], device=device)
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chunk], device=device)
            logps = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float()[:, :-1], dim=-1)
            target = labels[:, 1:]
            keep = target != -100
            picked = torch.gather(logps, 2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
            out += [(float(s), int(n)) for s, n in zip(picked.sum(-1), keep.sum(-1))]
    return out


def preference_metrics(model, tokenizer, examples, batch_size: int = 8) -> dict[str, float]:
    """On held-out pairs: how often the chosen answer gets the higher log-probability than the rejected
    one, summed over its tokens (``eval/preference_accuracy``) and per token
    (``eval/preference_accuracy_normalized``, fair to answers of different lengths), and the mean
    difference of the summed log-probabilities (``eval/preference_margin``, > 0: chosen preferred).
    A tie counts as half."""
    chosen = answer_logps(model, tokenizer, [(ex.prompt, ex.reference) for ex in examples], batch_size)
    rejected = answer_logps(model, tokenizer, [(ex.prompt, ex.rejected) for ex in examples], batch_size)

    def wins(a: float, b: float) -> float:
        return 1.0 if a > b else 0.5 if a == b else 0.0

    raw = [wins(c[0], r[0]) for c, r in zip(chosen, rejected)]
    per_token = [wins(c[0] / max(c[1], 1), r[0] / max(r[1], 1)) for c, r in zip(chosen, rejected)]
    n = len(examples)
    return {"eval/preference_accuracy": sum(raw) / n, "eval/preference_accuracy_normalized": sum(per_token) / n,
            "eval/preference_margin": sum(c[0] - r[0] for c, r in zip(chosen, rejected)) / n,
            "eval/preference_pairs": float(n)}


def answer_loss(model, tokenizer, examples, batch_size: int = 8, max_length: int = 2048) -> tuple[float, int]:
    """(mean loss per answer token, answer tokens counted) over ``examples``."""
    scored = answer_logps(model, tokenizer, [(ex.prompt, ex.reference) for ex in examples], batch_size, max_length)
    total, count = -sum(s for s, _ in scored), sum(n for _, n in scored)
    return (total / count if count else float("nan")), count


def loss_metrics(model, tokenizer, examples, batch_size: int = 8) -> dict[str, float]:
    loss, tokens = answer_loss(model, tokenizer, examples, batch_size)
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 700.0)), "eval/answer_tokens": float(tokens)}


def generate(model, tokenizer, examples, max_new_tokens: int, batch_size: int = 16, progress=None) -> Generations:
    """Greedy answers for ``examples`` in left-padded batches (what a deployment's chat endpoint does)."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts, produced = [], 0
    device = next(model.parameters()).device
    started = time.perf_counter()
    try:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            prompts = [render(tokenizer, ex.prompt, True) for ex in chunk]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            for row in new:
                ids = [t for t in row.tolist() if t != tokenizer.pad_token_id]
                eos = tokenizer.eos_token_id
                if eos in ids:
                    ids = ids[:ids.index(eos) + 1]
                produced += len(ids)
                texts.append(tokenizer.decode(ids, skip_special_tokens=True))
            if progress is not None:
                progress(len(texts), len(examples))
    finally:
        tokenizer.padding_side = side
    return Generations(texts, time.perf_counter() - started, produced)
