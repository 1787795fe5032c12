"""Save a trained vision-language model (adapter or merged 16-bit) with its processor, log it as a
vision pyfunc, verify the reload through ``models:/m-<id>`` (logits on an image probe), register it.

A local base folder is registered once as ``<name>-base`` (keyed by content digest, like text bases)
so the adapter names its base by a ``models:/`` URI, never by an absolute path. The shared steps come
from :mod:`mg_mlflow.training.save` and :mod:`mg_mlflow.registry.publish`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mg_mlflow.vision_config import VisionTrainConfig


def _log_verified_vision_base(folder: Path):
    """Log a vision base folder as ``base_model`` and check its reload on a drawn-shape probe."""
    from mg_mlflow.data.vision_sample import draw_shape
    from mg_mlflow.registry.pyfunc_vision import load_vision_dir, log_vision_model, probe_inputs, verify_vision

    reference, processor = load_vision_dir(folder)
    info = log_vision_model(folder, name="base_model")
    verify_vision(info, reference, probe_inputs(processor, draw_shape("red", "circle"), "What is this?"), 1e-5)
    return info


def register_vision_base_folder(folder: Path) -> str:
    """Register a local vision base folder once (keyed by content digest); return models:/NAME/V."""
    from mg_mlflow.registry.publish import register_base_folder

    return register_base_folder(folder, modality="vision", log_verified=_log_verified_vision_base)


def make_vision_base_reference(base_model: str) -> dict:
    path = Path(base_model).expanduser()
    if not base_model.startswith("models:/") and path.is_dir():
        return {"kind": "registry", "uri": register_vision_base_folder(path)}
    from mg_mlflow.registry.base_ref import make_base_reference

    return make_base_reference(base_model)


def save_and_register_vision(cfg: VisionTrainConfig, model, processor, backend: str, output_dir: Path,
                             train_data, summary: dict, probe: dict):
    import mlflow
    from transformers import AutoModelForImageTextToText

    from mg_mlflow.registry.metadata import write_metadata
    from mg_mlflow.registry.pyfunc_vision import log_vision_model, max_logit_diff, probe_inputs, verify_vision
    from mg_mlflow.training.save import _sixteen_bit, log_logit_diffs, model_meta, register_trained, save_adapter
    from mg_mlflow.training.text import TrainResult

    run_id = mlflow.active_run().info.run_id
    model_dir = output_dir / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    model.eval()
    inputs = probe_inputs(processor, probe["image"], probe["question"])
    base_ref = make_vision_base_reference(cfg.base_model)
    family = getattr(getattr(model, "config", None), "model_type", "") or ""
    meta = model_meta("vision", cfg, backend, run_id, base_ref, train_data, family=family,
                      min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    if cfg.method == "full":
        dtype = _sixteen_bit()
        model.to(dtype).save_pretrained(str(model_dir))
        processor.save_pretrained(model_dir)
        meta["kind"], meta["dtype"] = "merged", str(dtype).removeprefix("torch.")
        # a fresh 16-bit load is the reference (an in-place cast keeps 16-bit rotary buffers that a
        # reload recomputes in fp32); the cast's own effect is logged as save_max_logit_diff
        reference = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=dtype).eval()
        summary["save_max_logit_diff"] = max_logit_diff(model, reference, inputs)
    else:
        reference = save_adapter(model, processor, output_dir, model_dir, base_ref, meta,
                                 merge_onto=None if cfg.save_method == "lora" else AutoModelForImageTextToText,
                                 merge_processor=processor)
        if meta["kind"] == "merged":
            summary["merge_max_logit_diff"] = max_logit_diff(model, reference, inputs)
    write_metadata(model_dir, meta)

    info = log_vision_model(model_dir)
    diff = verify_vision(info, reference, inputs, cfg.verify_tolerance)
    log_logit_diffs(summary, diff)
    result = TrainResult(run_id=run_id, output_dir=output_dir, model_dir=model_dir, model_uri=info.model_uri)
    if not cfg.registers:
        return result
    return register_trained(cfg, result, info.model_uri, meta, base_ref, summary, diff,
                            **{"mg.family": family, "mg.min_pixels": cfg.min_pixels,
                               "mg.max_pixels": cfg.max_pixels})
