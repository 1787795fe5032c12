"""Preference (DPO-style) and KTO records, recognised and normalised for the objectives that train on them.

Shapes read (after the column map, as for supervised data):

- preference: ``{"prompt", "chosen", "rejected"}`` (each a string or a list of messages, TRL's standard
  and conversational forms; without ``prompt``, ``chosen``/``rejected`` are whole conversations sharing
  their prompt turns), or ShareGPT ``{"conversations", "chosen", "rejected"}`` with ``chosen``/``rejected``
  a ``{"from", "value"}`` turn;
- kto: ``{"prompt", "completion", "label"}`` or ``{"messages", "label"}`` (the last assistant turn is
  the completion), ``label`` a boolean (true: a good answer).

Normalised: ``{"prompt": [messages], "chosen": [messages], "rejected": [messages], "tools"?}`` and
``{"prompt": [messages], "completion": [messages], "label": bool, "tools"?}``. Every problem (the same
answer chosen and rejected, an empty side, a missing or non-boolean label) is a ``file:line`` problem.
"""

from __future__ import annotations

from pathlib import Path

from mg_mlflow.data.formats import (parse_json, apply_columns, clean_messages, names, normalise_tools,
                                    sharegpt_messages, why_unused)
from mg_mlflow.data.load import LoadedDataset, digest_records, is_local, read_rows, source_rows
from mg_mlflow.errors import DataError, MGError

KINDS = ("preference", "kto")
USED = {"preference": ("prompt", "chosen", "rejected", "conversations", "system", "tools"),
        "kto": ("prompt", "completion", "messages", "label", "tools")}
BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}

# The data shapes the objectives train on (``--objective``), and which shape each objective needs.
PAIRS, UNPAIRED, CONVERSATION, PROMPTS = "pairs", "unpaired", "conversation", "prompts"
SHAPES = {
    CONVERSATION: "conversations: {instruction, input, output} or {messages} ending with the answer",
    PAIRS: "preference pairs: {prompt, chosen, rejected} (text or messages, optional system), or ShareGPT "
           "{conversations, chosen, rejected}",
    UNPAIRED: "unpaired labelled answers: {prompt, completion, label} or {messages, label}, label true/false",
    PROMPTS: "prompts without answers: {prompt} (text or messages, optional system) plus any columns the rewards "
             "read (e.g. answer)",
}
SHAPE_KINDS = {"pairs": "preference", "unpaired": "kto"}  # the shape names of the loaders' kinds
NEEDS = {"sft": CONVERSATION, "dpo": PAIRS, "orpo": PAIRS, "simpo": PAIRS, "kto": UNPAIRED, "grpo": PROMPTS,
         "reward": PAIRS}


def shape_of(raw: object) -> str | None:
    """The shape a raw record has (None: none of the three)."""
    if not isinstance(raw, dict):
        return None
    if "label" in raw:
        return UNPAIRED
    if "chosen" in raw or "rejected" in raw:
        return PAIRS
    if "completion" in raw and "prompt" in raw:
        return UNPAIRED  # the label is missing: reported as such by the unpaired loader
    if "messages" in raw or "instruction" in raw or "conversations" in raw:
        return CONVERSATION
    if "prompt" in raw:
        return PROMPTS
    return None


def sniff_shape(source: str, columns: dict | None = None, ignore_columns=()) -> tuple[str | None, str]:
    """(the shape of the first record of a local file after the column map, its location); None: not a
    local file, or no record of a known shape."""
    if not is_local(source) or not Path(source).expanduser().is_file():
        return None, source
    try:
        rows, _ = read_rows(Path(source).expanduser())
    except (MGError, OSError):
        return None, source  # the loader reports it
    ignore = names(ignore_columns)
    for loc, raw in rows:
        if isinstance(raw, dict):
            raw, _ = apply_columns(raw, {t: c for t, c in (columns or {}).items() if c in raw}, ignore)
        if shape_of(raw):
            return shape_of(raw), loc
    return None, source


def check_shape(source: str, objective: str, columns: dict | None = None, ignore_columns=()) -> None:
    """Refuse, before anything loads, a file whose records have another shape than ``objective`` needs
    (read after the column map and the ignored columns, as the loader reads them)."""
    (shape, where), needed = sniff_shape(source, columns, ignore_columns), NEEDS[objective]
    if shape is None or shape == needed:
        return
    fits = sorted(o for o, s in NEEDS.items() if s == shape)
    anyway = (", or `--ignore-columns label` to train on the answers anyway"
              if shape == UNPAIRED and needed == CONVERSATION else "")
    raise MGError(f"{where}: dataset {source} holds {SHAPES[shape]}; objective {objective} trains on "
                  f"{SHAPES[needed]}",
                  hint=f"use `--objective {' or '.join(fits)}`{anyway}, or give --objective {objective} a dataset "
                       "of the shape it needs (docs: Preference tuning)")


def detect_kind(raw: object) -> str | None:
    """``preference`` or ``kto`` when a record has that shape, else None (e.g. plain SFT data)."""
    if not isinstance(raw, dict):
        return None
    if "chosen" in raw and "rejected" in raw:
        return "preference"
    if "label" in raw and ("messages" in raw or ("prompt" in raw and "completion" in raw)):
        return "kto"
    return None


def _side(value: object, what: str, sharegpt: bool) -> tuple[list | None, str | None]:
    value = parse_json(value)
    if value in (None, "", []):
        return None, f"field {what!r} is empty"
    if isinstance(value, str):
        return ([{"role": "assistant" if what != "prompt" else "user", "content": value}]
                if value.strip() else None), (None if value.strip() else f"field {what!r} is empty")
    if sharegpt and isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return None, f"field {what!r} must be a string or a list of messages"
    if sharegpt or any(isinstance(m, dict) and "from" in m for m in value):
        msgs, problem = sharegpt_messages(value, where=what)
    else:
        msgs, problem = _messages(value, what)
    return msgs, problem


def _messages(value: list, what: str) -> tuple[list | None, str | None]:
    """Messages of a prompt (may end with a user turn) or of an answer."""
    if value and isinstance(value[-1], dict) and value[-1].get("role") != "assistant":
        msgs, problem = clean_messages(value + [{"role": "assistant", "content": "x"}], what)
        return (msgs[:-1] if msgs else None), problem
    return clean_messages(value, what)


def _split_shared(chosen: list, rejected: list) -> tuple[list, list, list]:
    """Implicit prompt: the turns ``chosen`` and ``rejected`` share before they differ."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def normalise_preference(raw: dict) -> tuple[dict | None, str | None]:
    sharegpt = "conversations" in raw
    if sharegpt or "prompt" in raw:
        prompt, problem = prompt_turns(raw)
    else:
        prompt, problem = [], None
    if problem:
        return None, problem
    chosen, problem = _side(raw.get("chosen"), "chosen", sharegpt)
    if problem:
        return None, problem
    rejected, problem = _side(raw.get("rejected"), "rejected", sharegpt)
    if problem:
        return None, problem
    if not prompt:
        prompt, chosen, rejected = _split_shared(chosen, rejected)
    if chosen == rejected:
        return None, "'chosen' and 'rejected' are the same answer: the pair teaches nothing"
    rec = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    return _with_tools(rec, raw)


def _label(value: object) -> tuple[bool | None, str | None]:
    if isinstance(value, bool):
        return value, None
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value), None
    if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
        return BOOL_WORDS[value.strip().lower()], None
    if value is None or value == "":
        return None, "missing field 'label' (true for a good answer, false for a bad one)"
    return None, f"field 'label' must be true or false, got {value!r}"


def normalise_kto(raw: dict) -> tuple[dict | None, str | None]:
    label, problem = _label(raw.get("label"))
    if problem:
        return None, problem
    if "messages" in raw:
        msgs, problem = clean_messages(raw["messages"])
        if problem:
            return None, problem
        prompt, completion = msgs[:-1], msgs[-1:]
    else:
        prompt, problem = _side(raw.get("prompt"), "prompt", False)
        if problem:
            return None, problem
        completion, problem = _side(raw.get("completion"), "completion", False)
        if problem:
            return None, problem
    if not completion or not (completion[-1]["content"].strip() or completion[-1].get("tool_calls")):
        return None, "the completion is empty"
    return _with_tools({"prompt": prompt, "completion": completion, "label": label}, raw)


def _with_tools(rec: dict, raw: dict) -> tuple[dict | None, str | None]:
    if "tools" in raw:
        tools, problem = normalise_tools(raw["tools"])
        if problem:
            return None, problem
        if tools:
            rec["tools"] = tools
    return rec, None


def normalise(raw: object, kind: str) -> tuple[dict | None, str | None]:
    """One record as ``kind`` (preference or kto): (normalised record, problem)."""
    if not isinstance(raw, dict):
        return None, f"expected an object, got {type(raw).__name__}"
    if kind == "preference":
        if "chosen" not in raw or "rejected" not in raw:
            return None, "missing field 'chosen' or 'rejected' (a preference pair needs both)"
        return normalise_preference(raw)
    if "label" not in raw:
        return None, "missing field 'label' (true for a good answer, false for a bad one)"
    return normalise_kto(raw)


def load_preference_records(source: str, kind: str = "auto", split: str = "train", columns: dict | None = None,
                            ignore_columns=()) -> LoadedDataset:
    """Load ``source`` as preference or KTO records (``kind`` preference|kto, or the shape pairs|unpaired;
    auto: by the first record's shape); raise DataError listing every bad record as file:line, and every
    key the shape does not use."""
    kind = SHAPE_KINDS.get(kind, kind)
    rows, problems, src, name = source_rows(source, split)
    columns, ignore = dict(columns or {}), names(ignore_columns)
    records, locations, unused = [], [], {}
    for loc, raw in rows:
        if isinstance(raw, dict):
            raw, problem = apply_columns(raw, columns, ignore)
            if problem:
                problems.append(f"{loc}: {problem}")
                continue
        if kind == "auto":
            kind = detect_kind(raw) or "auto"
            if kind == "auto":
                problems.append(f"{loc}: not preference data: expected prompt/chosen/rejected (DPO) or a "
                                "boolean label beside prompt/completion or messages (KTO)")
                continue
        rec, problem = normalise(raw, kind)
        if problem:
            problems.append(f"{loc}: {problem}")
            continue
        for key in raw:
            if key not in USED[kind]:
                unused.setdefault(key, loc)
        records.append(rec)
        locations.append(loc)
    for key, loc in unused.items():
        problems.append(f"{loc}: key {key!r} is not used by {kind} data: {why_unused(key, kind, USED[kind])}")
    if problems:
        raise DataError(problems, src, total=len(rows))
    if not records:
        raise MGError(f"dataset {src} has no records", hint="an empty file cannot train a model")
    return LoadedDataset(records=records, source=src, name=name, fmt=kind, digest=digest_records(records),
                         locations=locations)


def check_both_labels(data: LoadedDataset) -> None:
    """KTO learns from desirable and undesirable answers: a file of one kind only is refused."""
    if data.fmt == "kto" and len({r["label"] for r in data.records}) == 1:
        only = "desirable (label true)" if data.records[0]["label"] else "undesirable (label false)"
        raise MGError(f"dataset {data.source}: every record is {only}; KTO learns from both kinds",
                      hint="add completions labelled the other way")


def prompt_turns(raw: dict) -> tuple[list | None, str | None]:
    """The prompt turns of a record without an answer: ``prompt`` (text or messages) or ShareGPT
    ``conversations``, with the optional ``system`` prompt; they end with the user's turn."""
    if "conversations" in raw:
        turns, problem = sharegpt_messages(list(parse_json(raw["conversations"]) or [])
                                           + [{"from": "gpt", "value": "x"}], raw.get("system"))
        turns = turns[:-1] if turns else None
    elif "prompt" in raw:
        turns, problem = _side(raw["prompt"], "prompt", False)
        system = raw.get("system")
        if not problem and system not in (None, ""):
            if not isinstance(system, str):
                return None, "field 'system' must be a string"
            if turns[0]["role"] == "system":
                return None, "the system prompt is given twice: as 'system' and as the first turn; keep one"
            turns = [{"role": "system", "content": system}, *turns]
    else:
        return None, "missing field 'prompt'"
    if problem:
        return None, problem
    if not turns or turns[-1]["role"] == "assistant":
        return None, "the prompt must end with the user's turn the answer replies to"
    return turns, None


def preference_stats(data: LoadedDataset) -> dict[str, object]:
    """What ``data validate`` prints for preference/KTO data."""
    stats: dict[str, object] = {"records": len(data), "format": data.fmt, "digest": data.digest}
    if data.fmt == "kto":
        good = sum(1 for r in data.records if r["label"])
        stats["labels (good/bad)"] = f"{good}/{len(data) - good}"
        stats["train with"] = "--objective kto"
    else:
        stats["train with"] = "--objective dpo"
    stats["prompt turns (max)"] = max(len(r["prompt"]) for r in data.records)
    return stats


__all__ = ["CONVERSATION", "KINDS", "NEEDS", "PAIRS", "PROMPTS", "SHAPES", "UNPAIRED", "check_shape", "detect_kind",
           "load_preference_records", "normalise", "preference_stats", "prompt_turns", "shape_of", "sniff_shape"]
