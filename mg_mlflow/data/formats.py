"""Every text record format, normalised early to one shape: ``{"messages": [...], "tools": [...]}``.

Formats (``dataset_format``; ``auto`` detects each file's format from its first record):

- ``instruction`` (Alpaca): ``instruction``, optional ``input``, ``output``, optional ``system`` and
  ``history`` (earlier turns as ``[user, assistant]`` pairs);
- ``messages`` (OpenAI): ``messages`` with roles system/user/assistant/tool, ``tool_calls`` on
  assistant turns, ``tool_call_id`` on tool turns, and an optional ``tools`` list (JSON-schema functions);
- ``sharegpt``: ``conversations`` of ``{"from", "value"}`` turns (human/user, gpt/assistant, system,
  function_call, observation/tool), an optional ``system`` and ``tools`` (a JSON string or a list);
- ``prompt_completion`` (TRL): ``prompt`` and ``completion``, each a string (standard) or a list of
  messages (conversational).

The column map (``columns``: format key -> the file's column) is applied first, ``ignore_columns`` are
dropped next; a key the format does not use is then reported, never dropped silently: the message
names the key, what would use it (a preference objective, ``train-vision``, another format) and
``--ignore-columns``. Preference (prompt/chosen/rejected) and KTO (a boolean ``label``) records are
recognised here and refused for supervised fine-tuning (:mod:`mg_mlflow.data.preference` reads them).
"""

from __future__ import annotations

import json

ROLES = ("system", "user", "assistant", "tool")
TEXT_FORMATS = ("instruction", "messages", "sharegpt", "prompt_completion")
USED_KEYS = {
    "instruction": ("instruction", "input", "output", "system", "history"),
    "messages": ("messages", "tools"),
    "sharegpt": ("conversations", "system", "tools"),
    "prompt_completion": ("prompt", "completion", "tools"),
}
# ShareGPT's role names -> message roles (function_call: an assistant turn that calls tools).
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "function_call", "observation": "tool", "tool": "tool",
                  "function": "tool"}
# Keys every format knows the meaning of: the column map may target them.
KNOWN_KEYS = sorted({k for keys in USED_KEYS.values() for k in keys}
                    | {"chosen", "rejected", "label", "images", "image", "text", "response"})


def why_unused(key: str, fmt: str, used: tuple[str, ...] | None = None) -> str:
    """What a key the format ``fmt`` (which reads ``used``) does not use is for, and how to go on."""
    ignore = f"`--ignore-columns {key}`"
    if key == "label":
        return (f"`label` is KTO data (a good/bad mark on each answer): use `--objective kto`, or {ignore} "
                "to train on the answers anyway")
    if key in ("chosen", "rejected"):
        return (f"`{key}` is preference data (chosen/rejected answers): use `--objective dpo`, or "
                "`--ignore-columns chosen,rejected` to train on the conversation alone")
    if key in ("images", "image", "videos") and fmt in USED_KEYS:
        return (f"`{key}` is multimodal data: train it with `model-garden train-vision`, or {ignore} to "
                "train on the text alone")
    if key == "tools":
        return (f"`tools` is tool-calling data, which the {fmt} format does not render: use the messages or "
                f"sharegpt format, or {ignore}")
    uses = ", ".join(used or USED_KEYS.get(fmt, ()))
    return (f"`{key}` is not a field of the {fmt} format (it reads {uses}): map it with `--columns FIELD={key}` "
            f"if it holds one of them, or {ignore} to leave it out deliberately")


def detect(raw: dict) -> str | None:
    """The format of one (column-mapped) record by its keys; ``preference`` for chosen/rejected pairs."""
    if "chosen" in raw and "rejected" in raw:
        return "preference"
    for key, fmt in (("conversations", "sharegpt"), ("messages", "messages"), ("instruction", "instruction")):
        if key in raw:
            return fmt
    if "prompt" in raw and "completion" in raw:
        return "prompt_completion"
    return None


def unknown_format(raw: dict) -> str:
    keys = sorted(raw)
    hint = ""
    lower = {k.lower(): k for k in keys}
    for question, answer in (("question", "answer"), ("query", "response"), ("prompt", "response"),
                             ("question", "response"), ("input", "output"), ("input", "target")):
        if question in lower and answer in lower:
            hint = f"; to read them, map them: `--columns instruction={lower[question]},output={lower[answer]}`"
            break
    return ("unknown record format: expected the keys of instruction (instruction/output), messages, sharegpt "
            f"(conversations) or prompt_completion (prompt/completion), got {keys}{hint}")


def apply_columns(raw: dict, columns: dict[str, str], ignore: tuple[str, ...]) -> tuple[dict, str | None]:
    """The record with the column map applied (format key <- file column) and ignored keys dropped."""
    out = {k: v for k, v in raw.items() if k not in ignore}
    for target, source in columns.items():
        if source not in out:
            return out, f"column {source!r} (mapped to {target!r} by --columns) is missing"
        if target in out and target != source and target not in columns.values():
            return out, (f"--columns {target}={source}: the record already has a {target!r} column; ignore one "
                         f"of them with --ignore-columns")
    moved = {target: out.pop(source) for target, source in columns.items()}
    out.update(moved)
    return out, None


def parse_json(value: object) -> object:
    """A JSON string (a CSV/Parquet cell, ShareGPT's ``tools``) as its value; other values unchanged."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays from Parquet
        return value.tolist()
    return value


def normalise_tools(value: object) -> tuple[list | None, str | None]:
    """A ``tools`` value (list or JSON string, functions bare or as ``{"type": "function", ...}``)
    as a list of ``{"type": "function", "function": {...}}``; ``None`` when empty."""
    value = parse_json(value)
    if value in (None, "", []):
        return None, None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return None, "field 'tools' must be a list of functions (or a JSON string of one)"
    out = []
    for i, tool in enumerate(value):
        tool = parse_json(tool)
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
            tool = tool["function"]
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            return None, f"tools[{i}] must be a function with a 'name' (a JSON schema: name, description, parameters)"
        out.append({"type": "function", "function": tool})
    return out, None


def _tool_call(value: object, where: str) -> tuple[dict | None, str | None]:
    value = parse_json(value)
    if isinstance(value, dict) and isinstance(value.get("function"), dict):
        value = value["function"] | ({"id": value["id"]} if "id" in value else {})
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None, f"{where} must be a function call with a 'name' and 'arguments'"
    args = parse_json(value.get("arguments", {}))
    if args in (None, ""):
        args = {}
    if not isinstance(args, dict):
        return None, f"{where}.arguments must be an object (or a JSON string of one)"
    call = {"type": "function", "function": {"name": value["name"], "arguments": args}}
    if isinstance(value.get("id"), str):
        call["id"] = value["id"]
    return call, None


def _text(content: object, where: str) -> tuple[str | None, str | None]:
    """Message content as text: a string, or a list of text parts joined (an image part is refused)."""
    if isinstance(content, str):
        return content, None
    content = parse_json(content)
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        kinds = {p.get("type", "text") for p in content}
        if kinds - {"text"}:
            return None, (f"{where}.content has {'/'.join(sorted(kinds - {'text'}))} parts: this is multimodal "
                          "data, train it with `model-garden train-vision`")
        if all(isinstance(p.get("text"), str) for p in content):
            return "".join(p["text"] for p in content), None
    return None, f"{where}.content must be a string"


def clean_messages(msgs: object, where: str = "messages") -> tuple[list | None, str | None]:
    """OpenAI messages checked and normalised (roles, text content, tool calls, tool turns)."""
    msgs = parse_json(msgs)
    if not isinstance(msgs, list) or not msgs:
        return None, f"field '{where}' must be a non-empty list"
    clean: list[dict] = []
    for i, m in enumerate(msgs):
        at = f"{where}[{i}]"
        if not isinstance(m, dict):
            return None, f"{at} must be an object with role and content"
        role = m.get("role")
        if role not in ROLES:
            return None, f"{at}.role must be one of {', '.join(ROLES)}, got {role!r}"
        out: dict = {"role": role}
        calls = parse_json(m.get("tool_calls"))
        if role == "assistant" and calls not in (None, []):
            if not isinstance(calls, list):
                return None, f"{at}.tool_calls must be a list"
            out["tool_calls"] = []
            for j, c in enumerate(calls):
                call, problem = _tool_call(c, f"{at}.tool_calls[{j}]")
                if problem:
                    return None, problem
                out["tool_calls"].append(call)
            content = m.get("content")
            text, problem = ("", None) if content in (None, "") else _text(content, at)
        else:
            text, problem = _text(m.get("content"), at)
        if problem:
            return None, problem
        out["content"] = text
        if role == "tool":
            prev = clean[-1] if clean else {}
            if prev.get("role") != "tool" and not prev.get("tool_calls"):
                return None, f"{at}: a tool turn must follow an assistant turn with tool_calls (or another tool turn)"
            for key in ("tool_call_id", "name"):
                if isinstance(m.get(key), str):
                    out[key] = m[key]
        clean.append({k: out[k] for k in ("role", "content", "tool_calls", "tool_call_id", "name") if k in out})
    if clean[-1]["role"] != "assistant":
        return None, "the last message must be the assistant's answer (role 'assistant')"
    return clean, None


def _instruction(raw: dict) -> tuple[dict | None, str | None]:
    for key in ("instruction", "output"):
        if key not in raw:
            return None, f"missing field {key!r}"
        if not isinstance(raw[key], str) or not raw[key].strip():
            return None, f"field {key!r} must be a non-empty string"
    extra = raw.get("input") or ""
    system = raw.get("system") or ""
    if not isinstance(extra, str):
        return None, "field 'input' must be a string"
    if not isinstance(system, str):
        return None, "field 'system' must be a string"
    history = parse_json(raw.get("history")) or []
    msgs = [{"role": "system", "content": system}] if system.strip() else []
    if not isinstance(history, list):
        return None, "field 'history' must be a list of [question, answer] pairs"
    for i, pair in enumerate(history):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(t, str) for t in pair)):
            return None, f"history[{i}] must be a [question, answer] pair of strings"
        msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = raw["instruction"] + (("\n" + extra) if extra.strip() else "")
    return {"messages": msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": raw["output"]}]}, None


def sharegpt_messages(turns: object, system: object = None, where: str = "conversations") -> tuple[list | None, str | None]:
    """ShareGPT turns (``from``/``value``, or ``role``/``content``) as OpenAI messages: a
    ``function_call`` turn becomes an assistant turn with ``tool_calls``, ``observation`` a tool turn."""
    turns = parse_json(turns)
    if not isinstance(turns, list) or not turns:
        return None, f"field '{where}' must be a non-empty list"
    msgs: list[dict] = []
    if isinstance(system, str) and system.strip():
        msgs.append({"role": "system", "content": system})
    elif system not in (None, ""):
        return None, "field 'system' must be a string"
    for i, turn in enumerate(turns):
        at = f"{where}[{i}]"
        if not isinstance(turn, dict):
            return None, f"{at} must be an object with 'from' and 'value'"
        who, value = turn.get("from", turn.get("role")), turn.get("value", turn.get("content"))
        role = SHAREGPT_ROLES.get(who) if isinstance(who, str) else None
        if role is None:
            return None, f"{at}.from must be one of {', '.join(SHAREGPT_ROLES)}, got {who!r}"
        if role == "function_call":
            calls = parse_json(value)
            calls = calls if isinstance(calls, list) else [calls]
            msgs.append({"role": "assistant", "content": "", "tool_calls": calls})
        else:
            msgs.append({"role": role, "content": value})
    return clean_messages(msgs, where)


def _prompt_completion(raw: dict) -> tuple[dict | None, str | None]:
    prompt, completion = parse_json(raw.get("prompt")), parse_json(raw.get("completion"))
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(completion, str):
        if not completion.strip():
            return None, "field 'completion' must be a non-empty string"
        completion = [{"role": "assistant", "content": completion}]
    if not isinstance(prompt, list) or not prompt:
        return None, "field 'prompt' must be a string or a non-empty list of messages"
    if not isinstance(completion, list) or not completion:
        return None, "field 'completion' must be a string or a non-empty list of messages"
    msgs, problem = clean_messages(prompt + completion, "prompt+completion")
    return ({"messages": msgs} if msgs else None), problem


def text_problem(value: str, what: str) -> str | None:
    """A string that is not valid Unicode text (a lone surrogate such as ``\\ud800``, which a JSON escape
    can spell but no file or tokenizer can hold), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"{what} holds a lone surrogate {value[exc.start]!r} at character {exc.start + 1}, not valid "
                "Unicode text (a broken \\u escape?)")
    return None


def surrogate_problem(value: object, where: str = "") -> str | None:
    """The first string in a raw record that is not valid Unicode text, named by its place
    (``field 'instruction'``, ``messages[1].content``), or None."""
    if isinstance(value, str):
        return text_problem(value, where)
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if not where:
            place = f"field {key!r}" if isinstance(item, str) else str(key)
        else:
            place = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}"
        if (problem := surrogate_problem(item, place)) is not None:
            return problem
    return None


def _no_prompt(rec: dict) -> str | None:
    if not any(m["role"] == "user" for m in rec["messages"][:-1]):
        return ("no 'user' message before the assistant's answer: a record needs the prompt the answer "
                "replies to")
    return None


def normalise_record(raw: object, fmt: str) -> tuple[dict | None, str | None, str]:
    """(record as ``{"messages", "tools"?}``, problem, format): ``fmt`` ``auto`` detects it from the keys.
    Keys the format does not use are left to :func:`unused_keys`."""
    if not isinstance(raw, dict):
        return None, f"expected an object, got {type(raw).__name__}", fmt
    if fmt == "auto":
        fmt = detect(raw) or "auto"
        if fmt == "auto":
            return None, unknown_format(raw), fmt
    if (problem := surrogate_problem(raw)) is not None:
        return None, problem, fmt
    if fmt == "preference":
        return None, ("`chosen`/`rejected`: a preference pair is not supervised fine-tuning data: use "
                      "`--objective dpo`, or `--ignore-columns chosen,rejected` to train on the rest of the record "
                      "(or map an answer with `--columns`)"), fmt
    if fmt == "instruction":
        rec, problem = _instruction(raw)
    elif fmt == "messages":
        if "messages" not in raw:
            return None, "missing field 'messages'", fmt
        msgs, problem = clean_messages(raw["messages"])
        rec = {"messages": msgs} if msgs else None
    elif fmt == "sharegpt":
        if "conversations" not in raw:
            return None, "missing field 'conversations'", fmt
        msgs, problem = sharegpt_messages(raw["conversations"], raw.get("system"))
        rec = {"messages": msgs} if msgs else None
    else:
        for key in ("prompt", "completion"):
            if key not in raw:
                return None, f"missing field {key!r}", fmt
        rec, problem = _prompt_completion(raw)
    if problem or (problem := _no_prompt(rec)):
        return None, problem, fmt
    if "tools" in USED_KEYS[fmt] and "tools" in raw:
        tools, problem = normalise_tools(raw["tools"])
        if problem:
            return None, problem, fmt
        if tools:
            rec["tools"] = tools
    return rec, None, fmt


def unused_keys(raw: object, fmt: str, used: tuple[str, ...] | None = None) -> list[str]:
    """The keys of ``raw`` that the format (reading ``used``, by default its text keys) does not read."""
    used = used or USED_KEYS.get(fmt)
    if not isinstance(raw, dict) or not used:
        return []
    return [k for k in raw if k not in used]


def report_unused(seen: dict[str, list[str]], fmt: str, total: int, used: tuple[str, ...] | None = None) -> list[str]:
    """One problem per unused key: its first location, how many records have it, and what to do."""
    out = []
    for key, locations in seen.items():
        count = "every record has it" if len(locations) == total else f"{len(locations)} of {total} records have it"
        out.append(f"{locations[0]}: key {key!r} is not used by the {fmt} format ({count}): {why_unused(key, fmt, used)}")
    return out


def names(values) -> tuple[str, ...]:
    """Column names from a list option whose items may hold several names separated by commas."""
    return tuple(n.strip() for v in (values or ()) for n in str(v).split(",") if n.strip())
