"""Config: one set of rules for YAML, --set, CLI options and MLproject parameters."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from mg_mlflow.config import TrainConfig, build_config
from mg_mlflow.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BASE = {"base_model": "org/model", "dataset": "data.jsonl"}


def test_precedence_yaml_then_options_then_set(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lora_r: 4\nlearning_rate: 0.1\nmax_steps: 7\n")
    cfg = build_config(TrainConfig, cfg_file, {**BASE, "learning_rate": "0.2"}, ["max_steps=9"])
    assert (cfg.lora_r, cfg.learning_rate, cfg.max_steps) == (4, 0.2, 9)


def test_mlproject_style_values_are_coerced():
    cfg = build_config(TrainConfig, overrides=BASE, set_args=["max_steps=30.0", "gradient_checkpointing=false",
                                                             "carbon=True", "warmup_steps=0.1"])
    assert cfg.max_steps == 30 and cfg.gradient_checkpointing is False and cfg.carbon is True


def test_all_problems_reported_together(tmp_path):
    with pytest.raises(ConfigError) as err:
        build_config(TrainConfig, overrides={"dataset": "d.jsonl", "backend": "tpu", "max_steps": "abc"},
                     set_args=["lora_rank=8"])
    text = str(err.value)
    assert "lora_rank" in text and "did you mean lora_r" in text
    assert "max_steps" in text and "expected an integer" in text
    # choice and required-field problems come from validation, after types are fixed
    with pytest.raises(ConfigError) as err:
        build_config(TrainConfig, overrides={"backend": "tpu", "method": "full", "save_method": "lora"})
    text = str(err.value)
    assert "backend='tpu' is not one of auto, unsloth, hf" in text
    assert "base_model is required" in text and "method=full" in text
    assert len(err.value.problems) == 4


def test_unknown_yaml_key_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 0.1\n")
    with pytest.raises(ConfigError) as err:
        build_config(TrainConfig, bad, BASE)
    assert f"{bad}: unknown option 'learning_rat' (did you mean learning_rate" in str(err.value)


def test_invalid_yaml_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_r: 4\nmax_steps: [1,\n")
    with pytest.raises(ConfigError) as err:
        build_config(TrainConfig, bad, BASE)
    assert f"{bad}:" in str(err.value) and "not valid YAML" in str(err.value)


@pytest.mark.parametrize("config", sorted(ROOT.glob("projects/*/config.yaml")), ids=lambda p: p.parent.name)
def test_every_shipped_config_loads_and_starts_with_its_command(config):
    first = config.read_text().splitlines()[0]
    assert first.startswith("# mlflow run projects/") or first.startswith("# model-garden ")
    assert "Override example" in config.read_text()
    from mg_mlflow.vision_config import VisionTrainConfig

    vision = "train-vision" in (config.parent / "MLproject").read_text()
    cls = VisionTrainConfig if vision else TrainConfig
    cfg = build_config(cls, config, {"base_model": "x/y", "dataset": "d.jsonl"})
    assert isinstance(cfg, cls)


def test_conda_yaml_is_a_valid_environment():
    env = yaml.safe_load((ROOT / "conda.yaml").read_text())
    deps = env["dependencies"]
    assert any(str(d).startswith("python=3.11") for d in deps)
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert any(p.startswith("mlflow") for p in pip) and any(p.startswith("torch") for p in pip)
    assert yaml.safe_load((ROOT / "MLproject").read_text())["conda_env"] == "conda.yaml"


# every command whose options come from a dataclass: (command, [(class, fields skipped)], its own options)
def _generated_commands():
    from mg_mlflow.cli.deploy import deploy_cmd, update_cmd
    from mg_mlflow.cli.evaluate import evaluate_cmd
    from mg_mlflow.cli.jobs import submit_cmd, submit_vision_cmd
    from mg_mlflow.cli.sweep import sweep_cmd
    from mg_mlflow.cli.train import train_cmd, train_vision_cmd
    from mg_mlflow.deploy.plan import DeployOptions
    from mg_mlflow.evaluation.runner import EvalOptions
    from mg_mlflow.experiment.sweep import SweepSpec
    from mg_mlflow.vision_config import VisionTrainConfig

    recipe, job = {"config_file", "set_args"}, {"progress", "address", "gpus", "working_dir", "ship_code"}
    return {
        "train": (train_cmd, [(TrainConfig, ())], recipe | {"progress"}),
        "train-vision": (train_vision_cmd, [(VisionTrainConfig, ())], recipe | {"progress"}),
        "submit": (submit_cmd, [(TrainConfig, ())], recipe | job),
        "submit-vision": (submit_vision_cmd, [(VisionTrainConfig, ())], recipe | job),
        "sweep": (sweep_cmd, [(TrainConfig, ("resume", "checkpoint_artifacts")), (SweepSpec, ())], recipe | {"resume"}),
        "evaluate": (evaluate_cmd, [(EvalOptions, ())], {"model_uri", "as_json"}),
        "deploy": (deploy_cmd, [(DeployOptions, ())], {"args", "dry_run", "foreground"}),
        "deployments update": (update_cmd, [(DeployOptions, ("name",))], {"name", "args", "beside"}),
    }


@pytest.mark.parametrize("name", ["train", "train-vision", "submit", "submit-vision", "sweep", "evaluate", "deploy",
                                  "deployments update"])
def test_each_command_s_options_are_generated_from_its_dataclass(name):
    """One option per field with CLI flags, made by mg_mlflow.options from that field; nothing else but
    the command's own few options."""
    from mg_mlflow.options import cli_flags, generated_params

    command, sources, own = _generated_commands()[name]
    generated = set()
    for cls, skip in sources:
        made = generated_params(command, cls)
        expected = {f.name for f in dataclasses.fields(cls) if cli_flags(cls, f) and f.name not in skip}
        assert set(made) == expected, (cls.__name__, set(made) ^ expected)
        for field_name, param in made.items():
            flags = cli_flags(cls, cls.__dataclass_fields__[field_name])
            assert flags[0].split("/")[0] in param.opts and param.help, (field_name, param.opts)
        generated |= set(made)
    names = {p.name for p in command.params}
    assert names - generated == own


def test_plugin_keys_are_generated_from_deploy_options():
    from mg_mlflow.deploy.plan import DeployOptions
    from mg_mlflow.deploy.plugin import target_help
    from mg_mlflow.options import plugin_key, plugin_keys

    keys = plugin_keys(DeployOptions)
    assert set(keys) == {plugin_key(f) for f in dataclasses.fields(DeployOptions) if plugin_key(f)}
    assert all(f"    {k:<24} {v}" in target_help() for k, v in keys.items())


def test_train_help_lists_the_options_under_their_groups():
    from click.testing import CliRunner

    from mg_mlflow.cli import cli
    from mg_mlflow.config import GROUPS

    text = CliRunner().invoke(cli, ["train", "--help"], terminal_width=200).output
    headings = [line[:-1] for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert headings[headings.index("Options"):] == ["Options", *GROUPS], headings
    lora = text[text.index("\nLoRA:"):text.index("\nOptimisation:")]
    assert "--lora-r" in lora and "--lora-target-modules" in lora and "--learning-rate" not in lora
    assert "--trainer-arg KEY=VALUE" in text[text.index("\nOptimisation:"):]
    vision = CliRunner().invoke(cli, ["train-vision", "--help"], terminal_width=200).output
    assert "\nVision:\n" in vision and "--max-pixels" in vision[vision.index("\nVision:"):]


def test_groups_keep_every_field_flat():
    """Groups are headings only: every field keeps its flat name, YAML key and default."""
    cfg = TrainConfig()
    groups = {f.metadata["group"] for f in dataclasses.fields(TrainConfig)}
    from mg_mlflow.config import GROUPS

    assert groups == set(GROUPS)
    assert (cfg.lora_r, cfg.learning_rate, cfg.carbon_country, cfg.save_method, cfg.trainer_args) == \
        (16, 2e-4, "USA", "lora", {})


def test_coercion_is_one_rule_for_every_source(tmp_path):
    """YAML values, option strings, --set strings and MLflow plugin strings become the same typed value."""
    from mg_mlflow.deploy.plan import DeployOptions
    from mg_mlflow.options import coerce, from_plugin, from_values

    (tmp_path / "r.yaml").write_text("max_steps: 30\ncarbon: false\nlora_dropout: 0.1\n")
    from_yaml = build_config(TrainConfig, tmp_path / "r.yaml", BASE)
    from_text = build_config(TrainConfig, overrides={**BASE, "max_steps": "30.0", "carbon": "no",
                                                     "lora_dropout": "0.1"})
    from_set = build_config(TrainConfig, overrides=BASE, set_args=["max_steps=30", "carbon=off", "lora_dropout=1e-1"])
    assert {(c.max_steps, c.carbon, c.lora_dropout) for c in (from_yaml, from_text, from_set)} == {(30, False, 0.1)}
    assert from_plugin(DeployOptions, {"port": "8001", "carbon": "false"}) == \
        from_values(DeployOptions, {"port": 8001, "carbon": False}) == {"port": 8001, "carbon": False}
    assert coerce(DeployOptions, "dtype", "") is None and coerce(TrainConfig, "run_name", None) == ""
    with pytest.raises(ConfigError, match="--max-new-tokens: expected an integer, got '4.5'"):
        from mg_mlflow.evaluation.runner import EvalOptions

        from_values(EvalOptions, {"max_new_tokens": "4.5"})


def test_a_queued_job_s_command_line_rebuilds_the_config():
    """``submit`` queues ``train`` with options generated from the config (to_argv): parsing them
    through the real command gives the same config, trainer_args and flags included."""
    from mg_mlflow.cli.train import config_from_cli, train_cmd
    from mg_mlflow.team.submit import training_argv

    cfg = build_config(TrainConfig, overrides={**BASE, "lora_r": "8", "carbon": "false", "gradient_checkpointing": True,
                                               "trainer_args": ("optim=adamw_torch", "max_grad_norm=0.25")})
    argv = training_argv("train", cfg)
    assert argv[:2] == ["train", "--no-progress"] and "--no-carbon" in argv
    assert argv[argv.index("--trainer-arg") + 1] == "optim=adamw_torch"
    ctx = train_cmd.make_context("train", argv[1:])
    params = dict(ctx.params)
    again = config_from_cli(TrainConfig, params.pop("config_file"), params.pop("set_args"),
                            {k: v for k, v in params.items() if k != "progress"})
    assert again == cfg
