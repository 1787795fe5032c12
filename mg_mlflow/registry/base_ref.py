"""Portable references to the base model of an adapter (never an absolute local path).

A reference is one of:
- ``{"kind": "hub", "id": "org/name", "revision": "<commit or branch>"}``
- ``{"kind": "registry", "uri": "models:/NAME/VERSION"}`` - a registered base model. A base trained
  from a local folder is registered once (keyed by the folder's content digest) and reused
  (:func:`mg_mlflow.registry.publish.make_base_reference`).

:func:`resolve_base` turns a reference, and :func:`resolve_base_model` what the user trains from
(a folder, a ``models:/`` URI or a hub id), into what ``from_pretrained`` takes.
"""

from __future__ import annotations

import re
from pathlib import Path

from mg_mlflow.errors import MGError
from mg_mlflow.registry.resolve import resolve_model_uri


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
        return str(resolve_model_uri(ref["uri"]).local_dir), None
    if kind == "path":  # only for unregistered local experiments
        return ref["path"], None
    raise MGError(f"unknown base model reference {ref!r}")


def describe(ref: dict) -> str:
    if ref.get("kind") == "hub":
        return f"{ref['id']}@{ref.get('revision', 'main')}"
    return ref.get("uri") or ref.get("path", "?")


def resolve_base_model(base_model: str) -> tuple[str, str | None]:
    """What from_pretrained takes for the base: a folder, a downloaded registry version, or a hub id.
    Runs before any MLflow run exists, so a missing folder leaves no run behind."""
    if base_model.startswith("models:/"):
        return str(resolve_model_uri(base_model).local_dir), None
    path = Path(base_model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MGError(f"base model folder {path} has no config.json",
                          hint="point base_model at a Hugging Face model folder")
        return str(path.resolve()), None
    if base_model.startswith((".", "/", "~")):
        raise MGError(f"base model folder {base_model} does not exist",
                      hint="give an existing folder, a hub id, or a models:/ URI; "
                           "`model-garden dev tiny-model DIR` builds a tiny one")
    return base_model, None
