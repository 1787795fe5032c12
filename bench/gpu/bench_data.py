"""Seeded bench datasets whose token lengths are known exactly, in both forms.

Two shapes (``shape``):

- ``fixed``: every row is exactly ``seq - 1`` tokens once the chat template is applied: no padding whatever the batching;
- ``var``: instruction rows whose total length is drawn log-uniformly between ``min_len`` and
  ``seq - 1`` (a long tail of short answers and a few long ones, as in real instruction sets; median
  ~180 tokens for 64..511): padded batches spend most slots on padding, padding-free/packed do not.

Each row is ``{"instruction", "input", "output"}`` (what `model-garden train` reads), and the same
rows go through Model Garden's own record conversion (``mg_mlflow.data.load``: instruction -> chat
messages -> TRL prompt/completion) into a second JSONL that bare_trl.py reads, so bare and platform
tokenize the very same text. Lengths are measured with the model's tokenizer and chat template,
exactly as TRL tokenizes a conversational prompt/completion row.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from mg_mlflow.data.formats import normalise_record

INSTRUCTION = "Summarise the text."


def _vocab() -> list[str]:
    from mg_mlflow.data.sample import _ANIMALS, _COLOURS, _WORDS

    return _WORDS + _ANIMALS + _COLOURS + ["the", "and", "is", "a", "of", "to", "in", "it"]


def prompt_completion(norm: dict) -> dict:
    """TRL's conversational prompt/completion row of a normalised record: the loss on the last turn."""
    return {"prompt": norm["messages"][:-1], "completion": norm["messages"][-1:]}


def row_tokens(tok, record: dict) -> int:
    """Tokens of the record's full conversation, as TRL trains it (prompt + completion)."""
    norm, problem, _ = normalise_record(record, "instruction")  # the loader's own conversion
    if problem:
        raise ValueError(problem)
    row = prompt_completion(norm)
    return len(tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=False))


class _Lengths:
    """Token count of a record, cached by word so a row is built in a few tokenizer calls."""

    def __init__(self, tok):
        self.tok = tok
        empty = {"instruction": INSTRUCTION, "input": "x", "output": "x"}
        self.base = row_tokens(tok, empty) - 2 * self.word("x")
        self.cache: dict[str, int] = {}

    def word(self, w: str) -> int:
        return len(self.tok(" " + w, add_special_tokens=False)["input_ids"])


def make_record(tok, lengths: _Lengths, target: int, rng: random.Random, vocab: list[str]) -> dict:
    """A record of exactly ``target`` tokens (prompt ~70%, answer ~30%), built word by word and then
    checked with the real template; a one-token filler word closes any gap."""
    words_in, words_out = [], []
    budget_out = max(4, int((target - lengths.base) * 0.3))
    budget_in = target - lengths.base - budget_out
    for words, budget in ((words_in, budget_in), (words_out, budget_out)):
        used = 0
        while used < budget - 3:
            w = rng.choice(vocab)
            cost = lengths.cache.setdefault(w, lengths.word(w))
            if used + cost > budget:
                break
            words.append(w)
            used += cost
    filler = next(w for w in vocab if lengths.cache.setdefault(w, lengths.word(w)) == 1)
    record = {"instruction": INSTRUCTION, "input": " ".join(words_in), "output": " ".join(words_out) or filler}
    for _ in range(64):
        n = row_tokens(tok, record)
        if n == target:
            return record
        if n < target:
            words_in.append(filler)
        elif len(words_in) > 1:
            words_in.pop()
        else:
            break
        record["input"] = " ".join(words_in)
    raise ValueError(f"could not build a row of exactly {target} tokens (got {row_tokens(tok, record)})")


def target_lengths(shape: str, rows: int, seq: int, min_len: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    if shape == "fixed":
        return [seq - 1] * rows
    if shape == "var":
        lo, hi = math.log(min_len), math.log(seq - 1)
        return [int(round(math.exp(rng.uniform(lo, hi)))) for _ in range(rows)]
    raise ValueError(f"unknown data shape {shape!r} (fixed or var)")


def build(model_dir: str | Path, out_dir: str | Path, shape: str, rows: int, seq: int,
          min_len: int = 64, seed: int = 0) -> dict:
    """Write ``<shape>.jsonl`` (instruction rows) and ``<shape>.pc.jsonl`` (TRL prompt/completion
    rows); return their paths and the length statistics (measured, not targeted)."""
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path, pc_path = out / f"{shape}.jsonl", out / f"{shape}.pc.jsonl"
    stats_path = out / f"{shape}.stats.json"
    if path.is_file() and pc_path.is_file() and stats_path.is_file():
        return json.loads(stats_path.read_text())
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    lengths, vocab, rng = _Lengths(tok), _vocab(), random.Random(seed + 1)
    min_len = max(min_len, lengths.base + 8)
    records, measured = [], []
    for target in target_lengths(shape, rows, seq, min_len, seed):
        target = max(target, min_len)
        rec = make_record(tok, lengths, target, rng, vocab)
        records.append(rec)
        measured.append(target)
    with path.open("w") as fh, pc_path.open("w") as pc:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
            norm, _, _ = normalise_record(rec, "instruction")
            pc.write(json.dumps(prompt_completion(norm)) + "\n")
    srt = sorted(measured)
    stats = {"shape": shape, "rows": rows, "data": str(path), "pc_data": str(pc_path), "seq": seq,
             "min_tokens": srt[0], "median_tokens": srt[len(srt) // 2], "max_tokens": srt[-1],
             "mean_tokens": sum(srt) / len(srt),
             # a token attends within its own row: the mean length it sees, for attention FLOP
             "attn_mean_seq": sum(n * n for n in srt) / sum(srt), "seed": seed}
    stats_path.write_text(json.dumps(stats, indent=1))
    return stats


# ---- preference pairs (the dpo group): prompt + chosen + rejected

PREF_SYSTEM = "Answer the question about the text."


def pair_tokens(tok, row: dict) -> tuple[int, int]:
    """Tokens of (prompt + chosen, prompt + rejected) through the chat template, as TRL's DPO trainer
    tokenizes a conversational pair (one row each; the prompt is counted in both)."""
    return tuple(len(tok.apply_chat_template(row["prompt"] + row[side], tokenize=True, return_dict=False))
                 for side in ("chosen", "rejected"))


def _words(tok, lengths: _Lengths, target: int, rng: random.Random, vocab: list[str]) -> str:
    words, used = [], 0
    while used < target:
        w = rng.choice(vocab)
        used += lengths.cache.setdefault(w, lengths.word(w))
        words.append(w)
    return " ".join(words)


def build_preference(model_dir: str | Path, out_dir: str | Path, rows: int, seq: int, seed: int = 0) -> dict:
    """``pref.jsonl``: ``{"prompt", "chosen", "rejected"}`` as messages (what `model-garden train
    --objective dpo` reads) and ``pref.pc.jsonl`` (the same rows through Model Garden's own
    normalisation, what bare TRL reads). Lengths in tokens, log-uniform: prompt 48-240, each answer
    24-208 (chosen and rejected drawn apart), so prompt + answer stays under ``seq`` (nothing is
    truncated on either side); the stats give the measured rows (prompt + answer, template included)."""
    from transformers import AutoTokenizer

    from mg_mlflow.data.preference import normalise_preference

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path, pc_path, stats_path = out / "pref.jsonl", out / "pref.pc.jsonl", out / "pref.stats.json"
    if path.is_file() and pc_path.is_file() and stats_path.is_file():
        return json.loads(stats_path.read_text())
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    lengths, vocab, rng = _Lengths(tok), _vocab(), random.Random(seed + 7)
    hi_p, hi_a = min(240, seq // 2), min(208, seq // 2 - 48)
    lo_p, lo_a = min(48, hi_p // 2), min(24, hi_a // 2)

    def draw(lo, hi):
        return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))

    measured = []
    with path.open("w") as fh, pc_path.open("w") as pc:
        for _ in range(rows):
            record = {"prompt": [{"role": "system", "content": PREF_SYSTEM},
                                 {"role": "user", "content": _words(tok, lengths, draw(lo_p, hi_p), rng, vocab)}],
                      "chosen": [{"role": "assistant", "content": _words(tok, lengths, draw(lo_a, hi_a), rng, vocab)}],
                      "rejected": [{"role": "assistant",
                                    "content": _words(tok, lengths, draw(lo_a, hi_a), rng, vocab)}]}
            norm, problem = normalise_preference(record)
            if problem:
                raise ValueError(problem)
            row = {k: norm[k] for k in ("prompt", "chosen", "rejected")}
            measured += pair_tokens(tok, row)
            fh.write(json.dumps(record) + "\n")
            pc.write(json.dumps(row) + "\n")
    srt = sorted(measured)
    if srt[-1] >= seq:
        raise ValueError(f"a preference row of {srt[-1]} tokens would be truncated at seq={seq}")
    stats = {"shape": "pref", "rows": rows, "data": str(path), "pc_data": str(pc_path), "seq": seq,
             "min_tokens": srt[0], "median_tokens": srt[len(srt) // 2], "max_tokens": srt[-1],
             "mean_tokens": sum(srt) / len(srt), "pair_tokens_total": sum(srt),
             "attn_mean_seq": sum(n * n for n in srt) / sum(srt), "seed": seed}
    stats_path.write_text(json.dumps(stats, indent=1))
    return stats
