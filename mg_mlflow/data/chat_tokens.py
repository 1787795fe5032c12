"""Records -> token ids and the loss mask, through the model's own chat template.

The mask follows the roles: an assistant turn's tokens are trained (a turn that only calls tools when
``tool_calls`` is on); system, user and tool turns never are. Each assistant turn ``i`` spans the
tokens between the conversation rendered up to it with the generation prompt and rendered through it,
located in the whole conversation's tokens the way TRL locates a completion (``common_prefix_length``).
The rows carry ``input_ids`` and ``assistant_masks`` (TRL's name for this mask); training turns them
into ``labels``, which TRL's ``SFTTrainer`` truncates to ``max_length``, dropping the examples left
with no trained token.
"""

from __future__ import annotations

from mg_mlflow.errors import DataError, MGError

PROBE_TOOL = {"type": "function", "function": {"name": "mg_probe_function", "description": "probe",
                                               "parameters": {"type": "object", "properties": {}}}}


def _ids(tokenizer, messages: list[dict], tools, add_generation_prompt: bool = False) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_record(tokenizer, record: dict, responses_only: bool = True,
                    tool_calls: bool = True) -> tuple[list[int], list[int]]:
    """(input_ids, mask) of one normalised record; mask 1 = the token carries a label."""
    from trl.data_utils import common_prefix_length

    msgs, tools = record["messages"], record.get("tools") or None
    ids = _ids(tokenizer, msgs, tools)
    if not responses_only:
        return ids, [1] * len(ids)
    mask = [0] * len(ids)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant" or (m.get("tool_calls") and not tool_calls):
            continue
        start = common_prefix_length(_ids(tokenizer, msgs[:i], tools, add_generation_prompt=True), ids)
        end = len(ids) if i == len(msgs) - 1 else common_prefix_length(_ids(tokenizer, msgs[:i + 1], tools), ids)
        for j in range(start, end):
            mask[j] = 1
    return ids, mask


def check_template(tokenizer, records: list[dict], base_model: str) -> None:
    """A chat template that drops the ``tools`` or the tool calls of the data: MGError naming the model."""
    with_tools = next((r for r in records if r.get("tools")), None)
    with_calls = next((r for r in records if any(m.get("tool_calls") for m in r["messages"])), None)
    hint = ("use a base model whose chat template renders tools (e.g. Qwen2.5/Qwen3 or Llama 3.1 instruct "
            "models), or leave the tools out of the data with --ignore-columns tools")
    if with_tools is not None:
        msgs = with_tools["messages"]
        if (tokenizer.apply_chat_template(msgs, tools=[PROBE_TOOL], tokenize=False)
                == tokenizer.apply_chat_template(msgs, tokenize=False)):
            raise MGError(f"the chat template of {base_model} does not render tools: the records' `tools` "
                          "would be left out of the training text", hint=hint)
    if with_calls is not None:
        probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "mg_probe_function", "arguments": {"a": 1}}}]}]
        if "mg_probe_function" not in tokenizer.apply_chat_template(probe, tokenize=False):
            raise MGError(f"the chat template of {base_model} does not render tool calls: the assistant turns' "
                          "`tool_calls` would be left out of the training text", hint=hint)


def tokenize_dataset(tokenizer, data, base_model: str, responses_only: bool = True,
                     tool_calls: bool = True) -> list[dict]:
    """TRL rows ``{"input_ids", "assistant_masks"}`` for every record of a LoadedDataset; a record the
    template cannot render is a file:line problem naming the model."""
    check_template(tokenizer, data.records, base_model)
    rows, problems = [], []
    for loc, rec in zip(data.locations, data.records):
        try:
            ids, mask = tokenize_record(tokenizer, rec, responses_only, tool_calls)
        except Exception as exc:  # noqa: BLE001 - jinja raises TemplateError, templates raise their own
            problems.append(f"{loc}: the chat template of {base_model} cannot render this record "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            continue
        rows.append({"input_ids": ids, "assistant_masks": mask})
    if problems:
        raise DataError(problems, data.source, total=len(data.records))
    return rows


def profile(data, rows: list[dict] | None = None, max_length: int | None = None) -> dict[str, object]:
    """Per-format statistics of a dataset (and, with token rows, trained tokens after the mask and what
    max_length would cut): the numbers ``data validate`` prints and a run logs as its dataset profile."""
    turns = [len(r["messages"]) for r in data.records]
    calls = [sum(len(m.get("tool_calls", ())) for m in r["messages"]) for r in data.records]
    roles: dict[str, int] = {}
    for r in data.records:
        for m in r["messages"]:
            roles[m["role"]] = roles.get(m["role"], 0) + 1
    out: dict[str, object] = {
        "records": len(data), "format": data.fmt, "digest": data.digest,
        "turns": spread(turns), "turns_by_role": roles,
        "tool_calls": sum(calls), "records_with_tool_calls": sum(1 for c in calls if c),
        "records_with_tools": sum(1 for r in data.records if r.get("tools")),
    }
    if rows is not None:
        lengths = [len(r["input_ids"]) for r in rows]
        trained = [sum(r["assistant_masks"]) for r in rows]
        out.update(tokens=spread(lengths), trained_tokens=spread(trained), total_tokens=sum(lengths),
                   total_trained_tokens=sum(trained))
        if max_length:
            kept = [sum(r["assistant_masks"][:max_length]) for r in rows]
            truncated = sum(1 for n in lengths if n > max_length)
            out.update(max_length=max_length, truncated=truncated,
                       truncated_share=round(truncated / len(lengths), 4) if lengths else 0.0,
                       no_trained_token=sum(1 for n in kept if n == 0))
    return out


def spread(values: list[int]) -> dict[str, float]:
    ordered = sorted(values) or [0]
    return {"min": ordered[0], "median": ordered[len(ordered) // 2], "mean": round(sum(ordered) / len(ordered), 1),
            "max": ordered[-1]}


def readable(stats: dict[str, object]) -> list[tuple[str, object]]:
    """A profile as the (label, value) lines ``data validate`` prints."""
    out = []
    for key, value in stats.items():
        if key == "truncated_share":
            continue  # shown with the count
        if key == "truncated" and "truncated_share" in stats:
            value = f"{value} ({100 * stats['truncated_share']:.1f}%)"
        if key == "truncated" and "max_length" in stats:
            key = f"truncated at {stats['max_length']}"
        if isinstance(value, dict) and {"min", "median", "max"} <= set(value):
            value = f"{value['min']}/{value['median']}/{value['max']} (mean {value['mean']})"
            key = f"{key} (min/median/max)"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        out.append((key.replace("_", " "), value))
    return out
