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
from mg_mlflow.registry.metadata import read_metadata
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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "*.tiktoken")


def check_base_folder(folder: Path, given: str) -> None:
    """A local base (a folder, or a downloaded registry version) must be a full model transformers can
    build, with its tokenizer; checked before any run exists, named after what the user gave."""
    import json

    meta = read_metadata(folder)
    if (folder / "adapter_config.json").is_file():
        base = meta.get("base_model")
        raise MGError(f"--base-model {given} is a LoRA adapter, not a base model",
                      hint=(f"train from its base ({describe(base)}), " if isinstance(base, dict) else "train from "
                            "the model it adapts, ") + "or register a merged model (save_method=merged_16bit) "
                            "and train from that")
    if not (folder / "config.json").is_file():
        raise MGError(f"base model folder {folder} has no config.json",
                      hint="point base_model at a Hugging Face model folder")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise MGError(f"--base-model {given}: {folder / 'config.json'} is not valid JSON ({exc})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    from transformers import CONFIG_MAPPING, __version__

    if model_type not in CONFIG_MAPPING:
        raise MGError(f"--base-model {given}: config.json has model_type {model_type!r}, which transformers "
                      f"{__version__} does not know",
                      hint="fix model_type in config.json, or install a transformers version that has this "
                           "architecture")
    if not any(any(folder.glob(pattern)) for pattern in TOKENIZER_FILES):
        raise MGError(f"--base-model {given}: the folder has no tokenizer (none of {', '.join(TOKENIZER_FILES)})",
                      hint="copy the tokenizer files of the model it came from into the folder "
                           "(tokenizer.save_pretrained(FOLDER))")


def resolve_base_model(base_model: str, registered_adapter_ok: bool = False) -> tuple[str, str | None]:
    """What from_pretrained takes for the base: a folder, a downloaded registry version, or a hub id.
    Runs before any MLflow run exists, so a missing or unusable folder leaves no run behind. With
    ``registered_adapter_ok`` a registered LoRA adapter passes: the caller starts from it (continues it,
    or merges it into its base; :mod:`mg_mlflow.training.start`)."""
    if base_model.startswith("models:/"):
        folder = resolve_model_uri(base_model).local_dir
        if not (registered_adapter_ok and (Path(folder) / "adapter_config.json").is_file()):
            check_base_folder(folder, base_model)
        return str(folder), None
    path = Path(base_model).expanduser()
    if path.is_dir():
        check_base_folder(path, base_model)
        return str(path.resolve()), None
    if base_model.startswith((".", "/", "~")):
        raise MGError(f"base model folder {base_model} does not exist",
                      hint="give an existing folder, a hub id, or a models:/ URI; "
                           "`model-garden dev tiny-model DIR` builds a tiny one")
    return base_model, None
