"""Portable references to the base model of an adapter (never an absolute local path).

A reference is one of:
- ``{"kind": "hub", "id": "org/name", "revision": "<commit or branch>"}``
- ``{"kind": "registry", "uri": "models:/NAME/VERSION"}`` - a registered base model. A base trained
  from a local folder is registered once (keyed by the folder's content digest) and reused.
"""

from __future__ import annotations

import re
from pathlib import Path

from mg_mlflow.errors import MGError


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.").lower() or "model"


def default_registered_name(base_model: str, suffix: str = "") -> str:
    """A registry name derived from the base model (``org/Name-1B`` -> ``name-1b-lora``)."""
    if base_model.startswith("models:/"):
        stem = base_model[len("models:/"):].split("/")[0].split("@")[0]
    else:
        stem = Path(base_model.rstrip("/")).name
    stem = _slug(stem).removesuffix("-base")
    return f"{stem}-{suffix}" if suffix else stem


def hub_revision(model_id: str) -> str:
    """The commit of a hub model in the local cache, else ``main``."""
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_id == model_id and repo.repo_type == "model":
                revs = sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True)
                if revs:
                    return revs[0].commit_hash
    except Exception:  # noqa: BLE001 - no cache yet
        pass
    return "main"


def make_base_reference(base_model: str) -> dict:
    """Turn what the user trained from into a reference any machine with the registry resolves."""
    if base_model.startswith("models:/"):
        from mg_mlflow.registry.resolve import registry_version

        _, mv = registry_version(base_model)
        return {"kind": "registry", "uri": f"models:/{mv.name}/{mv.version}"}
    path = Path(base_model).expanduser()
    if path.is_dir():
        from mg_mlflow.registry.publish import register_base_folder

        return {"kind": "registry", "uri": register_base_folder(path)}
    return {"kind": "hub", "id": base_model, "revision": hub_revision(base_model)}


def resolve_base(ref: dict) -> tuple[str, str | None]:
    """(what ``from_pretrained`` takes, revision) for a base reference."""
    kind = ref.get("kind")
    if kind == "hub":
        return ref["id"], ref.get("revision")
    if kind == "registry":
        from mg_mlflow.registry.resolve import resolve_model_uri

        return str(resolve_model_uri(ref["uri"]).local_dir), None
    if kind == "path":  # only for unregistered local experiments
        return ref["path"], None
    raise MGError(f"unknown base model reference {ref!r}")


def describe(ref: dict) -> str:
    if ref.get("kind") == "hub":
        return f"{ref['id']}@{ref.get('revision', 'main')}"
    return ref.get("uri") or ref.get("path", "?")
