"""Dataset formats as the ecosystem writes them (instruction with system/history, OpenAI messages with tool
calls, ShareGPT, TRL prompt/completion, column maps), the role-based loss mask checked token by token
through a real chat template, keys the format does not use reported with the option that uses or ignores
them, preference/KTO shapes, and ``data validate`` statistics."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import invoke_cli
from vision_support import shapes, tiny_vl  # noqa: F401 - fixtures
from mg_mlflow.data.chat_tokens import profile, tokenize_dataset, tokenize_record
from mg_mlflow.data.load import load_dataset_records
from mg_mlflow.data.preference import load_preference_records
from mg_mlflow.errors import DataError, MGError

WEATHER_TOOL = {"name": "get_weather", "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
SHAREGPT = {"conversations": [
    {"from": "human", "value": "Weather in Paris?"},
    {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
    {"from": "observation", "value": "sunny, 21 C"},
    {"from": "gpt", "value": "It is sunny."}], "system": "Be brief.", "tools": json.dumps([WEATHER_TOOL])}
OPENAI_TOOLS = {"messages": [
    {"role": "user", "content": "Weather in Rome?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "rain"},
    {"role": "assistant", "content": "It rains."}], "tools": [{"type": "function", "function": WEATHER_TOOL}]}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>\n'


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok():
    from mg_mlflow.dev.tiny import build_tokenizer

    return build_tokenizer()


def trained_spans(tok, ids, mask) -> list[str]:
    """The text of each run of consecutive trained tokens."""
    spans, current = [], []
    for token, bit in zip(ids, mask):
        if bit:
            current.append(token)
        elif current:
            spans.append(tok.decode(current))
            current = []
    if current:
        spans.append(tok.decode(current))
    return spans


def test_sharegpt_with_function_call_and_observation_becomes_messages_with_tool_calls(tmp_path):
    data = load_dataset_records(str(_jsonl(tmp_path / "s.jsonl", [SHAREGPT])))
    assert data.fmt == "sharegpt"
    msgs = data.records[0]["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant"]
    assert msgs[2]["tool_calls"] == [{"type": "function", "function": {"name": "get_weather",
                                                                       "arguments": {"city": "Paris"}}}]
    assert data.records[0]["tools"] == [{"type": "function", "function": WEATHER_TOOL}]


def test_openai_tool_calls_instruction_history_and_prompt_completion(tmp_path):
    tools = load_dataset_records(str(_jsonl(tmp_path / "t.jsonl", [OPENAI_TOOLS])))
    assert tools.fmt == "messages" and tools.records[0]["messages"][2]["tool_call_id"] == "c1"
    assert tools.records[0]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Rome"}
    inst = load_dataset_records(str(_jsonl(tmp_path / "i.jsonl", [
        {"system": "S", "history": [["q1", "a1"]], "instruction": "q2", "input": "x", "output": "a2"}])))
    assert [(m["role"], m["content"]) for m in inst.records[0]["messages"]] == [
        ("system", "S"), ("user", "q1"), ("assistant", "a1"), ("user", "q2\nx"), ("assistant", "a2")]
    pc = load_dataset_records(str(_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "2+2?", "completion": "4"},
        {"prompt": [{"role": "user", "content": "3+3?"}], "completion": [{"role": "assistant", "content": "6"}]}])))
    assert pc.fmt == "prompt_completion"
    assert pc.records[0]["messages"] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert pc.records[1]["messages"][-1] == {"role": "assistant", "content": "6"}


def test_column_map_reads_other_names_in_csv_and_the_error_suggests_it(tmp_path):
    csv = tmp_path / "qa.csv"
    pd.DataFrame({"question": ["Add 2 and 3.", "Add 1 and 1."], "answer": ["5", "2"]}).to_csv(csv, index=False)
    with pytest.raises(DataError) as err:
        load_dataset_records(str(csv))
    assert f"{csv}:2: unknown record format" in str(err.value)
    assert "--columns instruction=question,output=answer" in str(err.value)
    data = load_dataset_records(str(csv), columns={"instruction": "question", "output": "answer"})
    assert data.fmt == "instruction" and data.records[0]["messages"][-1]["content"] == "5"
    with pytest.raises(DataError, match=r"qa.csv:2: column 'query' \(mapped to 'instruction' by --columns\) is missing"):
        load_dataset_records(str(csv), columns={"instruction": "query", "output": "answer"})
    with pytest.raises(MGError, match="'questionn' is not a field of any dataset format"):
        load_dataset_records(str(csv), columns={"questionn": "question"})


def test_the_column_option_parses_pairs_from_one_value_and_from_yaml():
    from mg_mlflow.config import TrainConfig, build_config

    cfg = build_config(TrainConfig, overrides={"base_model": "x", "dataset": "d.jsonl",
                                               "columns": ("instruction=question,output=answer",),
                                               "ignore_columns": ("id,source",)})
    assert cfg.columns == {"instruction": "question", "output": "answer"}
    assert cfg.ignore_columns == ["id,source"]
    yaml_cfg = build_config(TrainConfig, overrides={"base_model": "x", "dataset": "d.jsonl",
                                                    "columns": {"instruction": "question"}})
    assert yaml_cfg.columns == {"instruction": "question"}


@pytest.mark.parametrize("record, key, says", [
    ({"messages": OPENAI_TOOLS["messages"][-2:][:0] + [{"role": "user", "content": "q"},
                                                         {"role": "assistant", "content": "bad"}], "label": False},
     "label", "`label` is KTO data (a good/bad mark on each answer): use `--objective kto`, or `--ignore-columns label`"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "chosen": "a", "rejected": "b"}, "chosen", "use `--objective dpo`, or `--ignore-columns chosen,rejected`"),
    ({"messages": [{"role": "user", "content": "<image>Who?"}, {"role": "assistant", "content": "A cat"}],
      "images": ["1.jpg"]}, "images", "multimodal data: train it with `model-garden train-vision`"),
    ({"instruction": "q", "output": "a", "id": 7}, "id", "`--ignore-columns id` to leave it out deliberately"),
    ({"instruction": "q", "output": "a", "tools": [WEATHER_TOOL]}, "tools", "which the instruction format does not"),
])
def test_a_key_the_format_does_not_use_is_reported_never_dropped(tmp_path, record, key, says):
    path = _jsonl(tmp_path / "d.jsonl", [record, record])
    with pytest.raises(DataError) as err:
        load_dataset_records(str(path))
    text = str(err.value)
    if key == "chosen":  # the whole record is a preference pair
        assert f"{path}:1: `chosen`/`rejected`: a preference pair is not supervised fine-tuning data" in text
    else:
        assert f"{path}:1: key {key!r} is not used by the" in text and "every record has it" in text, text
    assert says in text, text
    ignored = ["chosen,rejected"] if key == "chosen" else [key]
    assert len(load_dataset_records(str(path), ignore_columns=ignored)) == 2  # deliberately ignored: loads


def test_preference_pairs_are_refused_for_sft_and_read_as_preference(tmp_path):
    path = _jsonl(tmp_path / "dpo.jsonl", [
        {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome"},
        {"prompt": "2+2?", "chosen": "4", "rejected": "4"},                       # line 2: the same answer
        {"prompt": "Hi", "chosen": "", "rejected": "Go away"},                   # line 3: an empty side
    ])
    with pytest.raises(DataError, match=r"dpo.jsonl:1: `chosen`/`rejected`: a preference pair .* `--objective dpo`"):
        load_dataset_records(str(path))
    with pytest.raises(DataError) as err:
        load_preference_records(str(path))
    assert f"{path}:2: 'chosen' and 'rejected' are the same answer" in str(err.value)
    assert f"{path}:3: field 'chosen' is empty" in str(err.value)
    good = load_preference_records(str(_jsonl(tmp_path / "ok.jsonl", [
        {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome"},
        {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away"}]},
        {"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "gpt", "value": "Hello"},
         "rejected": {"from": "gpt", "value": "No"}}])))
    assert good.fmt == "preference"
    assert good.records[0] == {"prompt": [{"role": "user", "content": "Capital of France?"}],
                               "chosen": [{"role": "assistant", "content": "Paris"}],
                               "rejected": [{"role": "assistant", "content": "Rome"}]}
    assert good.records[1]["prompt"] == [{"role": "user", "content": "Hi"}]  # the implicit shared prompt
    assert good.records[2]["chosen"] == [{"role": "assistant", "content": "Hello"}]


def test_kto_records_normalise_with_their_label_and_a_missing_label_is_file_line(tmp_path):
    path = _jsonl(tmp_path / "kto.jsonl", [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}], "label": True},
        {"prompt": "q", "completion": "bad", "label": False},
        {"prompt": "q", "completion": "meh", "label": "perhaps"},
    ])
    with pytest.raises(DataError) as err:
        load_preference_records(str(path))
    assert f"{path}:3: field 'label' must be true or false, got 'perhaps'" in str(err.value)
    path = _jsonl(tmp_path / "kto2.jsonl", [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}], "label": True},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}], "label": False}])
    data = load_preference_records(str(path))
    assert data.fmt == "kto" and [r["label"] for r in data.records] == [True, False]
    assert data.records[1]["completion"] == [{"role": "assistant", "content": "bad"}]


# ---------------------------------------------------------------- the loss mask, token by token

def test_the_mask_trains_assistant_turns_only_token_by_token(tok, tmp_path):
    rec = load_dataset_records(str(_jsonl(tmp_path / "s.jsonl", [SHAREGPT]))).records[0]
    ids, mask = tokenize_record(tok, rec)
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>tools\n") and "get_weather" in text  # tools rendered by the template
    assert trained_spans(tok, ids, mask) == [CALL, "It is sunny.<|im_end|>\n"]
    # token by token: a token carries a label exactly when its characters lie in an assistant turn
    full = tok.apply_chat_template(rec["messages"], tools=rec["tools"], tokenize=False)
    spans = [(full.index(CALL), full.index(CALL) + len(CALL)),
             (full.rindex("It is sunny."), len(full))]
    offsets = tok(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    expected = [int(any(a <= start < b for a, b in spans)) for start, _ in offsets]
    assert mask == expected
    assert sum(mask) == len(tok(CALL + "It is sunny.<|im_end|>\n", add_special_tokens=False)["input_ids"])
    _, no_calls = tokenize_record(tok, rec, tool_calls=False)
    assert trained_spans(tok, ids, no_calls) == ["It is sunny.<|im_end|>\n"]
    _, everything = tokenize_record(tok, rec, responses_only=False)
    assert all(everything)


@pytest.mark.parametrize("record, expected", [
    ({"instruction": "q2", "output": "a2", "system": "S", "history": [["q1", "a1"]]},
     ["a1<|im_end|>\n", "a2<|im_end|>\n"]),
    ({"prompt": "2+2?", "completion": "4"}, ["4<|im_end|>\n"]),
    (OPENAI_TOOLS, ['<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call><|im_end|>\n',
                    "It rains.<|im_end|>\n"]),
])
def test_every_format_is_masked_by_role(tok, tmp_path, record, expected):
    data = load_dataset_records(str(_jsonl(tmp_path / "d.jsonl", [record])))
    [row] = tokenize_dataset(tok, data, "tiny")
    ids, mask = row["input_ids"], row["assistant_masks"]
    assert trained_spans(tok, ids, mask) == expected
    # the labels are the ids where the mask is set, -100 elsewhere (TRL's build from assistant_masks)
    untrained = tok.decode([t for t, b in zip(ids, mask) if not b])
    assert "<|im_start|>assistant\n" in untrained and all(e.split("<|im_end|>")[0] not in untrained for e in expected)


def test_a_template_that_cannot_render_tools_names_the_base_model(tok, tmp_path):
    from mg_mlflow.dev.tiny import build_tokenizer

    plain = build_tokenizer()
    plain.chat_template = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
                           "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}")
    data = load_dataset_records(str(_jsonl(tmp_path / "t.jsonl", [OPENAI_TOOLS])))
    with pytest.raises(MGError, match="the chat template of org/plain-model does not render tools"):
        tokenize_dataset(plain, data, "org/plain-model")


def test_profile_counts_turns_tool_calls_trained_tokens_and_truncation(tok, tmp_path):
    data = load_dataset_records(str(_jsonl(tmp_path / "s.jsonl", [SHAREGPT, SHAREGPT])))
    rows = tokenize_dataset(tok, data, "tiny")
    stats = profile(data, rows, max_length=12)
    assert stats["format"] == "sharegpt" and stats["turns"]["max"] == 5
    assert stats["tool_calls"] == 2 and stats["records_with_tool_calls"] == 2 and stats["records_with_tools"] == 2
    assert stats["trained_tokens"]["min"] == sum(rows[0]["assistant_masks"]) > 0
    assert stats["truncated"] == 2 and stats["no_trained_token"] == 2  # 12 tokens: the tools turn alone


# ---------------------------------------------------------------- data validate

def test_data_validate_names_the_format_and_writes_json(tmp_path, tiny_model):
    path = _jsonl(tmp_path / "s.jsonl", [SHAREGPT] * 3)
    out = tmp_path / "stats.json"
    proc = invoke_cli(["data", "validate", str(path), "--base-model", str(tiny_model), "--json", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sharegpt" in proc.stdout and "trained tokens" in proc.stdout
    stats = json.loads(out.read_text())
    assert stats["format"] == "sharegpt" and stats["records"] == 3 and stats["tool_calls"] == 3
    assert stats["trained_tokens"]["min"] > 0 and stats["truncated"] == 0 and stats["no_trained_token"] == 0
    kto = _jsonl(tmp_path / "kto.jsonl", [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": False}])
    proc = invoke_cli(["data", "validate", str(kto)])
    assert proc.returncode == 0 and "kto" in proc.stdout and "--objective kto" in proc.stdout


def test_data_validate_refuses_an_unused_key_with_exit_2(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"instruction": "q", "output": "a", "id": 1}])
    proc = invoke_cli(["data", "validate", str(path), "--format", "instruction"])
    assert proc.returncode == 2
    assert f"{path}:1: key 'id' is not used by the instruction format" in proc.stderr + proc.stdout
    assert invoke_cli(["data", "validate", str(path), "--ignore-columns", "id"]).returncode == 0


def test_a_multi_turn_vision_record_labels_every_assistant_turn(tiny_vl, shapes):
    from mg_mlflow.data.vision_processor import VisionProcessor, load_image

    proc = VisionProcessor.from_dir(tiny_vl)
    image = str(shapes.parent / json.loads(shapes.read_text().splitlines()[0])["image"])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                {"role": "assistant", "content": "red"},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Shape?"}]},
                {"role": "assistant", "content": "circle"}]
    example = proc.encode(messages, [load_image(image), load_image(image)])
    ids, labels = example["input_ids"], example["labels"]
    spans = trained_spans(proc.tokenizer, ids, [int(x != -100) for x in labels])
    assert spans == ["red<|im_end|>\n", "circle<|im_end|>"]  # both answers; images, questions: no label
    assert proc.trained_tokens(messages, [(56, 56), (56, 56)], 1024)[1] == sum(x != -100 for x in labels)


def test_evaluation_data_takes_the_same_column_map_and_ignored_columns(tmp_path):
    from mg_mlflow.evaluation.data import load_eval_set

    csv = tmp_path / "qa.csv"
    pd.DataFrame({"id": [1, 2], "question": ["Add 2 and 3.", "Add 1 and 1."], "answer": ["5", "2"]}).to_csv(csv, index=False)
    columns = {"instruction": "question", "output": "answer"}
    with pytest.raises(DataError, match="key 'id' is not used by the instruction format"):
        load_eval_set(str(csv), columns=columns)
    eval_set = load_eval_set(str(csv), columns=columns, ignore_columns=["id"])
    assert [ex.reference for ex in eval_set.examples] == ["5", "2"]
