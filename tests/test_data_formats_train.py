"""Each dataset format trains a few steps on the tiny models (text and vision) and the run records the
detected format (param ``dataset_format_resolved``) and the dataset profile next to the dataset input;
refused data (KTO labels, a missing image, a placeholder count that does not match) is a file:line error
with exit code 2 and no MLflow run."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from conftest import invoke_cli, train_tiny
from test_data_formats import OPENAI_TOOLS, SHAREGPT
from vision_support import shapes, tiny_vl, train_vl, write_jsonl  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


def _client():
    import mlflow

    return mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def _runs():
    exp = _client().get_experiment_by_name("model-garden")
    return _client().search_runs([exp.experiment_id]) if exp else []


def _profile(run_id: str) -> dict:
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="datasets/training_profile.json")
    return json.loads(open(path).read())


@pytest.mark.parametrize("fmt", ["sharegpt", "messages", "instruction"])
def test_each_text_format_trains_and_the_run_names_it(mg_home, tiny_model, tmp_path, fmt):
    if fmt == "instruction":  # a column-mapped CSV
        data = tmp_path / "qa.csv"
        pd.DataFrame({"question": [f"Add {i} and 1." for i in range(8)],
                      "answer": [str(i + 1) for i in range(8)]}).to_csv(data, index=False)
        extra = {"columns": {"instruction": "question", "output": "answer"}}
    else:
        data = write_jsonl(tmp_path / "d.jsonl", [SHAREGPT if fmt == "sharegpt" else OPENAI_TOOLS] * 8)
        extra = {}
    result = train_tiny(tiny_model, data, max_steps=2, register_as="none", **extra)
    run = _client().get_run(result.run_id)
    assert run.data.params["dataset_format"] == "auto" and run.data.params["dataset_format_resolved"] == fmt
    assert {t.key: t.value for t in run.inputs.dataset_inputs[0].tags}["format"] == fmt
    profile = _profile(result.run_id)
    assert profile["format"] == fmt and profile["records"] == 8 and profile["trained_tokens"]["min"] > 0
    assert profile["tool_calls"] == (8 if fmt != "instruction" else 0)
    if fmt == "instruction":
        assert run.data.params["columns.instruction"] == "question"


def test_kto_data_is_refused_for_sft_before_any_run_and_trains_when_the_label_is_ignored(mg_home, tiny_model,
                                                                                          tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Add {i} and 1."},
                          {"role": "assistant", "content": str(i + 1)}], "label": i % 2 == 0} for i in range(8)]
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    args = ["train", "--base-model", str(tiny_model), "--dataset", str(data), "--max-steps", "2",
            "--no-system-metrics", "--no-carbon", "--register-as", "none"]
    proc = invoke_cli(args, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{data}:1: dataset {data} holds unpaired labelled answers" in proc.stderr
    assert "use `--objective kto`, or `--ignore-columns label`" in proc.stderr
    assert _runs() == []  # refused before any MLflow run
    assert invoke_cli([*args, "--ignore-columns", "label"], cwd=tmp_path).returncode == 0
    (run,) = _runs()
    assert "label" in run.data.params["ignore_columns"]


def test_a_template_without_tools_is_refused_before_any_run(mg_home, tiny_model, tmp_path):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    template = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
                "+ '<|im_end|>' + '\n' }}{% endfor %}")
    if "chat_template" in cfg:
        cfg["chat_template"] = template
        (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    for f in plain.glob("chat_template.*"):
        f.write_text(template)
    data = write_jsonl(tmp_path / "t.jsonl", [OPENAI_TOOLS] * 4)
    proc = invoke_cli(["train", "--base-model", str(plain), "--dataset", str(data), "--max-steps", "2",
                       "--no-system-metrics", "--no-carbon"], cwd=tmp_path)
    assert proc.returncode == 2 and f"the chat template of {plain} does not render tools" in proc.stderr
    assert _runs() == []


def _two_image_records(shapes_file, tmp_path):
    """Messages with <image> placeholders and an images list relative to the file, two images per record."""
    rows = [json.loads(line) for line in shapes_file.read_text().splitlines()][:8]
    out = []
    for a, b in zip(rows, rows[1:] + rows[:1]):
        out.append({"messages": [
            {"role": "user", "content": f"<image>{a['text']}"}, {"role": "assistant", "content": a["response"]},
            {"role": "user", "content": f"And this one? <image>{b['text']}"},
            {"role": "assistant", "content": b["response"]}],
            "images": [os.path.relpath(shapes_file.parent / a["image"], tmp_path),
                       os.path.relpath(shapes_file.parent / b["image"], tmp_path)]})
    return out


def test_multimodal_messages_with_two_images_validate_and_train_vision(mg_home, tiny_vl, shapes, tmp_path):
    rows = _two_image_records(shapes, tmp_path)
    data = write_jsonl(tmp_path / "mm.jsonl", rows)
    out = tmp_path / "stats.json"
    proc = invoke_cli(["data", "validate", str(data), "--base-model", str(tiny_vl), "--json", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stats = json.loads(out.read_text())
    assert stats["format"] == "messages" and stats["images"]["min"] == 2 and stats["image_width"]["max"] == 56
    assert stats["visual_tokens"]["min"] == 8  # two 56x56 images, 4 tokens each
    result = train_vl(tiny_vl, data, max_steps=2, register_as="none", sample_images=0)
    run = _client().get_run(result.run_id)
    assert run.data.params["dataset_format_resolved"] == "messages"
    assert _profile(result.run_id)["visual_tokens"]["min"] == 8
    # the text trainer refuses the same file: its images would be dropped
    proc = invoke_cli(["data", "validate", str(data), "--text"])
    assert proc.returncode == 2 and "key 'images' is not used by the messages format" in proc.stderr


@pytest.mark.parametrize("case", ["missing-image", "placeholder-count"])
def test_bad_multimodal_records_are_file_line_errors_with_no_run(mg_home, tiny_vl, shapes, tmp_path, case):
    rows = _two_image_records(shapes, tmp_path)
    if case == "missing-image":
        rows[2]["images"][1] = "no/such.png"
        expected = f"mm.jsonl:3: image {tmp_path / 'no/such.png'} does not exist"
    else:
        rows[1]["messages"][2]["content"] = "And this one?"  # one placeholder for two images
        expected = "mm.jsonl:2: 1 image placeholder(s) (<image> or {\"type\": \"image\"}) in the messages but 2 image(s)"
    data = write_jsonl(tmp_path / "mm.jsonl", rows)
    proc = invoke_cli(["train-vision", "--base-model", str(tiny_vl), "--dataset", str(data), "--max-steps", "2",
                       "--no-system-metrics", "--no-carbon"], cwd=tmp_path)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert _runs() == []
