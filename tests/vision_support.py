"""Fixtures and helpers for the vision tests: a tiny Qwen2.5-VL and a coloured-shapes dataset.

Imported by tests/test_vision*.py (conftest.py is shared and left alone).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")


@pytest.fixture(scope="session")
def tiny_vl(tmp_path_factory) -> Path:
    from mg_mlflow.dev.tiny_vision import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("vl-models") / "tiny-vl")


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    from mg_mlflow.data.vision_sample import write_vision_sample

    return write_vision_sample(tmp_path_factory.mktemp("vl-data") / "shapes" / "data.jsonl", 64)


def train_vl(base: Path, data: Path, **overrides):
    """Train the tiny VL model in-process with test-friendly defaults; returns TrainResult."""
    from mg_mlflow.config import build_config
    from mg_mlflow.training.recipe import train
    from mg_mlflow.vision_config import VisionTrainConfig

    options = {"base_model": str(base), "dataset": str(data), "max_steps": 40, "learning_rate": 3e-3,
               "batch_size": 4, "max_pixels": 12544, "max_seq_length": 256, "system_metrics": False,
               "carbon": False, "sample_images": 3}
    options.update(overrides)
    return train(build_config(VisionTrainConfig, overrides=options), show_progress=False)


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def registered_names() -> list[str]:
    import mlflow

    return [m.name for m in mlflow.tracking.MlflowClient().search_registered_models()]
