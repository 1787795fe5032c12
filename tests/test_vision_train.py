"""End to end on the tiny Qwen2.5-VL: train, track, register, reload through models:/ and answer;
merged models; the `mlflow run . -e train_vision` entry point; the deploy plan for a VL model."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, ROOT
from vision_support import COLOURS, SHAPES, shapes, tiny_vl, train_vl  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def vl_lora(module_home, tiny_vl, shapes):
    return train_vl(tiny_vl, shapes, max_steps=120, register_as="tiny-vl-lora", alias="champion",
                    eval_split=0.1, eval_steps=60)


def _client():
    import mlflow

    return mlflow.tracking.MlflowClient()


def test_vision_run_has_the_text_record_plus_samples(vl_lora):
    from mg_mlflow.vision_config import VisionTrainConfig
    from mg_mlflow.options import flat_params, to_dict

    client = _client()
    run = client.get_run(vl_lora.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mg.modality"] == "vision"
    # every field is a param; a mapping field (trainer_args) is logged key by key, empty here
    assert set(flat_params(to_dict(VisionTrainConfig()))) <= set(run.data.params)
    loss = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(loss) >= 100
    assert sum(loss[-10:]) / 10 < 0.5 * sum(loss[:10]) / 10       # the loss goes down (8.7 -> <1 here)
    assert client.get_metric_history(run.info.run_id, "eval/loss")
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["data-train", "data-eval"]
    files = {a.path for top in ("samples", "plots", "config") for a in client.list_artifacts(run.info.run_id, top)}
    assert {"samples/answers.json", "samples/answers.png", "samples/images", "plots/loss_curve.png",
            "config/train_config.yaml"} <= files
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "samples/answers.json")).read_text())
    assert table["columns"] == ["image", "question", "expected", "before", "after"] and len(table["data"]) == 3
    assert run.data.metrics["samples/exact_match_after"] >= run.data.metrics["samples/exact_match_before"]


def test_registered_version_reloads_and_answers_a_new_image(vl_lora, tmp_path):
    import mlflow
    import pandas as pd

    from mg_mlflow.data.vision_sample import draw_shape
    from mg_mlflow.registry.pyfunc_vision import load_vision_dir
    from mg_mlflow.training.vision_collator import generate_answer

    mv = _client().get_model_version_by_alias("tiny-vl-lora", "champion")
    assert mv.run_id == vl_lora.run_id and mv.tags["mg.kind"] == "adapter" and mv.tags["mg.modality"] == "vision"
    assert mv.tags["mg.base_model"].startswith("models:/tiny-vl-base/")
    adapter_cfg = json.loads((vl_lora.model_dir / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == mv.tags["mg.base_model"]   # no absolute path
    assert (vl_lora.model_dir / "preprocessor_config.json").is_file()           # processor travels along

    image = tmp_path / "blue-square.png"
    draw_shape("blue", "square", [10, 14, 40, 44]).save(image)                  # not a training image
    questions = ["What colour is the shape?", "What shape is in the picture?", "Describe the picture."]
    loaded = mlflow.pyfunc.load_model("models:/tiny-vl-lora@champion")
    answers = loaded.predict(pd.DataFrame({"image": [str(image)] * 3, "question": questions}),
                             params={"max_new_tokens": 8})
    assert answers[0] in COLOURS and answers[1] in SHAPES                       # it learnt the task's form
    colour, shape = answers[2].removeprefix("a ").split(" ")
    assert colour in COLOURS and shape in SHAPES
    # base64 input gives the same answer, and so does the trained folder loaded directly
    import base64

    b64 = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    assert loaded.predict({"image": [b64], "question": [questions[0]]}, params={"max_new_tokens": 8}) == answers[:1]
    model, proc = load_vision_dir(vl_lora.model_dir)
    assert generate_answer(model, proc, str(image), questions[1], 8) == answers[1]


def test_merged_with_vision_lora_registers_a_deployable_folder(module_home, tiny_vl, shapes, tmp_path):
    import mlflow

    result = train_vl(tiny_vl, shapes, max_steps=20, save_method="merged_16bit", finetune_vision_layers=True,
                      register_as="tiny-vl-merged", sample_images=1)
    mv = _client().get_model_version("tiny-vl-merged", result.registered_version)
    assert mv.tags["mg.kind"] == "merged" and float(mv.tags["mg.verify_max_logit_diff"]) <= 1e-3
    config = json.loads((result.model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl" and not (result.model_dir / "adapter_config.json").exists()
    from mg_mlflow.data.vision_sample import draw_shape

    image = tmp_path / "x.png"
    draw_shape("red", "triangle").save(image)
    out = mlflow.pyfunc.load_model(f"models:/tiny-vl-merged/{result.registered_version}").predict(
        {"image": [str(image)], "question": ["What shape is in the picture?"]}, params={"max_new_tokens": 4})
    assert len(out) == 1 and isinstance(out[0], str)


def test_deploy_plan_for_the_registered_vl_adapter_has_multimodal_flags(vl_lora):
    import mg_mlflow.deploy.plan as plan_mod
    from mg_mlflow.inspect import inspect_model
    from mg_mlflow.registry.resolve import resolve_model_uri

    resolved = resolve_model_uri("models:/tiny-vl-lora@champion")
    inspection = inspect_model(resolved.local_dir)
    assert inspection.kind == "adapter" and inspection.modality == "vision"
    plan = plan_mod.plan_deployment([resolved], [inspection],
                                    plan_mod.DeployOptions(engine="vllm-cpu", port=8123))
    argv = plan.argv
    assert "--limit-mm-per-prompt" in argv and json.loads(argv[argv.index("--limit-mm-per-prompt") + 1])["image"] >= 1
    assert "--enable-lora" in argv and any(a.startswith("tiny-vl-lora=") for a in argv)
    base_dir = Path(argv[argv.index("--model") + 1])
    assert json.loads((base_dir / "config.json").read_text())["model_type"] == "qwen2_5_vl"


def test_ask_command_answers_from_the_registry(vl_lora, tmp_path):
    from conftest import run_cli
    from mg_mlflow.data.vision_sample import draw_shape

    image = tmp_path / "green-circle.png"
    draw_shape("green", "circle").save(image)
    proc = run_cli(["ask", "models:/tiny-vl-lora@champion", "--image", str(image), "-q", "What colour is the shape?"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] in COLOURS
