"""What every top-level bench script sets up the same way: an offline, quiet environment and a fresh
MG_HOME with its own sqlite MLflow store; and the tiny model trained on the fly and registered.

Scripts run as ``python bench/<script>.py`` (this folder is then first on the import path):

    from common import bench_home, offline_env, train_registered
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true", "TOKENIZERS_PARALLELISM": "false"}


def offline_env() -> None:
    """Defaults a caller's environment may override; call before importing torch or transformers."""
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)


def bench_home(home: Path) -> Path:
    """Use ``home`` as MG_HOME with the store ``home/mlflow.db`` and caches under it (mg_mlflow.env)."""
    offline_env()
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    os.environ["MG_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["HF_HOME"] = str(home / "hf")
    from mg_mlflow.env import setup_env

    setup_env()
    return home


def train_registered(home: Path, models: dict[str, str], max_steps: int) -> None:
    """Train the tiny Llama on sample data once per ``{registered name: save_method}`` (alias ``prod``),
    unless ``models:/<name>@prod`` already resolves (a reused --home); warm the download cache."""
    from mg_mlflow.registry.resolve import resolve_model_uri

    uris = [f"models:/{name}@prod" for name in models]
    try:
        for uri in uris:
            resolve_model_uri(uri)
        return
    except Exception:  # noqa: BLE001 - not trained yet
        pass
    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.data.sample import write_sample
    from mg_mlflow.dev.tiny import build_tiny_llama
    from mg_mlflow.training.recipe import train

    tiny = build_tiny_llama(home / "tiny")
    data = write_sample(home / "data.jsonl", n=64)
    for name, save in models.items():
        cfg = build_config(TrainConfig, overrides={
            "base_model": str(tiny), "dataset": str(data), "max_steps": max_steps, "learning_rate": 3e-3,
            "batch_size": 4, "system_metrics": False, "carbon": False, "save_method": save,
            "register_as": name, "alias": "prod"})
        train(cfg, show_progress=False)
    for uri in uris:
        resolve_model_uri(uri)
