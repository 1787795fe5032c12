"""Save a trained vision-language model (adapter or merged 16-bit) with its processor, log it as a
vision pyfunc, verify the reload through ``models:/m-<id>`` (logits on an image probe), register it.

A local base folder is registered once as ``<name>-base`` (keyed by content digest, like text bases)
so the adapter names its base by a ``models:/`` URI, never by an absolute path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mg_mlflow.vision_config import VisionTrainConfig


def register_vision_base_folder(folder: Path) -> str:
    """Register a local vision base folder once (keyed by content digest); return models:/NAME/V."""
    import mlflow

    from mg_mlflow.data.vision_sample import draw_shape
    from mg_mlflow.registry.base_ref import default_registered_name
    from mg_mlflow.registry.metadata import folder_digest
    from mg_mlflow.registry.publish import register
    from mg_mlflow.registry.pyfunc_vision import load_vision_dir, log_vision_model, probe_inputs, verify_vision

    folder = Path(folder).resolve()
    digest = folder_digest(folder)
    name = default_registered_name(str(folder), "base")
    client = mlflow.tracking.MlflowClient()
    for mv in client.search_model_versions(f"name='{name}'"):
        if (mv.tags or {}).get("mg.content_digest") == digest:
            return f"models:/{name}/{mv.version}"
    reference, processor = load_vision_dir(folder)
    info = log_vision_model(folder, name="base_model")
    verify_vision(info, reference, probe_inputs(processor, draw_shape("red", "circle"), "What is this?"), 1e-5)
    mv = register(info.model_uri, name, {"mg.content_digest": digest, "mg.save_method": "base",
                                          "mg.source_folder_name": folder.name, "mg.modality": "vision"})
    return f"models:/{name}/{mv.version}"


def make_vision_base_reference(base_model: str) -> dict:
    path = Path(base_model).expanduser()
    if not base_model.startswith("models:/") and path.is_dir():
        return {"kind": "registry", "uri": register_vision_base_folder(path)}
    from mg_mlflow.registry.base_ref import make_base_reference

    return make_base_reference(base_model)


def _write_adapter(model, processor, out: Path, base_ref: dict) -> None:
    from mg_mlflow.registry.base_ref import describe

    model.save_pretrained(str(out))
    processor.save_pretrained(out)
    cfg_path = out / "adapter_config.json"
    adapter_cfg = json.loads(cfg_path.read_text())
    adapter_cfg["base_model_name_or_path"] = describe(base_ref)  # never an absolute local path
    cfg_path.write_text(json.dumps(adapter_cfg, indent=2))


def _merge(adapter_dir: Path, base_ref: dict, out: Path, processor, dtype):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from mg_mlflow.registry.base_ref import resolve_base

    base, revision = resolve_base(base_ref)
    kwargs = {"dtype": dtype, **({"revision": revision} if revision else {})}
    model = AutoModelForImageTextToText.from_pretrained(base, **kwargs)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out))
    processor.save_pretrained(out)
    return merged.eval()


def save_and_register_vision(cfg: VisionTrainConfig, model, processor, backend: str, output_dir: Path,
                             train_data, summary: dict, probe: dict):
    import mlflow

    from mg_mlflow.registry.base_ref import default_registered_name, describe
    from mg_mlflow.registry.metadata import write_metadata
    from mg_mlflow.registry.publish import register
    from mg_mlflow.registry.pyfunc_vision import log_vision_model, max_logit_diff, probe_inputs, verify_vision
    from mg_mlflow.tracking.params import git_commit
    from mg_mlflow.training.save import _sixteen_bit
    from mg_mlflow.training.text import TrainResult

    run_id = mlflow.active_run().info.run_id
    model_dir = output_dir / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    model.eval()
    inputs = probe_inputs(processor, probe["image"], probe["question"])
    base_ref = make_vision_base_reference(cfg.base_model)
    family = getattr(getattr(model, "config", None), "model_type", "") or ""
    meta = {"modality": "vision", "family": family, "backend": backend, "method": cfg.method, "run_id": run_id,
            "base_model": base_ref, "dataset": train_data.source, "dataset_digest": train_data.digest,
            "git_commit": git_commit(), "save_method": cfg.save_method,
            "min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels}
    if cfg.method == "full":
        dtype = _sixteen_bit()
        model.to(dtype).save_pretrained(str(model_dir))
        processor.save_pretrained(model_dir)
        meta["kind"], meta["dtype"] = "merged", str(dtype).removeprefix("torch.")
        # a fresh 16-bit load is the reference (an in-place cast keeps 16-bit rotary buffers that a
        # reload recomputes in fp32); the cast's own effect is logged as save_max_logit_diff
        from transformers import AutoModelForImageTextToText

        reference = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=dtype).eval()
        summary["save_max_logit_diff"] = max_logit_diff(model, reference, inputs)
    elif cfg.save_method == "lora":
        _write_adapter(model, processor, model_dir, base_ref)
        reference, meta["kind"] = model, "adapter"
    else:
        adapter_dir = output_dir / "adapter"
        shutil.rmtree(adapter_dir, ignore_errors=True)
        _write_adapter(model, processor, adapter_dir, base_ref)
        dtype = _sixteen_bit()
        reference = _merge(adapter_dir, base_ref, model_dir, processor, dtype)
        meta["kind"], meta["dtype"] = "merged", str(dtype).removeprefix("torch.")
        summary["merge_max_logit_diff"] = max_logit_diff(model, reference, inputs)
    write_metadata(model_dir, meta)

    info = log_vision_model(model_dir)
    diff = verify_vision(info, reference, inputs, cfg.verify_tolerance)
    summary["verify_max_logit_diff"] = diff
    mlflow.log_metrics({k: v for k, v in summary.items() if k.endswith("logit_diff")})
    result = TrainResult(run_id=run_id, output_dir=output_dir, model_dir=model_dir, model_uri=info.model_uri)
    if not cfg.registers:
        return result
    name = cfg.register_as or default_registered_name(cfg.base_model, "lora" if meta["kind"] == "adapter" else "merged")
    tags = {"mg.save_method": cfg.save_method if cfg.method != "full" else "merged_16bit",
            "mg.kind": meta["kind"], "mg.base_model": describe(base_ref), "mg.backend": backend,
            "mg.modality": "vision", "mg.family": family, "mg.method": cfg.method,
            "mg.quantization": "bnb-4bit (training only)" if cfg.method == "qlora" else "none",
            "mg.run_id": run_id, "mg.dataset_digest": train_data.digest, "mg.git_commit": meta["git_commit"],
            "mg.train_loss": summary.get("loss_final"), "mg.eval_loss": summary.get("eval_loss_final"),
            "mg.min_pixels": cfg.min_pixels, "mg.max_pixels": cfg.max_pixels,
            "mg.verify_max_logit_diff": f"{diff:.3g}"}
    tags.update({f"mg.{k.replace('/', '.')}": v for k, v in summary.items() if k.startswith("carbon/")})
    mv = register(info.model_uri, name, tags, cfg.alias)
    mlflow.set_tags({"mg.registered_model": name, "mg.registered_version": str(mv.version)})
    result.registered_name, result.registered_version = name, str(mv.version)
    return result
