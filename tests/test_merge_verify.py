"""A merged 16-bit save is held to what the 16-bit cast alone costs: a normal run registers (the cast's
own drift measured on the probe, the rule and its values written on the version), a merge that scales
the adapter wrongly is refused with nothing registered."""

from __future__ import annotations

import json
import os

import pytest

from conftest import train_tiny

pytestmark = pytest.mark.slow


def _client():
    import mlflow

    return mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def test_a_normal_merged_run_registers_with_its_rule_on_the_version(mg_home, tiny_model, sample_data):
    """120 steps at lr 3e-3 (lora_alpha 64), float32 training on the CPU: the bfloat16 merge moves the
    logits by more than 2% of the largest one from the float32 model, exactly what rounding the merged
    weights to bfloat16 costs; held to the trained model cast to bfloat16, it registers."""
    result = train_tiny(tiny_model, sample_data, max_steps=120, learning_rate=1e-2,
                        save_method="merged_16bit", register_as="merged-normal", dtype="float32")
    mv = _client().get_model_version("merged-normal", result.registered_version)
    tags = mv.tags
    drift, cast, limit = (float(tags[f"mg.merge_{k}"]) for k in ("max_logit_diff", "cast_drift", "tolerance"))
    print(f"\nmerge figures: vs float32 {drift:.3g}, the cast alone {cast:.3g}, tolerance {limit:.3g}")
    assert 0 < cast and drift <= limit and limit >= 2 * cast
    assert "2 x the cast drift" in tags["mg.merge_rule"] and "bfloat16" in tags["mg.merge_rule"]
    assert result.metrics["merge_cast_drift"] == pytest.approx(cast, rel=1e-2)
    assert "merge" in mv.description and "cast" in mv.description  # the model card says it too


def test_a_merge_with_a_wrong_lora_scaling_is_still_refused(mg_home, tiny_model, sample_data, monkeypatch):
    """The merge reads lora_alpha from the adapter config it was handed: doubled there (alpha/r twice
    the trained scaling, a real scaling bug), the merged model is wrong and nothing is registered."""
    from mg_mlflow.errors import MGError
    from mg_mlflow.training import save

    real_merge = save.merge_adapter

    def merge_with_doubled_scaling(adapter_dir, *args, **kwargs):
        path = adapter_dir / "adapter_config.json"
        cfg = json.loads(path.read_text())
        cfg["lora_alpha"] = 2 * cfg["lora_alpha"]
        path.write_text(json.dumps(cfg))
        return real_merge(adapter_dir, *args, **kwargs)

    monkeypatch.setattr(save, "merge_adapter", merge_with_doubled_scaling)
    with pytest.raises(MGError, match="drifted from the trained model") as err:
        train_tiny(tiny_model, sample_data, max_steps=120, learning_rate=3e-3, save_method="merged_16bit",
                   register_as="merged-wrong", dtype="float32")
    assert "alone moves the logits by" in str(err.value)  # the message names the rule it applied
    assert "merged-wrong" not in [m.name for m in _client().search_registered_models()]
    run = _client().search_runs([e.experiment_id for e in _client().search_experiments()])[0]
    assert run.info.status == "FAILED"
    assert run.data.metrics["merge_max_logit_diff"] > 3 * run.data.metrics["merge_tolerance"]
