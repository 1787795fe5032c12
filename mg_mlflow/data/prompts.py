"""Prompt datasets for reinforcement learning (GRPO) and reward evaluation, checked before any model.

A record is a prompt without an answer: ``{"prompt": "text"}`` (one user turn) or ``{"prompt": [turns]}``
ending with the user's turn, with an optional ``system`` prompt, plus any other columns (``answer``,
``keywords``, ...). The other columns are kept as they are and handed to every reward function by name,
as TRL's ``GRPOTrainer`` does; a column a built-in reward reads (e.g. ``answer`` for ``exact_match``)
must be present in every record (:func:`check_columns`). Every bad record is reported as ``file:line``.
"""

from __future__ import annotations

import json

from mg_mlflow.data.load import LoadedDataset, digest_records, source_rows
from mg_mlflow.data.preference import PROMPTS, SHAPES, prompt_turns, shape_of
from mg_mlflow.errors import DataError, MGError

# columns TRL fills itself when it calls a reward function: a dataset column of that name would clash
RESERVED = ("completion", "completions", "prompts", "completion_ids", "trainer_state", "log_extra", "log_metric",
            "environments")


def normalise_prompt(raw: object) -> tuple[dict | None, str | None]:
    """``{"prompt": [turns], **extra columns}`` or the problem."""
    if not isinstance(raw, dict):
        return None, f"expected an object, got {type(raw).__name__}"
    found = shape_of(raw)
    if found not in (PROMPTS, None) and "prompt" not in raw:
        return None, f"a record of {SHAPES[found]}: reinforcement learning needs {SHAPES[PROMPTS]}"
    clashing = [k for k in raw if k in RESERVED]
    if clashing:
        return None, (f"column {clashing[0]!r} clashes with what the trainer passes to reward functions "
                      f"({', '.join(RESERVED)}): rename it")
    turns, problem = prompt_turns(raw)
    if problem:
        return None, problem
    extra = {k: v for k, v in raw.items() if k not in ("prompt", "system", "conversations")}
    return {"prompt": turns, **extra}, None


def load_prompt_records(source: str, split: str = "train") -> LoadedDataset:
    """Load ``source`` as prompts; every bad record raised at once as file:line."""
    rows, problems, src, name = source_rows(source, split)
    records, locations = [], []
    for loc, raw in rows:
        rec, problem = normalise_prompt(raw)
        if problem:
            problems.append(f"{loc}: {problem}")
            continue
        records.append(rec)
        locations.append(loc)
    if not problems and records:
        problems = _uneven_columns(records, locations)
    if problems:
        raise DataError(problems, src, total=len(rows) + sum(1 for p in problems if "not valid JSON" in p))
    if not records:
        raise MGError(f"dataset {src} has no records", hint="an empty file cannot train a model")
    return LoadedDataset(records=records, source=src, name=name, fmt=PROMPTS, digest=digest_records(records),
                         locations=locations)


def _uneven_columns(records: list[dict], locations: list[str]) -> list[str]:
    """Every record carries the same extra columns (reward functions get one value per completion)."""
    first = set(records[0]) - {"prompt"}
    out = []
    for rec, loc in zip(records, locations):
        cols = set(rec) - {"prompt"}
        if cols != first:
            missing, more = sorted(first - cols), sorted(cols - first)
            what = (f"missing column(s) {', '.join(missing)}" if missing else "") + \
                   ("; " if missing and more else "") + (f"extra column(s) {', '.join(more)}" if more else "")
            out.append(f"{loc}: {what} (every record needs the columns of the first: "
                       f"{', '.join(sorted(first)) or 'none'})")
    return out


def check_columns(data: LoadedDataset, needed: dict[str, str]) -> None:
    """Refuse, naming the reward, a dataset without a column a reward reads (``needed``: column -> reward)."""
    have = set(data.records[0]) - {"prompt"}
    for column, reward in needed.items():
        if column not in have:
            raise MGError(f"reward {reward} compares each completion with the column {column!r}, which dataset "
                          f"{data.source} does not have (its columns: {', '.join(sorted(have)) or 'prompt only'})",
                          hint="add the column to every record, or name another with --reward-column")


def prompt_text(turns: list[dict]) -> str:
    """The last user turn (what sample tables show)."""
    users = [t["content"] for t in turns if t["role"] == "user"]
    return users[-1] if users else json.dumps(turns)[:200]
