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
