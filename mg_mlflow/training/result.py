"""What a training run returns (to the CLI, sweeps, tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainResult:
    run_id: str
    output_dir: Path
    model_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    registered_name: str | None = None
    registered_version: str | None = None
    model_uri: str | None = None
