"""Property-based tests (hypothesis): the dataset parser, the config coercion and the model-URI
parser never fail with anything but a clear MGError, and accept exactly what they should."""

from __future__ import annotations

import json
import math
import string
import tempfile
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mg_mlflow.config import TrainConfig, build_config, coerce
from mg_mlflow.data.load import load_dataset_records
from mg_mlflow.errors import ConfigError, MGError
from mg_mlflow.registry.resolve import parse_model_uri, registry_version, resolve_model_uri

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
text = st.text(max_size=20)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                           max_leaves=8)
instruction_records = st.fixed_dictionaries({"instruction": text, "output": text},
                                            optional={"input": st.one_of(st.none(), text, st.integers())})
message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "bot", ""]),
                                 "content": st.one_of(text, st.integers())})
messages_records = st.fixed_dictionaries({"messages": st.lists(message, max_size=4)})
records = st.one_of(instruction_records, messages_records, st.dictionaries(text, json_values, max_size=3), json_values)


def _load(lines: list[bytes]):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        return load_dataset_records(str(path)), path


@SETTINGS
@given(st.lists(records, max_size=6), st.lists(st.binary(max_size=30), max_size=2))
def test_dataset_parser_accepts_valid_records_and_refuses_the_rest_clearly(rows, junk):
    lines = [json.dumps(r).encode() for r in rows] + junk
    try:
        data, _ = _load(lines)
    except MGError as err:
        assert "data.jsonl" in str(err) or "has no records" in str(err)
        return
    for rec in data.records:  # every accepted record is a clean conversation ending with an answer
        msgs = rec["messages"]
        assert msgs and msgs[-1]["role"] == "assistant"
        assert all(m["role"] in ("system", "user", "assistant", "tool") and isinstance(m["content"], str) for m in msgs)
    assert len(data.locations) == len(data.records) and len(data.digest) == 16


@SETTINGS
@given(st.lists(st.fixed_dictionaries({"instruction": st.text(min_size=1).filter(str.strip),
                                       "output": st.text(min_size=1).filter(str.strip)}), min_size=1, max_size=5))
def test_every_valid_instruction_record_round_trips(rows):
    data, path = _load([json.dumps(r).encode() for r in rows])
    assert [r["messages"][-1]["content"] for r in data.records] == [r["output"] for r in rows]
    assert data.fmt == "instruction"


NUMERIC = [f.name for f in fields(TrainConfig) if f.type in ("int", "float", "bool")]


@SETTINGS
@given(st.sampled_from(NUMERIC), st.one_of(st.integers(-10**6, 10**6), st.floats(), st.booleans(), text))
def test_coerce_returns_the_field_type_or_a_value_error(name, value):
    typ = {"int": int, "float": float, "bool": bool}[next(f.type for f in fields(TrainConfig) if f.name == name)]
    try:
        out = coerce(TrainConfig, name, value)
    except ValueError as exc:
        assert "expected" in str(exc)
        return
    assert type(out) is typ
    if typ is not bool and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        assert out == value  # numbers keep their value
    # the text form of a coerced value coerces to the same value (CLI, YAML, MLproject agree)
    again = coerce(TrainConfig, name, str(out).lower() if typ is bool else repr(out))
    assert again == out or (isinstance(out, float) and math.isnan(out) and math.isnan(again))


@SETTINGS
@given(st.dictionaries(st.sampled_from([f.name for f in fields(TrainConfig)] + ["lora_rank", "lr"]),
                       st.one_of(text, st.integers(), st.floats(), st.booleans()), max_size=5))
def test_build_config_raises_only_config_errors(overrides):
    try:
        cfg = build_config(TrainConfig, overrides={"base_model": "b", "dataset": "d.jsonl", **overrides})
    except ConfigError as err:
        assert err.problems and all(isinstance(p, str) and p for p in err.problems)
        return
    for f in fields(cfg):  # a config that passed holds only finite numbers and bounded text
        value = getattr(cfg, f.name)
        assert not (isinstance(value, float) and not math.isfinite(value))
        assert not (isinstance(value, str) and len(value) > 4096)


NAME = st.text(string.ascii_letters + string.digits + "_-.", min_size=1, max_size=20)


@SETTINGS
@given(NAME, st.one_of(st.integers(1, 10**6).map(str), st.just("latest")), NAME)
@example("m-", "1", "prod")
@example("m-support", "latest", "m-1")
@example("m-0123456789abcdef0123456789abcdef", "2", "champion")
def test_model_uri_round_trip(name, version, alias):
    ref = parse_model_uri(f"models:/{name}/{version}")
    assert (ref.kind, ref.name, ref.selector, ref.value) == ("registry", name, "version", version)
    ref = parse_model_uri(f"models:/{name}@{alias}")
    assert (ref.kind, ref.name, ref.selector, ref.value) == ("registry", name, "alias", alias)
    assert parse_model_uri(f"runs:/{name}/model/sub").path == "model/sub"


@SETTINGS
@given(st.one_of(text, st.builds(lambda s: "models:/" + s, text), st.builds(lambda s: "runs:/" + s, text)))
def test_model_uri_parser_never_fails_unclearly(uri):
    try:
        ref = parse_model_uri(uri)
    except MGError as err:
        assert repr(uri) in str(err) and "hint" in str(err)
        return
    assert ref.kind in ("registry", "logged", "run")
    if ref.kind == "registry":
        assert ref.name and "/" not in ref.name and "@" not in ref.name
        assert ref.value == "latest" or ref.selector == "alias" or int(ref.value) >= 1


LOGGED_ID = "m-0123456789abcdef0123456789abcdef"  # MLflow's form: "m-" + uuid4().hex


@pytest.mark.parametrize("uri,expected", [
    ("models:/m-support/1", ("registry", "m-support", "version", "1")),
    ("models:/m-support@prod", ("registry", "m-support", "alias", "prod")),
    ("models:/m-support/latest", ("registry", "m-support", "version", "latest")),
    ("models:/m-support", ("registry", "m-support", "version", "latest")),
    (f"models:/{LOGGED_ID}/3", ("registry", LOGGED_ID, "version", "3")),
])
def test_a_registered_name_starting_with_m_dash_is_a_registered_model(uri, expected):
    ref = parse_model_uri(uri)
    assert (ref.kind, ref.name, ref.selector, ref.value) == expected and not ref.model_id


def test_only_a_bare_m_dash_hex_id_is_a_logged_model():
    ref = parse_model_uri(f"models:/{LOGGED_ID}")
    assert (ref.kind, ref.model_id, ref.name) == ("logged", LOGGED_ID, "")


def test_a_model_registered_as_m_dash_name_resolves_by_version_and_alias(mg_home, tmp_path):
    """A real store: versions of `m-support` are found through /1 and @prod, not looked up as logged models."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    client.create_registered_model("m-support")
    folder = tmp_path / "model"
    folder.mkdir()
    mv = client.create_model_version("m-support", str(folder))
    client.set_registered_model_alias("m-support", "prod", mv.version)
    for uri in ("models:/m-support/1", "models:/m-support@prod", "models:/m-support/latest"):
        _, found = registry_version(uri)
        assert (found.name, str(found.version)) == ("m-support", "1"), uri
    with pytest.raises(MGError, match="'m-support' has no version 2"):
        registry_version("models:/m-support/2")
    with pytest.raises(MGError, match=f"no logged model with id '{LOGGED_ID}'"):
        resolve_model_uri(f"models:/{LOGGED_ID}")
