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


def answer_loss(model, tokenizer, examples, batch_size: int = 8, max_length: int = 2048) -> tuple[float, int]:
    """(mean loss per answer token, answer tokens counted) over ``examples``."""
    import torch

    rows = []
    for ex in examples:
        prompt = _ids(tokenizer, render(tokenizer, ex.prompt, True))
        full = _ids(tokenizer, render(tokenizer, ex.prompt + [{"role": "assistant", "content": ex.reference}], False))
        if full[:len(prompt)] != prompt:  # templates that rewrite earlier turns: fall back to concatenation
            full = prompt + _ids(tokenizer, ex.reference + (tokenizer.eos_token or ""))
        full = full[:max_length]
        labels = [-100] * min(len(prompt), len(full)) + full[len(prompt):]
        rows.append((full, labels))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in chunk], device=device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in chunk], device=device)
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chunk], device=device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                                     shift_labels.reshape(-1), ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((shift_labels != -100).sum())
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
