"""Resolve a model reference to a local Hugging Face folder, downloading into a per-version cache.

Accepted: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``models:/NAME/latest``,
``models:/m-<id>`` (MLflow 3 logged-model id), ``runs:/RUN_ID/PATH``, and local folders (a Hugging
Face model folder, or a downloaded MLflow model folder with ``artifacts/model_dir``).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mg_mlflow.env import mg_home
from mg_mlflow.errors import MGError
from mg_mlflow.names import is_logged_model_id
from mg_mlflow.registry.metadata import read_metadata
from mg_mlflow.tracking.run import use_tracking_uri

MODEL_SUBDIR = ("artifacts", "model_dir")


@dataclass
class ResolvedModel:
    uri: str                         # what the user gave
    local_dir: Path                  # the Hugging Face folder (config.json or adapter_config.json)
    name: str | None = None          # registered model name
    version: str | None = None       # registered version
    model_id: str | None = None      # MLflow 3 logged-model id
    run_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # mg_model.json
    tags: dict[str, str] = field(default_factory=dict)      # version tags

    @property
    def canonical_uri(self) -> str:
        if self.name and self.version:
            return f"models:/{self.name}/{self.version}"
        return self.uri


def cache_root() -> Path:
    return mg_home() / "models"


def _client():
    import mlflow

    use_tracking_uri()
    return mlflow.tracking.MlflowClient()


def known_models(client) -> str:
    names = [m.name for m in client.search_registered_models(max_results=50)]
    return ", ".join(names) if names else "(none registered yet)"


def _versions_text(client, name: str) -> str:
    versions = client.search_model_versions(f"name='{name}'")
    rm = client.get_registered_model(name)
    aliases = getattr(rm, "aliases", {}) or {}
    parts = [f"versions {', '.join(sorted((str(v.version) for v in versions), key=int)) or '(none)'}"]
    if aliases:
        parts.append("aliases " + ", ".join(f"@{a}->{v}" for a, v in sorted(aliases.items())))
    return "; ".join(parts)


URI_FORMS = "models:/NAME/VERSION, models:/NAME@ALIAS, models:/NAME/latest, models:/m-<id>, runs:/RUN_ID/PATH or a folder"
_TOKEN = re.compile(r"^[A-Za-z0-9_\-.]+$")
@dataclass(frozen=True)
class ModelRef:
    """A parsed model URI (no MLflow call): ``kind`` is registry, logged or run."""
    kind: str
    name: str = ""            # registered model name (registry)
    selector: str = "version"  # version | alias (registry)
    value: str = "latest"     # the version number, "latest" or the alias
    model_id: str = ""        # logged
    run_id: str = ""          # run
    path: str = ""            # run: artifact path inside the run


def parse_model_uri(uri: str) -> ModelRef:
    """Split a models:/ or runs:/ URI into its parts, or raise MGError saying what is malformed."""
    def bad(why: str) -> MGError:
        return MGError(f"malformed model URI {uri!r}: {why}", hint=f"use {URI_FORMS}")

    if not isinstance(uri, str) or uri != uri.strip() or not uri or any(ord(c) < 32 for c in uri):
        raise bad("empty, or with spaces or control characters")
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].partition("/")
        if not _TOKEN.match(run_id):
            raise bad("expected runs:/RUN_ID/PATH with a run id of letters and digits")
        return ModelRef("run", run_id=run_id, path=path.strip("/"))
    if not uri.startswith("models:/"):
        raise MGError(f"unsupported model URI {uri!r}", hint=f"use {URI_FORMS}")
    body = uri[len("models:/"):]
    if is_logged_model_id(body):
        return ModelRef("logged", model_id=body)
    if "@" in body:
        name, alias = body.split("@", 1)
        if not _TOKEN.match(alias):
            raise bad(f"alias {alias!r} must be letters, digits, '_', '-' or '.'")
        ref = ModelRef("registry", name=name, selector="alias", value=alias)
    elif "/" in body:
        name, version = body.split("/", 1)
        if version != "latest" and not (version.isascii() and version.isdigit() and int(version) > 0):
            raise bad(f"version must be a number >= 1, 'latest' or @alias, got {version!r}")
        ref = ModelRef("registry", name=name, value=version)
    else:
        ref = ModelRef("registry", name=body)
    if not ref.name or "/" in ref.name or "@" in ref.name:
        raise bad("the registered model name is missing or contains '/' or '@'")
    return ref


def registry_version(uri: str):
    """(client, ModelVersion) for models:/NAME/VERSION, @ALIAS or /latest; clear errors otherwise."""
    from mlflow.exceptions import MlflowException

    ref = parse_model_uri(uri)
    if ref.kind != "registry":
        raise MGError(f"{uri} is not a registered model version", hint=f"use {URI_FORMS}")
    client = _client()
    name, selector = ref.name, (ref.selector, ref.value)
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise MGError(f"no registered model named {name!r}",
                      hint=f"registered models: {known_models(client)}") from None
    try:
        kind, value = selector
        if kind == "alias":
            return client, client.get_model_version_by_alias(name, value)
        if value == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise MGError(f"registered model {name!r} has no versions")
            return client, max(versions, key=lambda v: int(v.version))
        return client, client.get_model_version(name, value)
    except MlflowException:
        what = f"alias @{selector[1]}" if selector[0] == "alias" else f"version {selector[1]}"
        raise MGError(f"registered model {name!r} has no {what}",
                      hint=f"{name} has {_versions_text(client, name)}") from None


def _hf_folder(root: Path) -> Path:
    """The Hugging Face folder inside a downloaded MLflow model (or ``root`` itself)."""
    mlmodel = root / "MLmodel"
    if mlmodel.is_file():
        import yaml

        flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
        rel = ((flavors.get("python_function") or {}).get("artifacts") or {}).get("model_dir", {}).get("path")
        if rel and (root / rel).is_dir():
            return root / rel
    candidate = root.joinpath(*MODEL_SUBDIR)
    if candidate.is_dir():
        return candidate
    return root


WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


def missing_parts(root: Path) -> str | None:
    """What a downloaded model lacks to be served or loaded (None: config and weights are there)."""
    folder = _hf_folder(root)
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        return "neither config.json nor adapter_config.json"
    if not any(p.is_file() for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)):
        return "no weight files (*.safetensors, *.bin)"
    return None


def _download(artifact_uri: str, dest: Path) -> Path:
    """Download once into ``dest``. The entry is marked complete (``.complete``) only once its contents
    are checked; an entry whose contents fail the check (an interrupted or empty download) is
    downloaded again."""
    import mlflow

    marker = dest / ".complete"
    if marker.is_file() and missing_parts(dest) is None:
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the model cache is private
    tmp.mkdir(mode=0o700)
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(tmp))
    except Exception as exc:  # noqa: BLE001
        shutil.rmtree(tmp, ignore_errors=True)
        raise MGError(f"could not download {artifact_uri}: {exc}") from None
    missing = missing_parts(tmp)
    if missing is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MGError(f"{artifact_uri}: the artifacts downloaded from the tracking store hold no usable model "
                      f"({missing}); nothing was cached",
                      hint="the store's artifact folder may be missing or incomplete (moved, deleted, another "
                           "--artifacts-destination): restore it and run the command again")
    (tmp / ".complete").write_text(artifact_uri)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def resolve_model_uri(uri: str) -> ResolvedModel:
    """Any supported reference -> a local folder and its lineage. Downloads are cached per version."""
    path = Path(uri).expanduser()
    if "://" not in uri and not uri.startswith(("models:", "runs:")):
        if path.is_dir():
            folder = _hf_folder(path.resolve())
            return ResolvedModel(uri, folder, metadata=read_metadata(folder))
        if is_logged_model_id(uri):
            uri = f"models:/{uri}"
        else:
            raise MGError(f"{uri}: not a folder and not a model URI", hint=f"use {URI_FORMS}")
    ref = parse_model_uri(uri)
    if ref.kind == "logged":
        model_id = ref.model_id
        client = _client()
        try:
            logged = client.get_logged_model(model_id)
        except Exception:  # noqa: BLE001
            raise MGError(f"no logged model with id {model_id!r}") from None
        local = _download(uri, cache_root() / "_ids" / model_id)
        folder = _hf_folder(local)
        return ResolvedModel(uri, folder, model_id=model_id, run_id=logged.source_run_id,
                             metadata=read_metadata(folder))
    if ref.kind == "registry":
        client, mv = registry_version(uri)
        local = _download(f"models:/{mv.name}/{mv.version}", cache_root() / mv.name / str(mv.version))
        folder = _hf_folder(local)
        return ResolvedModel(uri, folder, name=mv.name, version=str(mv.version),
                             model_id=getattr(mv, "model_id", None), run_id=mv.run_id,
                             metadata=read_metadata(folder), tags=dict(mv.tags or {}))
    if ref.kind == "run":
        run_id, sub = ref.run_id, ref.path
        local = _download(uri, cache_root() / "_runs" / run_id / (sub.replace("/", "_") or "root"))
        folder = _hf_folder(local)
        return ResolvedModel(uri, folder, run_id=run_id, metadata=read_metadata(folder))
    raise AssertionError(f"unhandled model reference kind {ref.kind}")  # parse_model_uri returns one of three
