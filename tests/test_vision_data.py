"""Vision data: the tiny model and processor, the shapes sample, validation of records and images
(file:line before any model loads), the collator, the config and the CLI's refusal of bad images."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from vision_support import registered_names, shapes, tiny_vl, write_jsonl  # noqa: F401 - fixtures


def test_tiny_vl_is_a_qwen2_5_vl_folder(tiny_vl):
    from transformers import AutoTokenizer

    from mg_mlflow.training.vision_collator import VisionProcessor

    config = json.loads((tiny_vl / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl" and config["vision_config"]["out_hidden_size"] == 128
    tok = AutoTokenizer.from_pretrained(tiny_vl)
    assert tok.convert_ids_to_tokens(config["image_token_id"]) == "<|image_pad|>"
    assert tok.convert_ids_to_tokens(config["vision_start_token_id"]) == "<|vision_start|>"
    proc = VisionProcessor.from_dir(tiny_vl)
    from mg_mlflow.data.vision_sample import draw_shape

    inputs = proc.generation_inputs([draw_shape("red", "circle")], "What colour is the shape?")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]          # 56x56 px -> 4x4 patches
    assert int(inputs["mm_token_type_ids"].sum()) == 4               # merged 2x2 -> 4 image tokens


def test_sample_writes_images_next_to_the_jsonl(shapes):
    from PIL import Image

    rows = [json.loads(line) for line in shapes.read_text().splitlines()]
    assert len(rows) == 64 and set(rows[0]) == {"text", "image", "response"}
    assert not Path(rows[0]["image"]).is_absolute()
    with Image.open(shapes.parent / rows[0]["image"]) as img:
        assert img.size == (56, 56)


def test_both_formats_normalise_to_messages_with_lazy_image_paths(shapes, tmp_path):
    from mg_mlflow.data.vision import image_paths, load_vision_records

    rows = [json.loads(line) for line in shapes.read_text().splitlines()][:3]
    img0 = str((shapes.parent / rows[0]["image"]).resolve())
    messages = [
        {"messages": [{"role": "user", "content": [{"type": "image", "image": img0},
                                                    {"type": "text", "text": rows[0]["text"]}]},
                      {"role": "assistant", "content": rows[0]["response"]}]},
        {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file://" + img0}}, {"type": "text", "text": "Q?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A"}]}]},
    ]
    data = load_vision_records(str(write_jsonl(tmp_path / "msgs.jsonl", messages)))
    assert data.fmt == "messages" and len(data) == 2
    assert image_paths(data.records[1]) == [img0] and data.records[1]["messages"][-1]["content"] == "A"
    vision = load_vision_records(str(shapes))
    assert vision.fmt == "vision" and vision.records[0]["messages"][0]["content"][1]["text"] == rows[0]["text"]
    # images stay paths (opened per batch by the collator), never decoded pixels in memory
    assert all(isinstance(p, str) and Path(p).is_absolute() for r in vision.records for p in image_paths(r))
    # the digest follows content, not location
    moved = tmp_path / "moved"
    shutil.copytree(shapes.parent, moved)
    assert load_vision_records(str(moved / shapes.name)).digest == vision.digest


def test_bad_images_are_reported_as_file_line(shapes, tmp_path):
    from mg_mlflow.data.vision import load_vision_records
    from mg_mlflow.errors import DataError

    folder = tmp_path / "bad"
    shutil.copytree(shapes.parent / "images", folder / "images")
    (folder / "images" / "notes.png").write_text("this is text, not a PNG")
    good = sorted(p.name for p in (folder / "images").iterdir() if p.name != "notes.png")[0]
    truncated = folder / "images" / "truncated.png"
    truncated.write_bytes((folder / "images" / good).read_bytes()[:40])
    rows = [{"text": "Q?", "image": f"images/{good}", "response": "A"},
            {"text": "Q?", "image": "images/missing.png", "response": "A"},
            {"text": "Q?", "image": "images/notes.png", "response": "A"},
            {"text": "Q?", "image": "images", "response": "A"},
            {"text": "Q?", "image": str(truncated), "response": "A"},
            {"text": "Q?", "response": "A"},
            "{not json"]
    path = write_jsonl(folder / "data.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_vision_records(str(path))
    problems = err.value.problems
    assert [p.split(": ")[0] for p in problems] == [f"{path}:{n}" for n in (7, 2, 3, 4, 5, 6)]
    text = "\n".join(problems)
    assert "missing.png does not exist" in text and "notes.png is not a readable image" in text
    assert "images is not a file" in text and "truncated.png is not a readable image" in text
    assert "missing field 'image'" in text and "not valid JSON" in text


def test_collator_labels_the_answer_only(tiny_vl, shapes):
    from mg_mlflow.data.vision import load_vision_records
    from mg_mlflow.training.vision_collator import VisionCollator, VisionProcessor

    data = load_vision_records(str(shapes))
    proc = VisionProcessor.from_dir(tiny_vl)
    batch = VisionCollator(proc, 256)(data.records[:3])
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(dim=1).sum())
    for i, rec in enumerate(data.records[:3]):
        labelled = [int(t) for t in batch["labels"][i] if t != -100]
        assert proc.tokenizer.decode(labelled) == rec["messages"][-1]["content"] + "<|im_end|>"
        assert int(batch["mm_token_type_ids"][i].sum()) == int((batch["input_ids"][i] == proc.image_token_id).sum()) == 4


def test_vision_config_collects_every_problem():
    from mg_mlflow.config import build_config
    from mg_mlflow.errors import ConfigError
    from mg_mlflow.vision_config import VisionTrainConfig

    with pytest.raises(ConfigError) as err:
        build_config(VisionTrainConfig, overrides={"dataset": "d.jsonl", "min_pixels": 100, "batching": "padding_free",
                                                   "dataset_format": "instruction"})
    text = str(err.value)
    for needle in ("base_model is required", "min_pixels must be >= 784", "batching=padding_free is not supported for vision",
                   "dataset_format='instruction'"):
        assert needle in text


def test_shipped_vision_recipe_loads():
    from mg_mlflow.config import build_config
    from mg_mlflow.vision_config import VisionTrainConfig

    shipped = ROOT / "projects" / "tiny-vision" / "config.yaml"
    cfg = build_config(VisionTrainConfig, shipped, {"base_model": "x/y", "dataset": "d.jsonl"})
    assert cfg.max_pixels == 12544 and cfg.register_as == "tiny-vision"
    assert "Override example" in shipped.read_text()
    first = (ROOT / "projects" / "tiny-vision" / "config.yaml").read_text().splitlines()[0]
    assert first.startswith("# mlflow run projects/tiny-vision")


def test_cli_refuses_bad_images_before_training(mg_home, tiny_vl, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "Q?", "image": "nowhere.png", "response": "A"}])
    proc = run_cli(["train-vision", "--base-model", str(tiny_vl), "--dataset", str(data),
                    "--register-as", "never", "--no-carbon", "--no-system-metrics"], cwd=tmp_path)
    assert proc.returncode != 0
    assert f"{data}:1: image {tmp_path / 'nowhere.png'} does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "never" not in registered_names()
    import mlflow

    exp = mlflow.get_experiment_by_name("model-garden")
    assert exp is None or not mlflow.search_runs([exp.experiment_id], output_format="list")
