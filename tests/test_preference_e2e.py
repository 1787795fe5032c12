"""The preference loop end to end: SFT -> registered -> DPO from that version -> evaluate -> promote.

The preference is learnable by a tiny model (asked for the colour of "a red fox", the colour beats the
animal; mg_mlflow.data.sample.preference_records). The SFT data answers either way, half and half, so
the SFT version holds no preference; DPO from its registered version must turn the held-out preference
accuracy measured by `evaluate` from about 0.5 to >= 0.9 with a positive mean margin.
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import invoke_cli

pytestmark = pytest.mark.slow

COMMON = ["--no-progress", "--batch-size", "4", "--learning-rate", "3e-3", "--no-system-metrics", "--no-carbon"]


def _client():
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    return mlflow.tracking.MlflowClient()


def _evaluate(uri: str, data) -> dict:
    proc = invoke_cli(["evaluate", uri, "--dataset", str(data), "--no-carbon", "--max-new-tokens", "4", "--json"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    return json.loads(proc.stdout)["metrics"]


def test_sft_then_dpo_from_its_version_learns_the_preference(mg_home, tiny_model, tmp_path):
    from mg_mlflow.data.sample import write_preference_sample

    sft = write_preference_sample(tmp_path / "sft.jsonl", 64, "sft")
    pairs = write_preference_sample(tmp_path / "pairs.jsonl", 64, "pairs")
    heldout = write_preference_sample(tmp_path / "heldout.jsonl", 32, "pairs", seed=7)

    proc = invoke_cli(["train", "--base-model", str(tiny_model), "--dataset", str(sft), "--max-steps", "30",
                       "--register-as", "tiny-chat", "--alias", "champion", *COMMON])
    assert proc.returncode == 0, proc.stdout[-3000:]
    before = _evaluate("models:/tiny-chat/1", heldout)
    assert 0.2 <= before["eval/preference_accuracy"] <= 0.7, before

    proc = invoke_cli(["train", "--base-model", "models:/tiny-chat@champion", "--dataset", str(pairs),
                       "--objective", "dpo", "--beta", "0.1", "--max-steps", "40", "--register-as", "tiny-chat",
                       *COMMON])
    assert proc.returncode == 0, proc.stdout[-3000:]
    after = _evaluate("models:/tiny-chat/2", heldout)
    print("preference accuracy", before["eval/preference_accuracy"], "->", after["eval/preference_accuracy"],
          "margin", before["eval/preference_margin"], "->", after["eval/preference_margin"])
    assert after["eval/preference_accuracy"] >= 0.9, after
    assert after["eval/preference_accuracy_normalized"] >= 0.9, after
    assert after["eval/preference_margin"] > 0 > before["eval/preference_margin"] - 1.0, (before, after)
    assert after["eval/preference_pairs"] == 32

    client = _client()
    mv = client.get_model_version("tiny-chat", "2")
    run = client.get_run(mv.run_id)
    assert run.data.params["objective"] == "dpo" and run.data.params["beta"] == "0.1"
    assert run.data.params["loss_type_resolved"] == "sigmoid"
    for key in ("train/rewards/margins", "train/rewards/accuracies"):  # every step of the run
        assert [m.step for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)] \
            == list(range(1, 41)), key
    for key in ("train/rewards/chosen", "train/rewards/rejected", "train/logps/chosen", "train/logps/rejected", "train/learning_rate",
                "train/tokens_per_second"):
        assert len(client.get_metric_history(run.info.run_id, key)) >= 30, key
    margins = client.get_metric_history(run.info.run_id, "train/rewards/margins")
    assert sorted(margins, key=lambda m: m.step)[-1].value > 0

    # lineage: the DPO version names its SFT parent, continues the SFT adapter on the same base
    sft_version = client.get_model_version("tiny-chat", "1")
    assert mv.tags["mg.parent_model"] == "models:/tiny-chat/1" and mv.tags["mg.objective"] == "dpo"
    assert run.data.tags["mg.parent_model"] == "models:/tiny-chat/1"
    assert mv.tags["mg.base_model"] == sft_version.tags["mg.base_model"]
    assert "models:/tiny-chat/1: a frozen copy" in run.data.tags["mg.reference"]
    assert "DPO on `models:/tiny-chat/1`" in mv.description

    # the registered version reloads with the trained model's logits (read from the run's own folder)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mg_mlflow.registry.loader import load_transformers
    from mg_mlflow.registry.publish import model_logits, text_probe

    reloaded, tok = load_transformers("models:/tiny-chat/2")
    saved = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                      str(mg_home / "outputs" / run.info.run_id / "model")).eval()
    probe = text_probe(tok)
    assert (model_logits(reloaded, probe) - model_logits(saved, probe)).abs().max().item() <= 1e-4
    assert float(mv.tags["mg.verify_max_logit_diff"]) <= 1e-3
    assert "ref" not in reloaded.peft_config  # TRL's frozen reference copy is not part of what is saved

    # promote compares the two versions on the held-out pairs
    proc = invoke_cli(["promote", "tiny-chat", "--metric", "eval/preference_accuracy", "--json"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert str(client.get_model_version_by_alias("tiny-chat", "champion").version) == "2"
