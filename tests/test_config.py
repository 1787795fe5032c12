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
