"""One training path for every modality: the same guarantees and the same MLflow record for text and
vision. Each test runs for both modalities through mg_mlflow.training.recipe.train."""

from __future__ import annotations

import json
import os

import pytest
from conftest import invoke_cli, run_cli, train_tiny
from vision_support import registered_names, shapes, tiny_vl, train_vl, write_jsonl  # noqa: F401

MODALITIES = ["text", "vision"]

# What every run records, whatever its modality (CPU, carbon and system metrics off).
COMMON_METRICS = {"eval/loss", "eval/loss_final", "eval/loss_first", "step_time_median_s",
                  "system/trainer/eval_runtime", "system/trainer/eval_samples_per_second",
                  "system/trainer/eval_steps_per_second", "system/trainer/train_runtime_s",
                  "system/trainer/train_samples_per_second", "system/trainer/train_steps_per_second",
                  "system/trainer/train_tokens_per_second", "system/trainer/epoch", "train/grad_norm",
                  "train/learning_rate", "train/loss", "train/loss_final", "train/loss_first", "train/loss_mean",
                  "train/num_input_tokens_seen", "train/tokens_per_second", "train_seconds", "train_steps",
                  "trained_tokens", "truncated_share", "verify_max_logit_diff"}
VISION_METRICS = {"samples/exact_match_before", "samples/exact_match_after"}
COMMON_VERSION_TAGS = {"mg.save_method", "mg.kind", "mg.base_model", "mg.backend", "mg.modality", "mg.method",
                       "mg.quantization", "mg.run_id", "mg.dataset_digest", "mg.git_commit", "mg.train_loss",
                       "mg.eval_loss", "mg.verify_max_logit_diff", "mg.objective"}
VISION_VERSION_TAGS = {"mg.family", "mg.min_pixels", "mg.max_pixels"}
COMMON_RUN_TAGS = {"mg.modality", "mg.backend", "mg.method", "mg.backend_reason", "mg.batching_reason",
                   "mg.registered_model", "mg.git_commit",
                   "mg.pid", "mg.pid_start", "mg.host",
                   "mg.registered_version", "mg.run_kind", "mg.objective", "mg.start"}


def _train(modality, request, **overrides):
    if modality == "text":
        return train_tiny(request.getfixturevalue("tiny_model"), request.getfixturevalue("sample_data"),
                          **overrides)
    return train_vl(request.getfixturevalue("tiny_vl"), request.getfixturevalue("shapes"), **overrides)


def _base(modality, request):
    return request.getfixturevalue("tiny_model" if modality == "text" else "tiny_vl")


def _client():
    import mlflow

    return mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


@pytest.mark.parametrize("modality", MODALITIES)
def test_whole_path_gives_the_same_record_for_every_modality(mg_home, request, modality):
    import torch

    from mg_mlflow.config import TrainConfig
    from mg_mlflow.vision_config import VisionTrainConfig

    result = _train(modality, request, max_steps=12, eval_split=0.2, register_as=f"one-{modality}")
    client = _client()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    metrics = set(run.data.metrics)
    own = metrics - (VISION_METRICS if modality == "vision" else set())
    assert own == COMMON_METRICS, sorted(own ^ COMMON_METRICS)
    assert len(client.get_metric_history(result.run_id, "train/loss")) == 12  # flushed before the run ended
    from mg_mlflow.options import flat_params, to_dict

    # every field is a param; a mapping field (trainer_args) is logged key by key, empty here
    text_fields = set(flat_params(to_dict(TrainConfig())))
    vision_only = set(flat_params(to_dict(VisionTrainConfig()))) - text_fields
    assert {p for p in run.data.params if not p.startswith("mg.")} >= text_fields
    assert set(run.data.params) & vision_only == (vision_only if modality == "vision" else set())
    own_tags = {t for t in run.data.tags if t.startswith("mg.") and not t.startswith(("mg.version.", "mg.cpu",
                                                                                        "mg.gpu", "mg.device"))}
    assert own_tags == COMMON_RUN_TAGS, sorted(own_tags ^ COMMON_RUN_TAGS)
    assert run.data.tags["mlflow.source.name"].startswith("model-garden train")
    mv = client.get_model_version(f"one-{modality}", result.registered_version)
    tags = {t for t in mv.tags if not t.startswith("mg.carbon")}
    assert tags - (VISION_VERSION_TAGS if modality == "vision" else set()) == COMMON_VERSION_TAGS
    assert "model-garden deploy models:/" in mv.description and mv.tags["mg.dataset_digest"] in mv.description
    assert "- batching: padded (asked: auto)" in mv.description  # how batches were built, on the card too
    assert {d.dataset.name for d in run.inputs.dataset_inputs} and len(run.inputs.dataset_inputs) == 2
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"plots", "config.yaml"} <= artifacts or {"plots"} <= artifacts

    # reload through the registry: the same logits as the folder the run wrote
    from mg_mlflow.registry.publish import model_logits
    from mg_mlflow.registry.resolve import resolve_model_uri

    folder = resolve_model_uri(f"models:/one-{modality}/{result.registered_version}").local_dir
    from pathlib import Path

    from mg_mlflow.registry.resolve import cache_root

    private = [p for p in (Path(folder), *Path(folder).parents) if cache_root() in p.parents]
    assert any(p.stat().st_mode & 0o077 == 0 for p in private)  # the model cache is not world-readable
    if modality == "text":
        from mg_mlflow.registry.loader import load_model_dir
        from mg_mlflow.registry.publish import text_probe

        a, tok = load_model_dir(folder, device="cpu")
        b, _ = load_model_dir(result.model_dir, device="cpu")
        probe = text_probe(tok)
    else:
        from mg_mlflow.data.vision_sample import draw_shape
        from mg_mlflow.registry.loader import load_vision_dir
        from mg_mlflow.registry.publish import vision_probe

        a, processor = load_vision_dir(folder, device="cpu")
        b, _ = load_vision_dir(result.model_dir, device="cpu")
        probe = vision_probe(processor, draw_shape("red", "circle"), "What is this?")
    assert torch.allclose(model_logits(a, probe), model_logits(b, probe), atol=1e-5)


@pytest.mark.parametrize("modality", MODALITIES)
def test_register_as_none_logs_and_registers_nothing(mg_home, request, modality):
    result = _train(modality, request, max_steps=4, register_as="none")
    client = _client()
    assert registered_names() == []  # not even <name>-base
    assert client.search_logged_models(experiment_ids=[client.get_run(result.run_id).info.experiment_id]) == []
    assert (result.model_dir / "adapter_config.json").is_file() and result.registered_version is None
    assert json.loads((result.model_dir / "mg_model.json").read_text())["base_model"]["kind"] == "path"


@pytest.mark.parametrize("modality", MODALITIES)
def test_missing_base_folder_fails_before_any_run(mg_home, request, modality, tmp_path):
    data = request.getfixturevalue("sample_data" if modality == "text" else "shapes")
    command = "train" if modality == "text" else "train-vision"
    proc = invoke_cli([command, "--base-model", str(tmp_path / "no-such-model"), "--dataset", str(data),
                    "--no-carbon", "--no-system-metrics"])
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert _client().search_runs(experiment_ids=[e.experiment_id for e in _client().search_experiments()]) == []


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_example_truncated_before_its_answer_is_refused(mg_home, request, modality):
    from mg_mlflow.errors import MGError

    # text: prompts of the sample data are longer than 6 tokens; vision: 16 image tokens alone fill 17
    length = 6 if modality == "text" else 17
    with pytest.raises(MGError, match="no training example is left after tokenization"):
        _train(modality, request, max_steps=2, max_seq_length=length, register_as=f"cut-{modality}")
    assert registered_names() == []
    runs = _client().search_runs([e.experiment_id for e in _client().search_experiments()])
    assert runs == []  # refused while the data is prepared, before any MLflow run exists


@pytest.mark.parametrize("modality", MODALITIES)
def test_full_finetuning_saves_16bit_the_same_way(mg_home, request, modality):
    from safetensors import safe_open

    result = _train(modality, request, max_steps=4, method="full", save_method="merged_16bit",
                    register_as=f"full-{modality}")
    meta = json.loads((result.model_dir / "mg_model.json").read_text())
    assert meta["kind"] == "merged" and meta["dtype"] == "bfloat16"
    files = sorted(result.model_dir.glob("*.safetensors"))
    with safe_open(str(files[0]), "pt") as fh:
        assert {str(fh.get_tensor(k).dtype) for k in fh.keys()} == {"torch.bfloat16"}
    # the 16-bit copy is held to the trained float32 model, then the reload to the copy
    assert 0 < result.metrics["save_max_logit_diff"] < 0.5
    assert result.metrics["verify_max_logit_diff"] <= 1e-3
    assert result.registered_version == "1"


@pytest.mark.parametrize("modality", MODALITIES)
def test_merge_drift_beyond_tolerance_registers_nothing(mg_home, request, modality, monkeypatch):
    import torch

    from mg_mlflow.errors import MGError
    from mg_mlflow.training import save

    real_merge = save.merge_adapter

    def lossy_merge(*args, **kwargs):  # a merge that damages the weights (fault injection)
        merged = real_merge(*args, **kwargs)
        with torch.no_grad():
            for p in merged.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        return merged

    monkeypatch.setattr(save, "merge_adapter", lossy_merge)
    with pytest.raises(MGError, match="drifted from the trained model"):
        _train(modality, request, max_steps=4, save_method="merged_16bit", register_as=f"drift-{modality}")
    assert f"drift-{modality}" not in registered_names()
    run = _client().search_runs([e.experiment_id for e in _client().search_experiments()])[0]
    assert run.info.status == "FAILED" and run.data.metrics["merge_max_logit_diff"] > 0.1


def test_hub_base_records_the_revision_actually_loaded(mg_home, tiny_model, sample_data, tmp_path):
    """Two cached revisions of a hub model; refs/main points at the OLDER one, which is what loads."""
    import shutil
    import time

    hf_home = tmp_path / "hf"
    repo = hf_home / "hub" / "models--mg-test--tiny-chat"
    loaded, newer = "a" * 40, "b" * 40
    for commit in (loaded, newer):
        shutil.copytree(tiny_model, repo / "snapshots" / commit)
        time.sleep(0.05)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(loaded)
    proc = run_cli(["train", "--base-model", "mg-test/tiny-chat", "--dataset", str(sample_data),
                    "--max-steps", "3", "--register-as", "hub-lora", "--no-carbon", "--no-system-metrics"],
                   env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    mv = _client().get_model_version("hub-lora", "1")
    assert mv.tags["mg.base_model"] == f"mg-test/tiny-chat@{loaded}"
