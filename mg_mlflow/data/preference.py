"""Preference data: pairs (DPO, ORPO, SimPO) and unpaired labelled answers (KTO), checked before any model.

Accepted records, every one normalised to TRL's conversational form:

- pairs, TRL's preference format: ``{"prompt", "chosen", "rejected"}`` as plain text (the prompt is one
  user turn) or as messages (``prompt`` a list of turns, ``chosen``/``rejected`` lists of assistant turns),
  with an optional shared ``system`` prompt; or chosen/rejected full conversations that share their
  prompt turns (the implicit-prompt form);
- pairs, the ShareGPT preference form: ``{"conversations": [{"from": "human", "value": ...}, ...],
  "chosen": {"from": "gpt", "value": ...}, "rejected": {...}}``, optional ``system``;
- unpaired (KTO): ``{"prompt", "completion", "label"}`` (text or messages) or ``{"messages", "label"}``
  whose last assistant turn is the completion; ``label`` is true for a desirable answer, false otherwise.

Normalised: pairs ``{"prompt": [turns], "chosen": [turn], "rejected": [turn]}``, unpaired ``{"prompt":
[turns], "completion": [turn], "label": bool}``. Every bad record is reported as ``file:line``; a file of
another shape than the objective trains on is refused naming the shape it needs (:func:`check_shape`).
"""

from __future__ import annotations

from pathlib import Path

from mg_mlflow.data.load import (ROLES, LoadedDataset, digest_records, hub_rows, is_local, message_list,
                                 read_rows)
from mg_mlflow.data.paths import outside_allowed
from mg_mlflow.errors import DataError, MGError

PAIRS, UNPAIRED, CONVERSATION, PROMPTS = "pairs", "unpaired", "conversation", "prompts"
SHAPES = {
    CONVERSATION: "conversations: {instruction, input, output} or {messages} ending with the answer",
    PAIRS: "preference pairs: {prompt, chosen, rejected} (text or messages, optional system), or ShareGPT "
           "{conversations, chosen, rejected}",
    UNPAIRED: "unpaired labelled answers: {prompt, completion, label} or {messages, label}, label true/false",
    PROMPTS: "prompts without answers: {prompt} (text or messages, optional system) plus any columns the rewards "
             "read (e.g. answer)",
}
NEEDS = {"sft": CONVERSATION, "dpo": PAIRS, "orpo": PAIRS, "simpo": PAIRS, "kto": UNPAIRED, "grpo": PROMPTS,
         "reward": PAIRS}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "system": "system"}


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


def sniff_shape(source: str) -> str | None:
    """The shape of the first record of a local file (None: not a local file, or no record)."""
    if not is_local(source) or not Path(source).expanduser().is_file():
        return None
    try:
        rows, _ = read_rows(Path(source).expanduser())
    except (MGError, OSError):
        return None  # the loader reports it
    return next((shape_of(raw) for _, raw in rows if shape_of(raw)), None)


def check_shape(source: str, objective: str) -> None:
    """Refuse, before anything loads, a file whose records have another shape than ``objective`` needs."""
    shape, needed = sniff_shape(source), NEEDS[objective]
    if shape is None or shape == needed:
        return
    fits = sorted(o for o, s in NEEDS.items() if s == shape)
    raise MGError(f"dataset {source} holds {SHAPES[shape]}; objective {objective} trains on {SHAPES[needed]}",
                  hint=f"train this file with --objective {' or '.join(fits)}, or give --objective {objective} "
                       "a dataset of the shape it needs (docs: Preference tuning)")


# ---------------------------------------------------------------- one record

def _text(value: object, what: str) -> tuple[str | None, str | None]:
    if not isinstance(value, str):
        return None, f"field {what!r} must be a string or a list of messages"
    if not value.strip():
        return None, f"field {what!r} is empty"
    return value, None


def _turns(value: object, what: str) -> tuple[list | None, str | None]:
    """Messages as clean {role, content} dicts (a JSON string from a CSV/Parquet cell is parsed)."""
    msgs, problem = message_list({"messages": value})
    if problem:
        return None, f"field {what!r} must be a non-empty list of messages"
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return None, f"{what}[{i}] must be an object with role ({', '.join(ROLES)}) and string content"
        clean.append({"role": m["role"], "content": m["content"]})
    return clean, None


def _side(raw: dict, key: str, prompt_given: bool) -> tuple[list | None, str | None]:
    """An answer (chosen, rejected, completion): text -> one assistant turn; messages as given."""
    if key not in raw:
        return None, f"missing field {key!r}"
    value = raw[key]
    if isinstance(value, dict) and "value" in value:  # ShareGPT: {"from": "gpt", "value": ...}
        value = value["value"]
    if isinstance(value, str):
        text, problem = _text(value, key)
        return ([{"role": "assistant", "content": text}], None) if text else (None, problem)
    turns, problem = _turns(value, key)
    if problem:
        return None, problem
    if prompt_given and any(t["role"] != "assistant" for t in turns):
        return None, f"field {key!r} must hold the assistant's answer only (the prompt goes in 'prompt')"
    if not "".join(t["content"] for t in turns if t["role"] == "assistant").strip():
        return None, f"field {key!r} is empty"
    return turns, None


def _prompt(raw: dict) -> tuple[list | None, str | None]:
    """The prompt turns from prompt (text or messages) or ShareGPT conversations, with the optional system."""
    if "conversations" in raw:
        convo = raw["conversations"]
        if not isinstance(convo, list) or not convo:
            return None, "field 'conversations' must be a non-empty list of {from, value} turns"
        turns = []
        for i, t in enumerate(convo):
            role = SHAREGPT_ROLES.get(t.get("from")) if isinstance(t, dict) else None
            if role is None or not isinstance(t.get("value"), str):
                return None, (f"conversations[{i}] must be {{from: human|gpt|system, value: text}}, got "
                              f"{t!r}"[:200])
            turns.append({"role": role, "content": t["value"]})
    elif "prompt" in raw:
        if isinstance(raw["prompt"], str):
            text, problem = _text(raw["prompt"], "prompt")
            if problem:
                return None, problem
            turns = [{"role": "user", "content": text}]
        else:
            turns, problem = _turns(raw["prompt"], "prompt")
            if problem:
                return None, problem
    else:
        return None, "missing field 'prompt'"
    system = raw.get("system")
    if system not in (None, ""):
        if not isinstance(system, str):
            return None, "field 'system' must be a string"
        if turns[0]["role"] == "system":
            return None, "the system prompt is given twice: as 'system' and as the first turn; keep one"
        turns = [{"role": "system", "content": system}, *turns]
    if turns[-1]["role"] == "assistant":
        return None, "the prompt ends with an assistant turn: it must end with the user's turn the answers reply to"
    return turns, None


def _implicit_prompt(raw: dict) -> tuple[dict | None, str | None]:
    """chosen/rejected full conversations without a prompt: the shared leading turns are the prompt."""
    chosen, problem = _turns(raw["chosen"], "chosen")
    rejected, problem2 = _turns(raw["rejected"], "rejected")
    if problem or problem2:
        return None, problem or problem2
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        return None, "missing field 'prompt' (chosen and rejected share no prompt turns)"
    return {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}, None


def normalise_pair(raw: object) -> tuple[dict | None, str | None]:
    if not isinstance(raw, dict):
        return None, f"expected an object, got {type(raw).__name__}"
    if "prompt" not in raw and "conversations" not in raw and isinstance(raw.get("chosen"), list) \
            and isinstance(raw.get("rejected"), list):
        rec, problem = _implicit_prompt(raw)
    else:
        prompt, problem = _prompt(raw)
        rec = None
        if not problem:
            chosen, problem = _side(raw, "chosen", True)
            rejected, problem2 = _side(raw, "rejected", True) if not problem else (None, None)
            problem = problem or problem2
            rec = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if problem:
        return None, problem
    if rec["chosen"] == rec["rejected"]:
        return None, "chosen and rejected are the same answer: a pair must say which of two answers is better"
    for side in ("chosen", "rejected"):
        if not "".join(t["content"] for t in rec[side]).strip():
            return None, f"field {side!r} is empty"
    return rec, None


def _label(value: object) -> tuple[bool | None, str | None]:
    if isinstance(value, bool):
        return value, None
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):  # CSV cells
        return value.strip().lower() == "true", None
    return None, f"field 'label' must be true (a desirable answer) or false (an undesirable one), got {value!r}"


def normalise_unpaired(raw: object) -> tuple[dict | None, str | None]:
    if not isinstance(raw, dict):
        return None, f"expected an object, got {type(raw).__name__}"
    if "label" not in raw:
        return None, "missing field 'label' (true for a desirable completion, false for an undesirable one)"
    label, problem = _label(raw["label"])
    if problem:
        return None, problem
    if "messages" in raw and "prompt" not in raw:
        turns, problem = _turns(raw["messages"], "messages")
        if problem:
            return None, problem
        if turns[-1]["role"] != "assistant" or len(turns) < 2:
            return None, "the last message must be the assistant's answer (role 'assistant'), after a prompt"
        if not turns[-1]["content"].strip():
            return None, "the completion (the last assistant message) is empty"
        return {"prompt": turns[:-1], "completion": turns[-1:], "label": label}, None
    prompt, problem = _prompt(raw)
    if problem:
        return None, problem
    completion, problem = _side(raw, "completion", True)
    if problem:
        return None, problem
    return {"prompt": prompt, "completion": completion, "label": label}, None


# ---------------------------------------------------------------- a whole file

def load_preference_records(source: str, shape: str, split: str = "train") -> LoadedDataset:
    """Load ``source`` as ``shape`` (pairs or unpaired); every bad record raised at once as file:line."""
    if is_local(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise MGError(f"dataset file {source} does not exist",
                          hint="give a JSONL/JSON/CSV/Parquet file of preference records (docs: Preference tuning)")
        refused = outside_allowed(path, "dataset file")
        if refused:
            raise MGError(refused, hint="copy the data into an allowed folder (links out of it are not followed)")
        rows, problems = read_rows(path)
        src, name = str(path.resolve()), path.stem
    else:
        rows, problems = hub_rows(source, split), []
        src, name = source, source.split("/")[-1]
    normalise = normalise_pair if shape == PAIRS else normalise_unpaired
    records, locations = [], []
    for loc, raw in rows:
        found = shape_of(raw)
        if found is not None and found != shape and found not in (CONVERSATION, PROMPTS):
            problems.append(f"{loc}: a record of {SHAPES[found]} among {SHAPES[shape]}")
            continue
        rec, problem = normalise(raw)
        if problem:
            problems.append(f"{loc}: {problem}")
            continue
        records.append(rec)
        locations.append(loc)
    if problems:
        raise DataError(problems, src, total=len(rows) + sum(1 for p in problems if "not valid JSON" in p))
    if not records:
        raise MGError(f"dataset {src} has no records", hint="an empty file cannot train a model")
    if shape == UNPAIRED and len({r["label"] for r in records}) == 1:
        only = "desirable (label true)" if records[0]["label"] else "undesirable (label false)"
        raise MGError(f"dataset {src}: every record is {only}; KTO learns from both kinds",
                      hint="add completions labelled the other way")
    return LoadedDataset(records=records, source=src, name=name, fmt=shape, digest=digest_records(records),
                         locations=locations)
prompt_turns = _prompt  # the prompt turns of a record (text or messages, optional system), for other loaders
