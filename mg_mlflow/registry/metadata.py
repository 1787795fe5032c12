"""``mg_model.json``: what a model folder holds and where it came from (lineage)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

FILENAME = "mg_model.json"


def write_metadata(model_dir: Path, meta: dict[str, Any]) -> Path:
    path = Path(model_dir) / FILENAME
    path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path


def read_metadata(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / FILENAME
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def folder_digest(folder: Path) -> str:
    """sha256 over the relative paths and contents of a folder's files (stable across machines)."""
    h = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == FILENAME or rel.startswith("."):
            continue
        h.update(rel.encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
