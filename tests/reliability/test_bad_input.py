"""Bad input, the cases tests/test_data.py, test_train_errors.py, test_config.py, test_vision_data.py
and test_deploy_errors.py do not already cover: each is refused with a message naming the
file:line or option, a non-zero exit where a command runs, and nothing registered or left running.

Already covered elsewhere (not repeated here): malformed JSONL line, missing field, empty JSONL,
empty instruction, wrong role, non-string content, last turn not assistant, missing dataset file,
unsupported file type, unknown backend/method/--set key, non-integer option, missing base folder,
qlora on CPU, unknown hub base model, Ctrl-C, invalid YAML, unknown YAML key, missing/non-image/
directory/truncated image, bad and unknown URIs, unknown name and alias, busy port.
"""

from __future__ import annotations

import json

import pytest

from mg_mlflow.config import TrainConfig, build_config
from mg_mlflow.data.load import load_dataset_records
from mg_mlflow.errors import ConfigError, DataError, MGError
from conftest import invoke_cli
from reltrain_support import run_cli

GOOD = {"instruction": "Say hi", "output": "hi"}
CHAT = {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]}


def _write(path, data: bytes | str):
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _parquet(path):
    import pandas as pd

    pd.DataFrame([GOOD] * 4).to_parquet(path)
    return path


# name: (file name, content builder(tmp_path) -> path, expected text with {path})
DATA_CASES = {
    "truncated-jsonl": ("t.jsonl", lambda d: _write(d / "t.jsonl", json.dumps(GOOD) + '\n{"instruction": "Say'),
                        "{path}:2: not valid JSON"),
    "duplicate-key": ("k.jsonl", lambda d: _write(d / "k.jsonl", '{"instruction": "a", "instruction": "b", "output": "c"}\n'),
                      "{path}:1: not valid JSON (duplicate key 'instruction')"),
    "non-utf8": ("u.jsonl", lambda d: _write(d / "u.jsonl", json.dumps(GOOD).encode() + b"\n" + b'{"instruction": "caf\xe9", "output": "x"}\n'),
                 "{path}:2: not UTF-8 text (byte 0xe9 at column 21)"),
    "wrong-type": ("w.jsonl", lambda d: _write(d / "w.jsonl", json.dumps({"instruction": 5, "output": "x"}) + "\n"),
                   "{path}:1: field 'instruction' must be a non-empty string"),
    "record-not-object": ("a.jsonl", lambda d: _write(d / "a.jsonl", "[1, 2]\n"), "{path}:1: expected an object, got list"),
    "json-not-list": ("o.json", lambda d: _write(d / "o.json", '{"rows": 3}'), "{path}: expected a JSON list of records"),
    "malformed-csv": ("m.csv", lambda d: _write(d / "m.csv", 'instruction,output\n"Say hi,hi\n'), "{path}: not a valid CSV file"),
    "csv-bad-row": ("r.csv", lambda d: _write(d / "r.csv", "instruction,output\na,b\nc,d,e,f\n"), "{path}: not a valid CSV file"),
    "csv-duplicate-column": ("c.csv", lambda d: _write(d / "c.csv", "instruction,output,output\na,b,c\n"),
                             "{path}:1: duplicate column(s) 'output' in the header"),
    "csv-missing-column": ("n.csv", lambda d: _write(d / "n.csv", "instruction\nSay hi\n"), "{path}:2: missing field 'output'"),
    "empty-csv": ("e.csv", lambda d: _write(d / "e.csv", ""), "has no records"),
    "header-only-csv": ("h.csv", lambda d: _write(d / "h.csv", "instruction,output\n"), "has no records"),
    "lone-surrogate": ("s.jsonl", lambda d: _write(d / "s.jsonl", '{"instruction": "a\\ud800", "output": "x"}\n'),
                       "{path}:1: field 'instruction' holds a lone surrogate '\\ud800' at character 2, not valid Unicode"),
    "lone-surrogate-message": ("sm.jsonl", lambda d: _write(d / "sm.jsonl", json.dumps(
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ok \ud800"}]}) + "\n"),
        "{path}:1: messages[1].content holds a lone surrogate '\\ud800' at character 4"),
    "assistant-only": ("ao.jsonl", lambda d: _write(d / "ao.jsonl", json.dumps(CHAT) + "\n" + json.dumps(
        {"messages": [{"role": "assistant", "content": "hi"}]}) + "\n"),
        "{path}:2: no 'user' message before the assistant's answer"),
    "system-and-assistant": ("sa.jsonl", lambda d: _write(d / "sa.jsonl", json.dumps(
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "assistant", "content": "hi"}]}) + "\n"),
        "{path}:1: no 'user' message before the assistant's answer"),
    "truncated-parquet": ("p.parquet", lambda d: _write(d / "p.parquet", _parquet(d / "full.parquet").read_bytes()[:300]),
                          "{path}: not a valid Parquet file"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_dataset_files_are_refused_with_file_and_line(case, tmp_path):
    _, make, expected = DATA_CASES[case]
    path = make(tmp_path)
    with pytest.raises(MGError) as err:
        load_dataset_records(str(path))
    assert expected.format(path=path) in str(err.value)


@pytest.mark.parametrize("case", ["lone-surrogate", "assistant-only"])
def test_bad_records_are_refused_by_validate_and_by_train_before_any_run(case, mg_home, tiny_model, tmp_path):
    """`data validate` and `train` both name the file:line, exit 2, and leave no run, version or file."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    _, make, expected = DATA_CASES[case]
    path = make(cwd)
    for command in (["data", "validate", str(path)],
                    ["train", "--base-model", str(tiny_model), "--dataset", str(path), "--max-steps", "2",
                     "--no-system-metrics", "--no-carbon"]):
        proc = (run_cli if command[0] == "data" else invoke_cli)(command, cwd=cwd)  # train: in-process
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert expected.format(path=path) in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    _nothing_left(mg_home, cwd, [path.name])


def test_a_chat_dataset_in_parquet_is_accepted(tmp_path):
    """A messages column reads back from Parquet as numpy arrays of structs: the same records as JSONL."""
    import pandas as pd

    chats = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"q{i}"},
                           {"role": "assistant", "content": f"a{i}"}]} for i in range(3)]
    pd.DataFrame(chats).to_parquet(tmp_path / "chat.parquet")
    _write(tmp_path / "chat.jsonl", "".join(json.dumps(c) + "\n" for c in chats))
    parquet = load_dataset_records(str(tmp_path / "chat.parquet"))
    assert parquet.fmt == "messages" and parquet.records == load_dataset_records(str(tmp_path / "chat.jsonl")).records
    proc = run_cli(["data", "validate", str(tmp_path / "chat.parquet")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_data_validate_exits_2_on_non_utf8_and_long_records(tmp_path, tiny_model):
    bad = DATA_CASES["non-utf8"][1](tmp_path)
    proc = run_cli(["data", "validate", str(bad)], cwd=tmp_path)
    assert proc.returncode == 2 and f"{bad}:2: not UTF-8 text" in proc.stderr and "Traceback" not in proc.stderr
    # records longer than the max length are counted (training truncates them)
    from mg_mlflow.data.stats import dataset_stats

    long = _write(tmp_path / "long.jsonl", "".join(json.dumps({"instruction": "word " * 200, "output": "x"}) + "\n"
                                                  for _ in range(3)))
    stats = dataset_stats(str(long), base_model=str(tiny_model), max_seq_length=32)
    assert stats["truncated"] == 3 and stats["no_trained_token"] == 3  # cut before the answer starts


def test_a_base_without_chat_template_is_named(tmp_path, tiny_model):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    for extra in plain.glob("chat_template.*"):
        extra.unlink()
    from mg_mlflow.data.stats import dataset_stats

    data = _write(tmp_path / "d.jsonl", json.dumps(GOOD) + "\n")
    with pytest.raises(MGError) as err:
        dataset_stats(str(data), base_model=str(plain))
    assert f"--base-model {plain}: the tokenizer has no chat template" in str(err.value)


def test_huge_image_is_refused_before_decoding(tmp_path, monkeypatch):
    from PIL import Image

    from mg_mlflow.data.vision import load_vision_records

    Image.new("1", (10000, 10000)).save(tmp_path / "bomb.png")  # 100 M pixels, a few kB on disk
    Image.new("RGB", (64, 48)).save(tmp_path / "big.png")
    rows = [{"text": "Q?", "image": "bomb.png", "response": "A"}, {"text": "Q?", "image": "big.png", "response": "A"}]
    data = _write(tmp_path / "v.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("MG_MAX_IMAGE_PIXELS", str(64 * 48 - 1))
    with pytest.raises(DataError) as err:
        load_vision_records(str(data))
    (bomb, big) = err.value.problems
    assert bomb.startswith(f"{data}:1: image {tmp_path / 'bomb.png'} is too large to decode safely")
    assert big.startswith(f"{data}:2: image {tmp_path / 'big.png'} is 64x48 pixels, more than 3071")


CONFIG_CASES = {
    "negative-steps": ({"max_steps": -5}, "max_steps must be -1 (use epochs) or > 0, got -5"),
    "nan-learning-rate": ({"learning_rate": "nan"}, "learning_rate must be a finite number, got nan"),
    "inf-warmup": ({"warmup_steps": "inf"}, "warmup_steps must be a finite number, got inf"),
    "10kB-string": ({"run_name": "x" * 10_000}, "run_name is 10000 characters long (at most 4096)"),
    "zero-batch": ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    "bool-for-int": ({"lora_r": True}, "option lora_r: expected an integer, got True"),
    "dropout-one": ({"lora_dropout": 1.0}, "lora_dropout must be in [0, 1), got 1.0"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_odd_parameter_values_are_named(case):
    overrides, expected = CONFIG_CASES[case]
    with pytest.raises(ConfigError) as err:
        build_config(TrainConfig, overrides={"base_model": "b", "dataset": "d.jsonl", **overrides})
    assert expected in str(err.value)


def test_yaml_that_is_not_a_mapping_names_the_file(tmp_path):
    for text in ("- base_model: x\n", "just a string\n", "42\n"):
        path = _write(tmp_path / "c.yaml", text)
        with pytest.raises(ConfigError, match=f"{path}: expected a mapping of option: value"):
            build_config(TrainConfig, path)


@pytest.mark.parametrize("uri,expected", [
    ("models:/", "malformed model URI 'models:/'"),
    ("models:/tiny/0", "version must be a number >= 1"),
    ("models:/tiny/v2", "version must be a number >= 1, 'latest' or @alias, got 'v2'"),
    ("models:/tiny@", "alias '' must be"),
    ("runs:/", "expected runs:/RUN_ID/PATH"),
])
def test_malformed_model_uris(uri, expected):
    from mg_mlflow.registry.resolve import resolve_model_uri

    with pytest.raises(MGError, match="hint"):
        resolve_model_uri(uri)
    with pytest.raises(MGError) as err:
        resolve_model_uri(uri)
    assert expected in str(err.value)


def test_unknown_version_and_alias_list_what_exists(mg_home, tmp_path):
    import mlflow

    from mg_mlflow.registry.resolve import resolve_model_uri

    client = mlflow.tracking.MlflowClient()
    client.create_registered_model("known")
    client.create_model_version("known", source=tmp_path.as_uri())
    client.set_registered_model_alias("known", "prod", "1")
    with pytest.raises(MGError) as err:
        resolve_model_uri("models:/known/7")
    assert "registered model 'known' has no version 7" in str(err.value) and "versions 1; aliases @prod->1" in str(err.value)
    with pytest.raises(MGError, match="has no alias @staging"):
        resolve_model_uri("models:/known@staging")


def test_disk_full_during_save_fails_the_run_and_registers_nothing(mg_home, tiny_model, sample_data, tmp_path):
    """A 128 kB tmpfs as the output folder: the adapter save hits ENOSPC."""
    import shutil
    import subprocess

    from reltrain_support import runs

    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    out = tmp_path / "full"
    out.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(out)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        proc = run_cli(["train", "--base-model", str(tiny_model), "--dataset", str(sample_data), "--max-steps", "3",
                        "--no-system-metrics", "--no-carbon", "--output-dir", str(out), "--register-as", "full-disk"],
                       cwd=tmp_path)
        half_written = (out / "model").exists()  # looked at while the tmpfs is still mounted
    finally:
        subprocess.run(["umount", "-l", str(out)], check=True)
    assert proc.returncode == 2 and "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
    assert not half_written  # the half-written model folder is removed
    (run,) = runs()
    assert run.info.status == "FAILED" and "No space left on device" in run.data.tags["mg.error"]
    import mlflow

    names = [m.name for m in mlflow.tracking.MlflowClient().search_registered_models()]
    assert "full-disk" not in names  # (the base may be registered first, as the adapter's portable base)


# ---------------------------------------------------------------- refused before any run exists

def _yaml(text: str):
    return lambda d: _write(d / "recipe.yaml", text)


# name: (extra CLI arguments, or a builder of a YAML recipe, expected text); every case runs
# `model-garden train` on the tiny model and must leave no run, no registered model and no file
BEFORE_RUN_CASES = {
    "version-alias": (["--alias", "v2"], "alias 'v2': MLflow reserves v<number> for versions"),
    "version-alias-upper": (["--alias", "V3"], "alias 'V3': MLflow reserves v<number> for versions"),
    "latest-alias": (["--alias", "latest"], "alias 'latest': 'latest' is reserved by MLflow"),
    "alias-with-space": (["--alias", "my alias"], "alias 'my alias': an alias is letters, digits, '-' and '_'"),
    "name-300-chars": (["--register-as", "n" * 300], "register_as: the name is 300 characters long; a registered "
                                                      "model name has at most 200"),
    "name-with-quote": (["--register-as", "o'brien"], "register_as \"o'brien\": a registered model name is letters, "
                                                      "digits, '-', '_' and '.'"),
    "name-with-slash": (["--register-as", "team/model"], "register_as 'team/model': a registered model name cannot "
                                                         "contain '/' or ':'"),
    "yaml-mapping-name": (_yaml("register_as:\n  team: model\n"),
                          "recipe.yaml: register_as: expected a single value, got a mapping"),
    "yaml-duplicate-key": (_yaml("lora_r: 8\nmax_steps: 2\nlora_r: 16\n"),
                           "recipe.yaml:3: not valid YAML (key 'lora_r' given twice (first on line 1); keep one)"),
    "negative-seed": (["--seed", "-1"], "seed must be >= 0, got -1"),
    "empty-experiment": (["--experiment", ""], "experiment: the MLflow experiment name cannot be empty"),
    "negative-save-steps": (["--save-steps", "-3"], "save_steps must be >= 0 (0 = off), got -3"),
    "unknown-lora-target": (["--lora-target-modules", "q_proj,nosuch"],
                            "--lora-target-modules: 'nosuch' is not a module of"),
}


def _nothing_left(home, cwd, inputs=()):
    import mlflow

    from reltrain_support import runs

    assert runs() == []
    assert mlflow.tracking.MlflowClient().search_registered_models() == []
    assert sorted(p.name for p in cwd.iterdir()) == sorted(inputs)
    assert not (home / "outputs").exists() or not list((home / "outputs").iterdir())


@pytest.mark.parametrize("case", list(BEFORE_RUN_CASES))
def test_bad_names_and_values_are_refused_before_any_run(case, mg_home, tiny_model, sample_data, tmp_path):
    args, expected = BEFORE_RUN_CASES[case]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    inputs = []
    if callable(args):
        recipe = args(cwd)
        inputs, args = [recipe.name], ["--config", str(recipe)]
    proc = invoke_cli(["train", "--base-model", str(tiny_model), "--dataset", str(sample_data), "--max-steps", "2",
                    "--no-system-metrics", "--no-carbon", *args], cwd=cwd)
    assert proc.returncode == 2, proc.stderr
    assert expected in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    _nothing_left(mg_home, cwd, inputs)


def test_sweep_and_promote_check_the_alias_first(mg_home, tiny_model, sample_data, tmp_path):
    tmp_path = tmp_path / "cwd"  # (MG_HOME is tmp_path / "mg-home")
    tmp_path.mkdir()
    proc = invoke_cli(["sweep", "--base-model", str(tiny_model), "--dataset", str(sample_data), "--max-steps", "2",
                    "--no-carbon", "--grid", "lora_r=4,8", "--alias", "latest"], cwd=tmp_path)
    assert proc.returncode == 2 and "alias 'latest': 'latest' is reserved by MLflow" in proc.stderr, proc.stderr
    proc = invoke_cli(["promote", "tiny-lora", "--alias", "v2"], cwd=tmp_path)
    assert proc.returncode == 2 and "--alias 'v2': MLflow reserves v<number>" in proc.stderr, proc.stderr
    _nothing_left(mg_home, tmp_path)


@pytest.mark.parametrize("port", ["70000", "-5", "0"])
def test_deploy_port_out_of_range(port, mg_home, tmp_path):
    tmp_path = tmp_path / "cwd"
    tmp_path.mkdir()
    proc = invoke_cli(["deploy", "models:/tiny-lora/1", "--dry-run", "--port", port], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"--port {port}: a port must be 1-65535" in proc.stderr
    _nothing_left(mg_home, tmp_path)


def _copy_base(tiny_model, d, edit=None):
    import shutil

    folder = d / "base"
    shutil.copytree(tiny_model, folder)
    if edit:
        edit(folder)
    return str(folder)


def _no_tokenizer(folder):
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).unlink()


def _unknown_type(folder):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "nosucharch"}))


def _adapter(tiny_model, d):
    """A LoRA adapter folder saved by peft (untrained), with the lineage Model Garden writes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = d / "adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model)),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(str(folder))
    (folder / "mg_model.json").write_text(json.dumps({"kind": "adapter", "base_model": {"kind": "path",
                                                                                         "path": str(tiny_model)}}))
    return folder


def _registered_adapter(tiny_model, d):
    import mlflow

    folder = _adapter(tiny_model, d)
    client = mlflow.tracking.MlflowClient()
    client.create_registered_model("an-adapter")
    client.create_model_version("an-adapter", source=folder.as_uri())
    return "models:/an-adapter/1"


# name: (builder(tiny_model, folder) -> --base-model value, expected text); `train` must refuse before any run
BASE_CASES = {
    "no-tokenizer": (lambda t, d: _copy_base(t, d, _no_tokenizer),
                     "--base-model {base}: the folder has no tokenizer (none of tokenizer.json"),
    "unknown-model-type": (lambda t, d: _copy_base(t, d, _unknown_type),
                           "--base-model {base}: config.json has model_type 'nosucharch', which transformers"),
    "adapter-folder-as-base": (lambda t, d: str(_adapter(t, d)), "--base-model {base} is a LoRA adapter, not a "
                               "base model hint: train from its base ({tiny}), or register a merged model"),
}


@pytest.mark.parametrize("case", list(BASE_CASES))
def test_unusable_base_models_are_refused_before_any_run(case, mg_home, tiny_model, sample_data, tmp_path):
    import mlflow

    make, expected = BASE_CASES[case]
    base = make(tiny_model, tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = invoke_cli(["train", "--base-model", base, "--dataset", str(sample_data), "--max-steps", "2",
                    "--no-system-metrics", "--no-carbon"], cwd=cwd)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    said = " ".join(proc.stderr.split())
    assert expected.format(base=base, tiny=tiny_model) in said and "Traceback" not in proc.stderr, said
    from reltrain_support import runs

    assert runs() == [] and sorted(p.name for p in cwd.iterdir()) == []
    names = [m.name for m in mlflow.tracking.MlflowClient().search_registered_models()]
    assert names == []
    assert not (mg_home / "outputs").exists() or not list((mg_home / "outputs").iterdir())


def test_a_sweep_on_data_outside_the_allowed_folders_is_refused_before_any_trial(mg_home, tiny_model, sample_data,
                                                                                 tmp_path):
    cwd = tmp_path / "cwd"
    allowed = tmp_path / "allowed"
    cwd.mkdir()
    allowed.mkdir()
    proc = invoke_cli(["sweep", "--base-model", str(tiny_model), "--dataset", str(sample_data), "--max-steps", "2",
                    "--no-carbon", "--no-system-metrics", "--grid", "lora_r=4,8", "--metric", "loss_final"], cwd=cwd,
                   env={"MG_ALLOWED_DATA_DIRS": str(allowed)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    said = " ".join(proc.stderr.split())
    assert f"dataset file {sample_data} is outside the allowed data folders (MG_ALLOWED_DATA_DIRS={allowed})" in said
    assert "Traceback" not in proc.stderr
    _nothing_left(mg_home, cwd)


def test_good_names_are_accepted_and_an_m_prefixed_name_resolves(mg_home, tmp_path):
    import mlflow

    from mg_mlflow.registry.resolve import resolve_model_uri

    for name, alias in (("m-test", "champion"), ("qwen2.5-support_v1", "release-2"), ("A" * 200, "V_2")):
        cfg = build_config(TrainConfig, overrides={"base_model": "b", "dataset": "d.jsonl", "register_as": name,
                                                   "alias": alias})
        assert (cfg.register_as, cfg.alias) == (name, alias)
    client = mlflow.tracking.MlflowClient()
    client.create_registered_model("m-test")
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"")  # what the model cache checks for: config and weights
    client.create_model_version("m-test", source=src.as_uri())
    client.set_registered_model_alias("m-test", "champion", "1")
    assert resolve_model_uri("models:/m-test/1").version == "1"
    assert resolve_model_uri("models:/m-test@champion").version == "1"
