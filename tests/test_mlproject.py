"""The root MLproject: every config field is a parameter; a parameter the user did not give never
overrides the `config` recipe (text and vision entry points, through a real `mlflow run`)."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml
from conftest import BIN, ROOT
from vision_support import shapes, tiny_vl  # noqa: F401


def test_entry_points_declare_no_parameter_that_could_override_a_recipe():
    spec = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    for entry in ("train", "train_vision"):
        assert not spec[entry].get("parameters"), "a declared default would override the recipe"
    for project in ROOT.glob("projects/*/MLproject"):
        from mg_mlflow.config import TrainConfig

        declared = yaml.safe_load(project.read_text())["entry_points"]["main"].get("parameters", {})
        overriding = {k for k, v in declared.items() if k in TrainConfig.__dataclass_fields__ and "default" in v}
        assert overriding == set(), project


def test_mlflow_extra_parameters_become_set_overrides():
    from mg_mlflow.cli.train import mlflow_params_to_set
    from mg_mlflow.config import TrainConfig
    from mg_mlflow.vision_config import VisionTrainConfig

    args = ["--no-progress", "--config", "r.yaml", "--lora_r", "8", "--carbon", "false", "--gradient-checkpointing",
            "--max-steps", "3", "--learning_rate", "5e-3", "--dataset", "d.jsonl", "--batching", "packed",
            "--packing", "true"]
    assert mlflow_params_to_set(args, TrainConfig) == [
        "--no-progress", "--config", "r.yaml", "--set", "lora_r=8", "--set", "carbon=false",
        "--gradient-checkpointing", "--max-steps", "3", "--set", "learning_rate=5e-3", "--dataset", "d.jsonl",
        "--batching", "packed", "--set", "packing=true"]  # -P packing=true: the deprecated name still maps
    assert mlflow_params_to_set(["--max_pixels", "50176"], VisionTrainConfig) == ["--set", "max_pixels=50176"]
    assert mlflow_params_to_set(["--max_pixels", "50176"], TrainConfig) == ["--max_pixels", "50176"]


@pytest.mark.parametrize("modality", ["text", "vision"])
def test_mlflow_run_keeps_the_recipe_values(mg_home, tmp_path, request, modality):
    base = request.getfixturevalue("tiny_model" if modality == "text" else "tiny_vl")
    data = request.getfixturevalue("sample_data" if modality == "text" else "shapes")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "base_model": str(base), "dataset": str(data), "lora_r": 4, "lora_alpha": 8, "learning_rate": 0.005,
        "max_steps": 5, "batch_size": 2, "register_as": "none", "carbon": False, "system_metrics": False,
        **({"max_pixels": 12544, "max_seq_length": 256, "sample_images": 1} if modality == "vision" else {})}))
    entry = "train" if modality == "text" else "train_vision"
    from mg_mlflow.tracking.run import ensure_experiment, use_tracking_uri

    use_tracking_uri()
    ensure_experiment(f"mlproject-{modality}")  # explicit artifact location (sqlite store)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(BIN / "mlflow"), "run", str(ROOT), "-e", entry, "--env-manager", "local",
           "--experiment-name", f"mlproject-{modality}", "-P", f"config={recipe}", "-P", "max_steps=6"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import mlflow

    client = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(f"mlproject-{modality}")
    (run,) = client.search_runs([exp.experiment_id])
    params = run.data.params
    assert (params["lora_r"], params["lora_alpha"], params["learning_rate"], params["batch_size"]) == \
        ("4", "8", "0.005", "2")  # from the recipe, not MLproject defaults
    assert params["max_steps"] == "6"  # a -P the user gave wins over the recipe
    assert run.data.tags["mlflow.project.entryPoint"] == entry and run.info.status == "FINISHED"
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert run.info.run_name.startswith(f"{base.name}{' vision' if modality == 'vision' else ''} lora r4")
