"""The root MLproject: every config field is a parameter (trainer_args too); a parameter the user did
not give never overrides the `config` recipe (text and vision entry points, through a real `mlflow run`)."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml
from conftest import BIN, ROOT
from vision_support import shapes, tiny_vl  # noqa: F401


def test_entry_points_declare_no_parameter_that_could_override_a_recipe():
    spec = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    for entry in ("train", "train_vision", "sweep"):
        assert not spec[entry].get("parameters"), "a declared default would override the recipe"
    assert spec["evaluate"]["parameters"] == {"model_uri": {"type": "string"}, "dataset": {"type": "string"}}
    assert not [e for e in spec.values() if "--if-given" in e["command"]]  # one mechanism: extra parameters
    for project in ROOT.glob("projects/*/MLproject"):
        from mg_mlflow.config import TrainConfig

        declared = yaml.safe_load(project.read_text())["entry_points"]["main"].get("parameters", {})
        overriding = {k for k, v in declared.items() if k in TrainConfig.__dataclass_fields__ and "default" in v}
        assert overriding == set(), project


def test_mlflow_extra_parameters_become_set_overrides():
    from mg_mlflow.cli.base import mlflow_params_to_set
    from mg_mlflow.config import TrainConfig
    from mg_mlflow.vision_config import VisionTrainConfig

    args = ["--no-progress", "--config", "r.yaml", "--lora_r", "8", "--carbon", "false", "--gradient-checkpointing",
            "--max-steps", "3", "--learning_rate", "5e-3", "--dataset", "d.jsonl", "--batching", "packed",
            "--trainer_args", "optim=adamw_torch,max_grad_norm=0.5"]
    assert mlflow_params_to_set(args, TrainConfig) == [
        "--no-progress", "--config", "r.yaml", "--set", "lora_r=8", "--set", "carbon=false",
        "--gradient-checkpointing", "--max-steps", "3", "--set", "learning_rate=5e-3", "--dataset", "d.jsonl",
        "--batching", "packed", "--set", "trainer_args=optim=adamw_torch,max_grad_norm=0.5"]
    assert mlflow_params_to_set(["--packing", "true"], TrainConfig) == ["--packing", "true"]  # not a field
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
           "--experiment-name", f"mlproject-{modality}", "-P", f"config={recipe}", "-P", "max_steps=6",
           "-P", "trainer_args=optim=adamw_torch,max_grad_norm=0.5"]
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
    # -P trainer_args="KEY=VALUE,KEY=VALUE" reaches the trainer's settings, one param per key
    assert (params["trainer_args.optim"], params["trainer_args.max_grad_norm"]) == ("adamw_torch", "0.5")
    assert run.data.tags["mlflow.project.entryPoint"] == entry and run.info.status == "FINISHED"
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert run.info.run_name.startswith(f"{base.name}{' vision' if modality == 'vision' else ''} lora r4")


def test_sweep_and_evaluate_take_extra_parameters_the_same_way():
    """The one translation (mg_mlflow/options) for the sweep and evaluate entry points: training fields become
    --set, the command's own options spelled with _ get their dashed names, true/false picks a flag."""
    from click.testing import CliRunner

    from mg_mlflow.cli import cli
    from mg_mlflow.cli.base import mlflow_params_to_args
    from mg_mlflow.cli.evaluate import evaluate_cmd
    from mg_mlflow.cli.sweep import sweep_cmd

    args = ["--grid", "seed=1,2", "--trials", "2", "--max_emissions_kg", "0.5", "--lora_r", "8", "--carbon", "false",
            "--max_pixels", "12544", "--resume", "abc", "--pruner_startup_trials", "3", "--dataset", "d.jsonl"]
    assert mlflow_params_to_args(args, sweep_cmd, sweep_cmd.config_class, sweep_cmd.config_skip) == [
        "--grid", "seed=1,2", "--trials", "2", "--max-emissions-kg", "0.5", "--set", "lora_r=8",
        "--set", "carbon=false", "--set", "max_pixels=12544", "--resume", "abc", "--pruner-startup-trials", "3",
        "--dataset", "d.jsonl"]
    args = ["models:/m/1", "--dataset", "d.jsonl", "--max_new_tokens", "4.0", "--tasks_dir", "t", "--carbon", "False",
            "--force", "true", "--json_schema", "s.json"]
    assert mlflow_params_to_args(args, evaluate_cmd) == [
        "models:/m/1", "--dataset", "d.jsonl", "--max-new-tokens", "4.0", "--tasks-dir", "t", "--no-carbon",
        "--force", "--json-schema", "s.json"]
    assert mlflow_params_to_args(["--force", "0", "--carbon", "yes"], evaluate_cmd) == ["--carbon"]
    # through click: an unknown parameter is named, nothing runs
    res = CliRunner().invoke(cli, ["evaluate", "models:/m/1", "--dataset", "d.jsonl", "--max_new_token", "4"])
    assert res.exit_code == 2 and "--max_new_token" in res.output
