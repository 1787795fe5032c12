"""Generate small instruction datasets to start from (and for tests and the demo).

The tasks are simple and learnable by a tiny model in a few dozen steps: answers follow from the
instruction by a fixed rule, so a falling loss means the model learnt something.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from mg_mlflow.data.split import beside, split_records, write_jsonl

_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
_ANIMALS = ["cat", "dog", "fox", "owl", "bee", "cow", "eel", "yak"]
_WORDS = ["apple", "river", "cloud", "stone", "music", "light", "green", "sugar", "table", "ocean"]


# The tasks, in the order a mixed sample cycles through them.
TASKS = ("reverse", "add", "describe", "spell")


def sample_records(n: int = 64, seed: int = 0, task: str = "mixed") -> list[dict]:
    """``n`` instruction records: {"instruction", "input", "output"}; ``task`` one of TASKS, or
    ``mixed`` (the four in turn). ``describe`` (copy two words of the input into a fixed sentence) is
    the one the tiny model learns in ~200 CPU steps."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 4 if task == "mixed" else TASKS.index(task)
        if kind == 0:
            word = rng.choice(_WORDS)
            out.append({"instruction": "Reverse the word.", "input": word, "output": word[::-1]})
        elif kind == 1:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            out.append({"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b)})
        elif kind == 2:
            out.append(_describe(rng.choice(_COLOURS), rng.choice(_ANIMALS)))
        else:
            word = rng.choice(_WORDS)
            out.append({"instruction": "Spell the word with dashes.", "input": word,
                        "output": "-".join(word)})
    return out


def _describe(colour: str, animal: str) -> dict:
    return {"instruction": "Describe the animal in one sentence.", "input": f"a {colour} {animal}",
            "output": f"The {animal} is {colour} and it is happy."}


def unseen_describe_records(seen: list[dict]) -> list[dict]:
    """Every ``describe`` record (one per colour and animal) whose input is not among ``seen``'s: a
    held-out set of pairs a model trained on ``seen`` never met."""
    inputs = {rec.get("input") for rec in seen}
    every = [_describe(colour, animal) for animal in _ANIMALS for colour in _COLOURS]
    return [rec for rec in every if rec["input"] not in inputs]


def to_messages(rec: dict) -> dict:
    user = rec["instruction"] + (("\n" + rec["input"]) if rec.get("input") else "")
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": rec["output"]}]}


def write_sample(path: str | Path, n: int = 64, fmt: str = "instruction", seed: int = 0,
                 task: str = "mixed") -> Path:
    """Write ``n`` sample records of ``task`` as JSONL in ``fmt`` (instruction or messages)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = sample_records(n, seed, task)
    if fmt == "messages":
        records = [to_messages(r) for r in records]
    with path.open("w") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    return path


def write_split_sample(path: str | Path, heldout: str | Path | None, fraction: float, n: int = 64,
                       fmt: str = "instruction", seed: int = 0, task: str = "mixed") -> tuple[Path, int, Path, int]:
    """``n`` sample records split into a training file and a held-out file that share no record
    (:func:`mg_mlflow.data.split.split_records`). Returns (train path, records, held-out path, records)."""
    records = sample_records(n, seed, task)
    if fmt == "messages":
        records = [to_messages(r) for r in records]
    train, held = split_records(records, fraction, seed)
    path = Path(path)
    held_path = Path(heldout) if heldout else beside(path, "heldout")
    write_jsonl(path, train)
    write_jsonl(held_path, held)
    return path, len(train), held_path, len(held)


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


def prompt_records(n: int = 64, seed: int = 0) -> list[dict]:
    """``n`` prompts for reinforcement learning: ``{"prompt": "Shout the word: river", "answer": "RIVER"}``
    (the ``answer`` column is what ``--reward exact_match`` / ``contains`` compare with)."""
    rng = random.Random(seed)
    words = _WORDS + _COLOURS + _ANIMALS
    return [{"prompt": f"Shout the word: {w}", "answer": w.upper()} for w in (rng.choice(words) for _ in range(n))]


def write_prompt_sample(path: str | Path, n: int = 64, seed: int = 0) -> Path:
    """Write ``n`` :func:`prompt_records` as JSONL."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for rec in prompt_records(n, seed):
            fh.write(json.dumps(rec) + "\n")
    return path
