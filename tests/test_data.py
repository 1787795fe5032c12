"""Dataset loading and validation: every bad record as file:line, before any model is loaded."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mg_mlflow.data.load import load_dataset_records, split_eval
from mg_mlflow.data.sample import sample_records, write_sample
from mg_mlflow.errors import DataError, MGError


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_instruction_and_messages_formats_normalise_to_messages(tmp_path):
    inst = load_dataset_records(str(write_sample(tmp_path / "a.jsonl", 8)))
    msgs = load_dataset_records(str(write_sample(tmp_path / "b.jsonl", 8, fmt="messages")))
    assert inst.fmt == "instruction" and msgs.fmt == "messages"
    assert inst.records == msgs.records  # same content, two formats
    assert inst.digest == msgs.digest and len(inst.digest) == 16
    assert inst.records[0]["messages"][-1]["role"] == "assistant"


def test_csv_json_and_parquet_load(tmp_path):
    rows = sample_records(6)
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    digests = {load_dataset_records(str(tmp_path / f"d.{ext}")).digest for ext in ("csv", "parquet", "json")}
    assert len(digests) == 1


def test_every_bad_record_is_reported_with_file_and_line(tmp_path):
    good = sample_records(1)[0]
    path = _jsonl(tmp_path / "bad.jsonl", [
        good,
        '{"instruction": "x", "output": ',            # line 2: malformed JSON
        {"instruction": "Say hi"},                     # line 3: missing output
        {"instruction": "", "output": "y"},            # line 4: empty instruction
        {"messages": [{"role": "user", "content": "q"}]},  # line 5: no assistant answer (format mixes too)
        good,
    ])
    with pytest.raises(DataError) as err:
        load_dataset_records(str(path))
    text = str(err.value)
    assert f"{path}:2: not valid JSON" in text
    assert f"{path}:3: missing field 'output'" in text
    assert f"{path}:4: field 'instruction' must be a non-empty string" in text
    assert f"{path}:5:" in text
    assert "4 bad record(s)" in text


def test_messages_roles_and_last_turn_checked(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", [
        {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}]},
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
    ])
    with pytest.raises(DataError) as err:
        load_dataset_records(str(path), fmt="messages")
    text = str(err.value)
    assert f"{path}:1: messages[1].role must be one of" in text
    assert f"{path}:2: messages[1].content must be a string" in text
    assert f"{path}:3: the last message must be the assistant's answer" in text


def test_empty_and_missing_files_stop_with_a_clear_message(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(MGError, match="has no records"):
        load_dataset_records(str(tmp_path / "empty.jsonl"))
    with pytest.raises(MGError, match="does not exist"):
        load_dataset_records(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(MGError, match="unsupported file type"):
        load_dataset_records(str(tmp_path / "x.txt"))


def test_eval_split_is_deterministic_and_disjoint(tmp_path):
    data = load_dataset_records(str(write_sample(tmp_path / "a.jsonl", 40)))
    train, ev = split_eval(data, 0.1, seed=3)
    train2, ev2 = split_eval(data, 0.1, seed=3)
    assert len(ev) == 4 and len(train) == 36
    assert ev.digest == ev2.digest and train.digest == train2.digest
    assert set(ev.locations).isdisjoint(train.locations)
