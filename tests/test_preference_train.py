"""Preference tuning on the one training path: DPO (from a registered SFT version), KTO, ORPO, SimPO.

The data is a preference a tiny model can learn: asked to shout a word, the uppercased word is the
better answer (mg_mlflow.data.sample.preference_records). Real tiny Llama, real sqlite store, CPU.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import BIN, ROOT, invoke_cli

pytestmark = pytest.mark.slow

BASE = {"system_metrics": False, "carbon": False, "batch_size": 4, "learning_rate": 3e-3}


def _client():
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    return mlflow.tracking.MlflowClient()


def _train(**options):
    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.training.recipe import train

    return train(build_config(TrainConfig, overrides={**BASE, **options}), show_progress=False)


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    from mg_mlflow.data.sample import write_preference_sample

    folder = tmp_path_factory.mktemp("prefs")
    return {"pairs": write_preference_sample(folder / "pairs.jsonl", 64, "pairs"),
            "heldout": write_preference_sample(folder / "heldout.jsonl", 32, "pairs", seed=7),
            "unpaired": write_preference_sample(folder / "unpaired.jsonl", 64, "unpaired"),
            "sft": write_preference_sample(folder / "sft.jsonl", 64, "sft")}


@pytest.mark.parametrize("objective,data", [("kto", "unpaired"), ("orpo", "pairs"), ("simpo", "pairs")])
def test_each_objective_trains_logs_its_metrics_and_registers(mg_home, tiny_model, prefs, objective, data):
    result = _train(base_model=str(tiny_model), dataset=str(prefs[data]), objective=objective, max_steps=6,
                    register_as=f"tiny-{objective}")
    client = _client()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["objective"] == objective and run.data.tags["mg.objective"] == objective
    for key in ("train/loss", "train/rewards/chosen", "train/rewards/margins", "train/logps/chosen",
                "train/tokens_per_second"):
        assert len(client.get_metric_history(result.run_id, key)) >= 3, key
    mv = client.get_model_version(f"tiny-{objective}", "1")
    assert mv.tags["mg.objective"] == objective and mv.run_id == result.run_id
    assert float(mv.tags["mg.verify_max_logit_diff"]) <= 1e-3


def test_dpo_full_fine_tuning_loads_an_explicit_frozen_reference(mg_home, tiny_model, prefs):
    result = _train(base_model=str(tiny_model), dataset=str(prefs["pairs"]), objective="dpo", method="full",
                    save_method="merged_16bit", max_steps=3, learning_rate=1e-4, register_as="none")
    run = _client().get_run(result.run_id)
    assert run.data.tags["mg.reference"] == "a frozen copy of the starting model, loaded explicitly"
    assert len(_client().get_metric_history(result.run_id, "train/rewards/accuracies")) == 3


def test_mlflow_run_entry_point_gives_the_cli_record(mg_home, tiny_model, prefs):
    """`mlflow run . -e train -P objective=dpo` and `model-garden train --objective dpo`: the same params,
    the same per-step metric names and the same version tags."""
    from mg_mlflow.tracking.run import ensure_experiment, use_tracking_uri

    common = {"base_model": str(tiny_model), "dataset": str(prefs["pairs"]), "objective": "dpo", "beta": "0.2",
              "loss_type": "ipo", "max_steps": "3", "system_metrics": "false", "carbon": "false"}
    cli = invoke_cli(["train", "--no-progress", "--register-as", "dpo-cli",
                      *(a for k, v in common.items() for a in ("--set", f"{k}={v}"))])
    assert cli.returncode == 0, cli.stdout[-3000:]
    use_tracking_uri()
    ensure_experiment("mlproject")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(BIN / "mlflow"), "run", str(ROOT), "-e", "train", "--env-manager", "local",
           "--experiment-name", "mlproject", *(a for k, v in common.items() for a in ("-P", f"{k}={v}")),
           "-P", "register_as=dpo-project"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=mg_home)
    assert proc.returncode == 0, proc.stderr[-3000:]

    client = _client()
    by_cli = client.get_run(client.get_model_version("dpo-cli", "1").run_id)
    by_project = client.get_run(client.get_model_version("dpo-project", "1").run_id)
    assert by_project.data.tags["mlflow.project.entryPoint"] == "train"
    for key in ("objective", "beta", "loss_type", "loss_type_resolved", "max_steps"):
        assert by_cli.data.params[key] == by_project.data.params[key], key
    assert by_project.data.params["loss_type_resolved"] == "ipo"
    per_step = {k for k in by_cli.data.metrics if "/" in k}
    assert per_step == {k for k in by_project.data.metrics if "/" in k}
    assert {"train/rewards/margins", "train/rewards/accuracies", "train/logps/chosen", "train/logps/rejected"} <= per_step
    tags = ("mg.objective", "mg.reference", "mg.method")
    assert [by_cli.data.tags[t] for t in tags] == [by_project.data.tags[t] for t in tags]


def test_sweep_over_beta_trains_dpo_children_and_registers_the_best(mg_home, tiny_model, prefs):
    """`sweep --objective dpo --grid beta=...`: --objective is the training objective, --metric the
    figure the sweep optimises."""
    proc = invoke_cli(["sweep", "--base-model", str(tiny_model), "--dataset", str(prefs["pairs"]), "--objective",
                       "dpo", "--grid", "beta=0.05,0.3", "--metric", "loss_final", "--pruner", "none",
                       "--max-steps", "3", "--no-carbon", "--no-system-metrics", "--register-as", "dpo-sweep"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    client = _client()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    parent = next(r for r in runs if r.data.tags.get("mg.run_kind") == "sweep")
    # loss_final, the name from before the train/ prefix, is read as train/loss_final and said so once
    assert parent.data.params["sweep.metric"] == "train/loss_final"
    assert proc.stdout.count("train/loss_final (the name loss_final had") == 1, proc.stdout[-3000:]
    assert sorted(r.data.params["beta"] for r in children) == ["0.05", "0.3"]
    assert {r.data.params["objective"] for r in children} == {"dpo"}
    assert all(client.get_metric_history(r.info.run_id, "train/rewards/margins") for r in children)
    mv = client.get_model_version("dpo-sweep", "1")
    assert mv.tags["mg.objective"] == "dpo"


def test_fresh_adapter_on_the_merged_sft_model(mg_home, tiny_model, prefs):
    """reference=fresh: the registered SFT adapter is merged into its base (registered as a base of its
    own), a new adapter trains on it, and the reference is the SFT model (the new adapter switched off)."""
    _train(base_model=str(tiny_model), dataset=str(prefs["sft"]), max_steps=4, register_as="fresh-sft")
    result = _train(base_model="models:/fresh-sft/1", dataset=str(prefs["pairs"]), objective="dpo",
                    reference="fresh", lora_r=4, max_steps=3, register_as="fresh-dpo")
    client = _client()
    run = client.get_run(result.run_id)
    assert run.data.params["reference"] == "fresh" and run.data.params["lora_r"] == "4"
    assert "merged into its base (reference=fresh" in run.data.tags["mg.start"]
    assert run.data.tags["mg.reference"] == "models:/fresh-sft/1 (the new adapter switched off)"
    mv = client.get_model_version("fresh-dpo", "1")
    assert mv.tags["mg.parent_model"] == "models:/fresh-sft/1"
    assert mv.tags["mg.base_model"].startswith("models:/fresh-sft-v1-merged-base/")

    from mg_mlflow.registry.loader import load_transformers

    model, _ = load_transformers("models:/fresh-dpo/1")
    assert model.peft_config["default"].r == 4  # the new adapter, on the merged SFT model
