"""The ready recipes under projects/ run as MLflow Projects (`mlflow run projects/NAME`)."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import BIN, ROOT


@pytest.mark.parametrize("recipe,model", [("tiny-lora", "tiny-lora"), ("tiny-full-merged", "tiny-full"),
                                          ("tiny-dpo", "tiny-dpo")])
def test_recipe_runs_as_an_mlflow_project(mg_home, tmp_path, recipe, model):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(BIN / "mlflow"), "run", str(ROOT / "projects" / recipe), "--env-manager", "local",
           "-P", f"workdir={tmp_path / 'work'}", "-P", "max_steps=12"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import mlflow

    client = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    mv = client.get_model_version_by_alias(model, "champion")
    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["max_steps"] == "12"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(history) >= 12 and history[-1].value < history[0].value
    assert not (ROOT / "projects" / recipe / ".model-garden").exists()  # nothing written into the recipe


def test_the_grpo_recipe_runs_offline_as_an_mlflow_project(mg_home, tmp_path):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(BIN / "mlflow"), "run", str(ROOT / "projects" / "tiny-grpo"), "--env-manager", "local",
           "-P", f"workdir={tmp_path / 'work'}", "-P", "max_steps=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import mlflow

    client = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(client.get_model_version_by_alias("tiny-grpo", "champion").run_id)
    assert run.data.params["objective"] == "grpo" and run.data.params["rewards_resolved"] == "length:1,exact_match:0.5"
    for key in ("train/rewards/length/mean", "train/rewards/exact_match/mean", "train/reward"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 4, key
