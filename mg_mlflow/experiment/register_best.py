"""``--register best``: the best trial's locally saved model becomes a registry version.

Trials train with ``register_as=none`` (saved locally, nothing logged), so a sweep of N trials
uploads one model, not N. Afterwards the best trial's folder gets the portable base reference a
registered adapter needs, is logged into the trial's own run, reloaded and compared with the folder
(the same verify-before-register rule as ``train``), then registered with the usual version tags.
"""

from __future__ import annotations

import json
from pathlib import Path

from mg_mlflow.config import build_config
from mg_mlflow.data.vision_sample import draw_shape
from mg_mlflow.errors import MGError
from mg_mlflow.experiment.trial import attached
from mg_mlflow.registry.base_ref import describe, resolve_base_model
from mg_mlflow.registry.loader import is_adapter_dir, load_model_dir, load_vision_dir
from mg_mlflow.registry.metadata import read_metadata, write_metadata
from mg_mlflow.registry.publish import text_probe, verify, vision_probe
from mg_mlflow.training.recipe import modality_for
from mg_mlflow.training.result import TrainResult
from mg_mlflow.training.save import log_logit_diffs, register_trained


def register_trial(sweep, best: dict) -> str:
    """Register trial ``best`` (number, params, run_id); returns ``models:/NAME/VERSION``."""
    import mlflow

    trial = sweep.study.get_trials(deepcopy=False)[best["number"]]
    model_dir = Path(trial.user_attrs.get("model_dir", ""))
    if not (model_dir / "mg_model.json").is_file():
        raise MGError(f"the best trial's model folder {model_dir} is gone; nothing was registered")
    options = {**sweep.options, **best["params"]}
    cfg = build_config(sweep.config_cls, sweep.spec.config_file or None, options, sweep.spec.set_args)
    modality = modality_for(cfg)
    meta = read_metadata(model_dir)
    revision = (meta.get("base_model") or {}).get("revision")
    modality.starting_point(*resolve_base_model(cfg.base_model, registered_adapter_ok=modality.name == "text"))
    base_ref = modality.base_reference(True, revision)  # a local base: registered once
    meta["base_model"] = base_ref
    if is_adapter_dir(model_dir):
        path = model_dir / "adapter_config.json"
        adapter_cfg = json.loads(path.read_text())
        adapter_cfg["base_model_name_or_path"] = describe(base_ref)  # never an absolute local path
        path.write_text(json.dumps(adapter_cfg, indent=2))
    write_metadata(model_dir, meta)
    reference, probe = _reference_and_probe(modality.name, model_dir)
    run_id = best["run_id"]
    summary = dict(sweep.client.get_run(run_id).data.metrics)
    with attached(run_id), mlflow.start_run(run_id=run_id):
        info = modality.log_model(model_dir)
        diff = verify(info, reference, probe, cfg.verify_tolerance, what=f"{modality.name} model")
        log_logit_diffs(summary, diff)
        result = TrainResult(run_id=run_id, output_dir=model_dir.parent, model_dir=model_dir,
                             model_uri=info.model_uri)
        register_trained(cfg, result, info.model_uri, meta, base_ref, summary, diff, **modality.extra_tags)
    return f"models:/{result.registered_name}/{result.registered_version}"


def _reference_and_probe(modality: str, model_dir: Path):
    """The saved trial model and the probe its logged copy must reproduce."""
    if modality == "vision":
        reference, processor = load_vision_dir(model_dir)
        return reference, vision_probe(processor, draw_shape("red", "circle"), "What is this?")

    reference, tokenizer = load_model_dir(model_dir)
    return reference, text_probe(tokenizer)
