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


def loaded_revision(base: str, revision: str | None = None) -> str | None:
    """The hub commit ``from_pretrained(base, revision=...)`` resolves to, read from the snapshot folder
    the files come from (call it right after loading); None for local folders or when unknown."""
    if Path(base).is_dir():
        return None
    try:
        from transformers.utils.hub import cached_file, extract_commit_hash

        return extract_commit_hash(cached_file(base, "config.json", revision=revision), None)
    except Exception:  # noqa: BLE001 - no cache entry: the reference then says "main"
        return None


def make_base_reference(base_model: str, modality: str = "text", revision: str | None = None) -> dict:
    """Turn what the user trained from into a reference any machine with the registry resolves.
    A local folder is registered once as a ``modality`` base; a hub id is pinned to ``revision``,
    the commit that was actually loaded (``main`` when unknown)."""
    if base_model.startswith("models:/"):
        from mg_mlflow.registry.resolve import registry_version

        _, mv = registry_version(base_model)
        return {"kind": "registry", "uri": f"models:/{mv.name}/{mv.version}"}
    path = Path(base_model).expanduser()
    if path.is_dir():
        from mg_mlflow.registry.publish import register_base_folder

        return {"kind": "registry", "uri": register_base_folder(path, modality)}
    return {"kind": "hub", "id": base_model, "revision": revision or "main"}


def local_base_reference(base_model: str, revision: str | None = None) -> dict:
    """A reference for a model saved locally only (never registered): no registry look-ups."""
    if base_model.startswith("models:/"):
        return {"kind": "registry", "uri": base_model}
    path = Path(base_model).expanduser()
    if path.is_dir():
        return {"kind": "path", "path": str(path.resolve())}
    return {"kind": "hub", "id": base_model, "revision": revision or "main"}


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
