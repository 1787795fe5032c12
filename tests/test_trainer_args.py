"""``--trainer-arg KEY=VALUE`` / YAML ``trainer_args:`` / ``--set trainer_args=...``: the rest of TRL's
``SFTConfig`` (``TrainingArguments`` for vision runs), checked against TRL's own dataclass before any
run exists, passed into the trainer the run builds, and logged as ``trainer_args.KEY`` params."""

from __future__ import annotations

import json
import os

import pytest

from conftest import ROOT, invoke_cli

FAST = ["--max-steps", "2", "--batch-size", "2", "--no-system-metrics", "--no-carbon", "--register-as", "none"]


def _runs():
    import mlflow

    client = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("model-garden")
    return client.search_runs([exp.experiment_id]) if exp else []


def test_trainer_args_reach_the_trainer_and_are_logged(mg_home, tiny_model, sample_data):
    """The real click command parses the options; the trainer the run builds holds them."""
    import mlflow
    from transformers import TrainerCallback

    from mg_mlflow.cli.train import config_from_cli, train_cmd
    from mg_mlflow.config import TrainConfig
    from mg_mlflow.training.recipe import train

    seen = {}

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            inner = getattr(optimizer, "optimizer", optimizer)
            seen.update(optim=str(getattr(args.optim, "value", args.optim)), max_grad_norm=args.max_grad_norm,
                        optimizer=type(inner).__name__, fused=inner.defaults.get("fused"),
                        learning_rate=args.learning_rate)

    ctx = train_cmd.make_context("train", ["--base-model", str(tiny_model), "--dataset", str(sample_data), *FAST,
                                           "--trainer-arg", "optim=adamw_torch", "--trainer-arg", "max_grad_norm=0.25"])
    params = ctx.params
    cfg = config_from_cli(TrainConfig, params.pop("config_file"), params.pop("set_args"),
                          {k: v for k, v in params.items() if k != "progress"})
    assert cfg.trainer_args == {"optim": "adamw_torch", "max_grad_norm": "0.25"}
    result = train(cfg, show_progress=False, callbacks=[Spy()])
    # the default is adamw_torch_fused; adamw_torch is the plain (unfused) AdamW
    assert seen == {"optim": "adamw_torch", "max_grad_norm": 0.25, "optimizer": "AdamW", "fused": None,
                    "learning_rate": cfg.learning_rate}
    logged = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(result.run_id).data.params
    assert logged["trainer_args.optim"] == "adamw_torch" and logged["trainer_args.max_grad_norm"] == "0.25"
    assert "trainer_args" not in logged  # one param per key, never the mapping
    reference = json.loads((ROOT / "tests" / "data" / "mlflow_keys.json").read_text())["params"]
    assert sorted(k for k in logged if not k.startswith("trainer_args.")) == sorted(reference)  # only added


def test_without_trainer_args_nothing_changes(tiny_model, sample_data, tmp_path):
    """No trainer_args: the optimizer is TRL's default (fused AdamW), no trainer_args.* param."""
    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.options import flat_params, to_dict
    from mg_mlflow.training.text import sft_config

    cfg = build_config(TrainConfig, overrides={"base_model": str(tiny_model), "dataset": str(sample_data)})
    args = sft_config(cfg, tmp_path, False, "hf", "padded")
    assert str(args.optim.value) == "adamw_torch_fused" and args.max_grad_norm == 1.0
    assert not [k for k in flat_params(to_dict(cfg)) if k.startswith("trainer_args")]


@pytest.mark.parametrize("extra, expected", [
    (["--trainer-arg", "optimm=x"], "did you mean optim"),
    (["--trainer-arg", "learning_rate=1"], "--learning-rate"),
    (["--trainer-arg", "max_grad_norm=lots"], "max_grad_norm='lots': expected a number"),
    (["--set", "trainer_args=optim=adamw_torch,per_device_train_batch_size=8"], "--batch-size"),
])
def test_bad_trainer_args_exit_2_before_any_run(mg_home, tiny_model, sample_data, tmp_path, extra, expected):
    proc = invoke_cli(["train", "--base-model", str(tiny_model), "--dataset", str(sample_data), *FAST, *extra],
                   cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr and "--trainer-arg" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert _runs() == []  # refused before any MLflow run was created


def test_yaml_trainer_args_work_the_same(mg_home, tiny_model, sample_data, tmp_path):
    import yaml

    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.training.text import sft_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"base_model": str(tiny_model), "dataset": str(sample_data),
                                      "trainer_args": {"optim": "adamw_torch", "max_grad_norm": 0.25,
                                                       "neftune_noise_alpha": 5}}))
    # the command line adds a key and overrides another: layers merge key by key
    cfg = build_config(TrainConfig, recipe, {"trainer_args": ("adam_beta2=0.95",)}, ["trainer_args.max_grad_norm=0.5"])
    args = sft_config(cfg, tmp_path, False, "hf", "padded")
    assert (str(args.optim.value), args.max_grad_norm, args.neftune_noise_alpha, args.adam_beta2) == \
        ("adamw_torch", 0.5, 5.0, 0.95)
    recipe.write_text(yaml.safe_dump({"base_model": str(tiny_model), "dataset": str(sample_data),
                                      "trainer_args": {"optimm": "adamw_torch", "learning_rate": 1}}))
    proc = invoke_cli(["train", "--config", str(recipe), *FAST], cwd=tmp_path)
    assert proc.returncode == 2 and "did you mean optim" in proc.stderr and "--learning-rate" in proc.stderr, \
        proc.stderr
    assert _runs() == []


def test_vision_trainer_args_are_training_arguments(tmp_path):
    """Vision runs train with transformers' Trainer: their trainer_args are TrainingArguments fields."""
    from transformers import TrainingArguments

    from mg_mlflow.errors import ConfigError
    from mg_mlflow.options import build_config
    from mg_mlflow.training.common import trainer_kwargs
    from mg_mlflow.vision_config import VisionTrainConfig

    base = {"base_model": "m", "dataset": "d.jsonl"}
    cfg = build_config(VisionTrainConfig, overrides={**base,
                                                     "trainer_args": ("optim=adamw_torch", "max_grad_norm=0.25")})
    args = TrainingArguments(**trainer_kwargs(cfg, tmp_path, False, "hf"))
    assert (str(args.optim.value), args.max_grad_norm) == ("adamw_torch", 0.25)
    with pytest.raises(ConfigError, match="not a setting of transformers.TrainingArguments"):
        build_config(VisionTrainConfig, overrides={**base, "trainer_args": ("dataset_text_field=text",)})


def test_every_setting_the_training_path_fixes_is_refused(tmp_path):
    """A TrainingArguments / SFTConfig key the training path sets itself can never be overridden
    silently: each is declared (the field that drives it, or the reason)."""
    from mg_mlflow.config import TrainConfig, build_config, trainer_keys_set_by
    from mg_mlflow.training.batching import sft_kwargs
    from mg_mlflow.training.common import trainer_kwargs

    cfg = build_config(TrainConfig, overrides={"base_model": "m", "dataset": "d.jsonl"})
    taken = trainer_keys_set_by(TrainConfig)
    fixed = set(trainer_kwargs(cfg, tmp_path, True, "hf"))
    for mode in ("padded", "padding_free", "packed"):
        fixed |= set(sft_kwargs(mode, "hf")) | set(sft_kwargs(mode, "unsloth"))
    fixed |= {"max_length", "completion_only_loss", "dataset_num_proc", "pad_to_multiple_of",  # text.sft_config
              "remove_unused_columns", "label_names", "dataloader_num_workers"}  # vision.trainer
    assert fixed - set(taken) == set()
