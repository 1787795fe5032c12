"""What a text run starts from, and what its registered version names as base and parent.

A run starts from a base model (a folder, a hub id, a registered full model) or from a registered
LoRA adapter (``--base-model models:/support-sft@champion``, e.g. DPO after SFT). From an adapter,
``reference`` chooses:

- ``continue``: the adapter's own base is loaded and the registered adapter is trained further. TRL's
  preference trainers keep a frozen copy of it (the adapter named ``ref``) as the reference, so the
  reference is the registered model, not the raw base. The new version is an adapter on the same base.
- ``fresh``: the adapter is merged into its base once (a folder under ``$MG_HOME/merged``, registered
  as a base when the result is), and a new adapter is trained on the merged model; with the new
  adapter switched off the model is the registered one, which is the reference.

Full fine-tuning from an adapter always starts from the merged model. The choice is logged as the tag
``mg.start``; the version the run started from as ``mg.parent_model`` (run and version tags).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from mg_mlflow.env import mg_home
from mg_mlflow.errors import MGError
from mg_mlflow.registry.base_ref import local_base_reference, resolve_base
from mg_mlflow.registry.loader import is_adapter_dir
from mg_mlflow.registry.publish import make_base_reference
from mg_mlflow.registry.resolve import resolve_model_uri
from mg_mlflow.training.backends import torch_dtype


@dataclass
class Start:
    base: str                       # what from_pretrained loads
    revision: str | None
    how: str                        # the tag mg.start: what the run starts from, in words
    adapter: Path | None = None     # a registered adapter trained further (reference = it, frozen)
    base_ref: dict | None = None    # the new version's base reference, when given
    parent: str = ""                # models:/NAME/VERSION the run starts from
    source: str = ""                # else: what the base reference is made from (default: base_model)

    def version_tags(self) -> dict[str, str]:
        """``mg.parent_model`` when the run started from a registered version."""
        return {"mg.parent_model": self.parent} if self.parent else {}

    def run_tags(self) -> dict[str, str]:
        return {**self.version_tags(), "mg.start": self.how}

    def base_reference(self, base_model: str, modality: str, registers: bool, revision: str | None) -> dict:
        """The portable reference the saved model names as its base."""
        if self.base_ref is not None:
            return self.base_ref
        source = self.source or base_model
        if registers:
            return make_base_reference(source, modality, revision)
        return local_base_reference(source, revision)


def plain_start(base: str, revision: str | None, base_model: str) -> Start:
    parent = ""
    if base_model.startswith("models:/"):
        resolved = resolve_model_uri(base_model)
        parent = resolved.canonical_uri
    return Start(base, revision, f"the model {parent or base_model}", parent=parent)


def plan_start(cfg, base: str, revision: str | None) -> Start:
    """The start of a text run whose base resolved to ``base`` (before any MLflow run exists)."""
    if not (cfg.base_model.startswith("models:/") and is_adapter_dir(Path(base))):
        return plain_start(base, revision, cfg.base_model)
    resolved = resolve_model_uri(cfg.base_model)
    parent = resolved.canonical_uri
    ref = resolved.metadata.get("base_model")
    if not ref:
        raise MGError(f"{parent} is an adapter without a Model Garden base reference (mg_model.json)",
                      hint="train from its base model, or register the adapter with model-garden")
    if resolved.metadata.get("base_quantization"):
        raise MGError(f"{parent} was trained on a 4-bit base (qlora); continuing it is not supported",
                      hint="register it merged (save_method=merged_16bit) and start from that version")
    if cfg.method == "full" or cfg.reference == "fresh":
        folder = merged_copy(resolved, ref)
        why = "full fine-tuning" if cfg.method == "full" else "reference=fresh"
        return Start(str(folder), None, f"a new {'model' if cfg.method == 'full' else 'adapter'} on {parent} "
                     f"merged into its base ({why}; the reference is {parent})", parent=parent, source=str(folder))
    if cfg.backend == "unsloth":
        raise MGError("continuing a registered adapter runs on the hf backend",
                      hint="add --backend hf, or --reference fresh")
    raw_base, raw_revision = resolve_base(ref)
    return Start(raw_base, raw_revision, f"the adapter {parent}, trained further (reference=continue; the "
                 f"reference is {parent}, a frozen copy of the adapter)", adapter=resolved.local_dir,
                 base_ref=ref, parent=parent)


def merged_copy(resolved, ref: dict) -> Path:
    """The registered adapter merged into its base, saved once under ``$MG_HOME/merged``."""
    folder = mg_home() / "merged" / f"{resolved.name}-v{resolved.version}-merged"
    if (folder / "config.json").is_file():
        return folder
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, revision = resolve_base(ref)
    dtype = torch_dtype(resolved.metadata.get("dtype") or "auto")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, **({"revision": revision} if revision else {}))
    merged = PeftModel.from_pretrained(model, str(resolved.local_dir)).merge_and_unload()
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    merged.save_pretrained(str(partial))
    AutoTokenizer.from_pretrained(str(resolved.local_dir)).save_pretrained(str(partial))
    partial.rename(folder)
    return folder


def continue_adapter(model, start: Start):
    """The loaded base with the registered adapter on it, trainable (``start.adapter``)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(start.adapter), is_trainable=True)
