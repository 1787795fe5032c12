"""``lora_target_modules`` checked against the base model's modules before any MLflow run exists.

The module names come from the weight files' tensor names (a safetensors header or its index
file; no weight is read), so the model is loaded once, by the training itself. peft matches a
target name against the end of a module path (``q_proj`` matches ``model.layers.0.self_attn.q_proj``).
"""

from __future__ import annotations

import json
from pathlib import Path

from mg_mlflow.errors import MGError

_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors")


def _weight_file(base: str, revision: str | None) -> Path | None:
    folder = Path(base)
    if folder.is_dir():
        return next((folder / n for n in _WEIGHT_FILES if (folder / n).is_file()), None)
    try:  # a hub id: only what is already in the local cache (no download here)
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in _WEIGHT_FILES:
        found = try_to_load_from_cache(base, name, revision=revision)
        if isinstance(found, str):
            return Path(found)
    return None


def module_paths(base: str, revision: str | None = None) -> set[str] | None:
    """The paths of the modules that hold weights in ``base``'s checkpoint; None when they cannot
    be read without loading the model (no safetensors file)."""
    path = _weight_file(base, revision)
    if path is None:
        return None
    if path.name.endswith(".index.json"):
        keys = json.loads(path.read_text()).get("weight_map", {})
    else:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
    return {k.rsplit(".", 1)[0] for k in keys if "." in k} | {"lm_head"}  # lm_head may be tied (absent)


def missing_targets(cfg, modules: set[str]) -> list[str]:
    spec = cfg.lora_target_modules.strip()
    if cfg.method not in ("lora", "qlora") or spec == "all-linear":
        return []
    names = [m.strip() for m in spec.split(",") if m.strip()]
    return [n for n in names if not any(m == n or m.endswith("." + n) for m in modules)]


def check_lora_targets(cfg, base: str, revision: str | None = None) -> None:
    """Refuse target module names the base model does not have, listing some it has."""
    if cfg.method not in ("lora", "qlora") or cfg.lora_target_modules.strip() == "all-linear":
        return
    modules = module_paths(base, revision)
    if modules is None:
        return  # unknown without loading: peft names a missing target when the adapter is built
    missing = missing_targets(cfg, modules)
    if missing:
        leaves = sorted({m.rsplit(".", 1)[-1] for m in modules if not m.rsplit(".", 1)[-1].isdigit()})
        linear = [n for n in leaves if n.endswith("proj")] or leaves
        raise MGError(f"--lora-target-modules: {', '.join(map(repr, missing))} "
                      f"{'is not a module' if len(missing) == 1 else 'are not modules'} of {cfg.base_model}",
                      hint=f"its modules include {', '.join(linear[:8])}; or use all-linear")
