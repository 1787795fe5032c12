"""Generate small instruction datasets to start from (and for tests and the demo).

The tasks are simple and learnable by a tiny model in a few dozen steps: answers follow from the
instruction by a fixed rule, so a falling loss means the model learnt something.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
_ANIMALS = ["cat", "dog", "fox", "owl", "bee", "cow", "eel", "yak"]
_WORDS = ["apple", "river", "cloud", "stone", "music", "light", "green", "sugar", "table", "ocean"]


def sample_records(n: int = 64, seed: int = 0) -> list[dict]:
    """``n`` instruction records: {"instruction", "input", "output"}."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            word = rng.choice(_WORDS)
            out.append({"instruction": "Reverse the word.", "input": word, "output": word[::-1]})
        elif kind == 1:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            out.append({"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b)})
        elif kind == 2:
            colour, animal = rng.choice(_COLOURS), rng.choice(_ANIMALS)
            out.append({"instruction": "Describe the animal in one sentence.",
                        "input": f"a {colour} {animal}",
                        "output": f"The {animal} is {colour} and it is happy."})
        else:
            word = rng.choice(_WORDS)
            out.append({"instruction": "Spell the word with dashes.", "input": word,
                        "output": "-".join(word)})
    return out


def to_messages(rec: dict) -> dict:
    user = rec["instruction"] + (("\n" + rec["input"]) if rec.get("input") else "")
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": rec["output"]}]}


def write_sample(path: str | Path, n: int = 64, fmt: str = "instruction", seed: int = 0) -> Path:
    """Write ``n`` sample records as JSONL in ``fmt`` (instruction or messages)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = sample_records(n, seed)
    if fmt == "messages":
        records = [to_messages(r) for r in records]
    with path.open("w") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    return path


# ---------------------------------------------------------------- preference data

PREFERENCE_KINDS = ("pairs", "unpaired", "sft")


def preference_records(n: int = 64, seed: int = 0, kind: str = "pairs") -> list[dict]:
    """``n`` records of one learnable preference: asked for the colour of "a red fox", the colour is the
    better answer and the animal the worse one (both one word, so the summed log-probabilities of the
    two answers compare like for like).

    ``pairs``: {prompt, chosen, rejected} (DPO, ORPO, SimPO); ``unpaired``: {prompt, completion, label}
    with good and bad answers alternating (KTO); ``sft``: instruction records answered with the colour
    or the animal, half and half (an SFT starting point that knows the answer's form but holds no
    preference)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        colour, animal = rng.choice(_COLOURS), rng.choice(_ANIMALS)
        prompt = f"Name the colour: a {colour} {animal}"
        if kind == "pairs":
            out.append({"prompt": prompt, "chosen": colour, "rejected": animal})
        elif kind == "unpaired":
            good = i % 2 == 0
            out.append({"prompt": prompt, "completion": colour if good else animal, "label": good})
        else:
            out.append({"instruction": prompt, "output": colour if i % 2 == 0 else animal})
    return out


def write_preference_sample(path: str | Path, n: int = 64, kind: str = "pairs", seed: int = 0) -> Path:
    """Write ``n`` :func:`preference_records` of ``kind`` as JSONL."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for rec in preference_records(n, seed, kind):
            fh.write(json.dumps(rec) + "\n")
    return path
