"""End to end: `model-garden train` and `mlflow run . -e train` on a tiny model, a real sqlite store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIN, ROOT, run_cli, train_tiny


def _client():
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    return mlflow.tracking.MlflowClient()


def _only_run(client, experiment="model-garden"):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def _logits(model, tokenizer, text="Reverse the word.\nriver"):
    import torch

    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def _reference_from_output(run, tiny_model, save_method):
    """The trained model rebuilt straight from the run's output folder (not through MLflow)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(run.data.params["output_dir"] or "") if run.data.params.get("output_dir") else None
    folder = (out or Path(os.environ["MG_HOME"]) / "outputs" / run.info.run_id) / "model"
    tok = AutoTokenizer.from_pretrained(folder)
    if save_method == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype="bfloat16")
    return model.eval(), tok


@pytest.mark.parametrize("save_method", ["lora", "merged_16bit"])
def test_cli_train_logs_registers_and_reloads(mg_home, tiny_model, sample_data, save_method):
    import mlflow

    name = f"cli-{save_method.replace('_', '-')}"
    proc = run_cli(["train", "--base-model", str(tiny_model), "--dataset", str(sample_data),
                    "--max-steps", "30", "--learning-rate", "3e-3", "--save-method", save_method,
                    "--register-as", name, "--alias", "champion", "--no-system-metrics", "--no-carbon"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"models:/{name}/1" in proc.stdout

    client = _client()
    run = _only_run(client)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["base_model"] == str(tiny_model) and params["save_method"] == save_method
    assert params["lora_r"] == "16" and params["max_steps"] == "30"
    assert run.data.tags["mg.backend"] == "hf" and "no CUDA GPU" in run.data.tags["mg.backend_reason"]
    assert run.data.tags["mg.version.transformers"]

    history = client.get_metric_history(run.info.run_id, "train/loss")
    steps = [m.step for m in history]
    assert len(history) >= 30 and steps == sorted(steps) and steps[-1] == 30
    assert history[-1].value < history[0].value - 0.5, [m.value for m in history]
    for key in ("train/learning_rate", "train/grad_norm", "system/trainer/epoch", "train/tokens_per_second"):
        assert len(client.get_metric_history(run.info.run_id, key)) >= 10, key

    from mg_mlflow.data.load import load_dataset_records

    inputs = run.inputs.dataset_inputs
    assert [i.dataset.digest for i in inputs] == [load_dataset_records(str(sample_data)).digest]
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "plots"} <= artifacts

    mv = client.get_model_version_by_alias(name, "champion")
    tags = mv.tags
    assert tags["mg.save_method"] == save_method and tags["mg.run_id"] == run.info.run_id
    assert tags["mg.base_model"].startswith("models:/tiny-base/")  # local base -> registered base
    assert float(tags["mg.train_loss"]) == pytest.approx(history[-1].value, rel=1e-6)
    assert tags["mg.dataset_digest"] == inputs[0].dataset.digest

    loaded = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    inner = loaded.unwrap_python_model()
    ref, tok = _reference_from_output(run, tiny_model, save_method)
    diff = (_logits(inner.model, tok).float() - _logits(ref, tok).float()).abs().max().item()
    assert diff <= 1e-4
    answers = loaded.predict(["Add the two numbers.\n2 + 3", "Reverse the word.\nriver"],
                             params={"max_new_tokens": 4})
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    import pandas as pd

    assert loaded.predict(pd.DataFrame({"prompt": ["Reverse the word.\nriver"]}),
                          params={"max_new_tokens": 4}) == answers[1:]


def test_mlflow_run_entry_point_gives_the_same_record(mg_home, tiny_model, sample_data):
    from mg_mlflow.tracking.run import ensure_experiment, use_tracking_uri

    use_tracking_uri()
    ensure_experiment("mlproject")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(BIN / "mlflow"), "run", str(ROOT), "-e", "train", "--env-manager", "local",
           "--experiment-name", "mlproject", "-P", f"base_model={tiny_model}", "-P", f"dataset={sample_data}",
           "-P", "max_steps=20", "-P", "learning_rate=0.003", "-P", "save_method=merged_16bit",
           "-P", "register_as=mlproject-merged", "-P", "alias=champion", "-P", "system_metrics=false",
           "-P", "carbon=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=mg_home)
    assert proc.returncode == 0, proc.stderr[-3000:]

    client = _client()
    run = _only_run(client, "mlproject")
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "train"
    assert run.data.params["max_steps"] == "20" and run.data.params["save_method"] == "merged_16bit"
    from mg_mlflow.config import TrainConfig
    from mg_mlflow.options import flat_params, to_dict

    # every field is a param; a mapping field (trainer_args) is logged key by key, empty here
    assert set(flat_params(to_dict(TrainConfig()))) <= set(run.data.params)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(history) >= 20 and history[-1].value < history[0].value
    mv = client.get_model_version_by_alias("mlproject-merged", "champion")
    assert mv.run_id == run.info.run_id and mv.tags["mg.kind"] == "merged"


def test_adapter_survives_moving_its_base_folder(mg_home, tiny_model, sample_data, tmp_path):
    import mlflow

    base = tmp_path / "my-base"
    shutil.copytree(tiny_model, base)
    result = train_tiny(base, sample_data, register_as="portable", max_steps=10)
    loaded = mlflow.pyfunc.load_model("models:/portable/1").unwrap_python_model()
    before = _logits(loaded.model, loaded.tokenizer)

    base.rename(tmp_path / "moved-away")               # the folder trained from is gone
    shutil.rmtree(mg_home / "models", ignore_errors=True)  # and nothing is cached
    adapter_cfg = (result.model_dir / "adapter_config.json").read_text()
    assert str(tmp_path) not in adapter_cfg

    from mg_mlflow.registry.loader import load_transformers

    model, tok = load_transformers("models:/portable/1")
    assert (_logits(model, tok) - before).abs().max().item() <= 1e-5


def test_failed_verification_registers_nothing(mg_home, tiny_model, sample_data):
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mg_mlflow.errors import MGError
    from mg_mlflow.registry.publish import log_text_model, text_probe, verify
    from mg_mlflow.tracking.run import ensure_experiment

    result = train_tiny(tiny_model, sample_data, register_as="none", max_steps=20)
    client = _client()
    assert client.search_registered_models(filter_string="name='tiny-lora'") == []
    wrong = AutoModelForCausalLM.from_pretrained(tiny_model)  # the untrained base is not the trained model
    tok = AutoTokenizer.from_pretrained(tiny_model)
    with mlflow.start_run(experiment_id=ensure_experiment("verify")):
        info = log_text_model(result.model_dir)
        with pytest.raises(MGError, match="does not reproduce the trained model"):
            verify(info, wrong, text_probe(tok), 1e-3)
    assert client.search_registered_models() == []
