"""Save the trained model (adapter, merged 16-bit or full 16-bit), log it, verify it, register it:
one path for every modality (the modality strategy supplies the probe, the model class and the
MLflow flavour).

Verification is against the TRAINED model: its probe logits are taken before anything is saved.
What was saved (the adapter, the merged copy, the 16-bit cast) must reproduce them within the
tolerance rule (``drift``: ``merge_max_logit_diff`` / ``save_max_logit_diff``), and the logged
model, reloaded through ``models:/m-<id>``, must reproduce the saved one (``verify_max_logit_diff``).
Nothing is registered unless both hold.

A merge into 16 bits is lossy by definition: a float32-trained adapter's merge may drift from the
trained model by twice what casting the trained model itself costs on the same probe
(``cast_reference``: the adapter merged exactly in float32, the weights cast; ``merge_cast_drift``),
and at least the 16-bit rule; the rule and its values are written on the version (``mg.merge_*``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mg_mlflow import metric_names as mn
from mg_mlflow.registry.base_ref import default_registered_name, describe, resolve_base
from mg_mlflow.registry.loader import default_device
from mg_mlflow.registry.metadata import write_metadata
from mg_mlflow.registry.model_card import describe_version
from mg_mlflow.registry.publish import (check_gap, effective_tolerance, logit_gap, model_logits, register, verify)
from mg_mlflow.tracking.params import git_commit
from mg_mlflow.training.backends import torch_dtype
from mg_mlflow.training.result import TrainResult


def write_adapter(model, processor, out: Path, base_ref: dict) -> None:
    """The adapter weights and the tokenizer/processor, naming the base by reference."""
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    cfg_path = out / "adapter_config.json"
    adapter_cfg = json.loads(cfg_path.read_text())
    adapter_cfg["base_model_name_or_path"] = describe(base_ref)  # never an absolute local path
    cfg_path.write_text(json.dumps(adapter_cfg, indent=2))


def merge_adapter(adapter_dir: Path, base_ref: dict, out: Path, dtype, auto_cls, processor=None):
    """Merge the adapter onto a 16-bit copy of the base (works for LoRA and QLoRA alike); the base
    loads through ``auto_cls``. ``processor`` is saved next to it (default: the adapter's tokenizer)."""
    from peft import PeftModel

    base, revision = resolve_base(base_ref)
    kwargs = {"dtype": dtype, **({"revision": revision} if revision else {})}
    model = auto_cls.from_pretrained(base, **kwargs)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out))
    if processor is None:
        from transformers import AutoTokenizer

        processor = AutoTokenizer.from_pretrained(str(adapter_dir))
    processor.save_pretrained(str(out))

    device = default_device()  # compare on the GPU the trained model is on (Unsloth's patched
    return (merged.to(device) if device else merged).eval()  # forwards expect CUDA tensors)


def save_adapter(model, processor, output_dir: Path, model_dir: Path, base_ref: dict, meta: dict,
                 merge_onto=None, merge_processor=None):
    """The trained adapter, as the model folder (``merge_onto`` None: kind ``adapter``, the reference
    is the trained model) or under ``output_dir/adapter`` merged onto the 16-bit base loaded through
    ``merge_onto`` (kind ``merged``; the reference is the merged model). Sets meta kind/dtype."""
    if merge_onto is None:
        write_adapter(model, processor, model_dir, base_ref)
        meta["kind"] = "adapter"
        return model
    adapter_dir = output_dir / "adapter"
    shutil.rmtree(adapter_dir, ignore_errors=True)
    write_adapter(model, processor, adapter_dir, base_ref)
    dtype = _sixteen_bit()
    reference = merge_adapter(adapter_dir, base_ref, model_dir, dtype, merge_onto, merge_processor)
    meta["kind"], meta["dtype"] = "merged", str(dtype).removeprefix("torch.")
    return reference


MERGE_RULE = ("merged {dtype} model vs the trained model: max |logit diff| <= max(verify_tolerance, 2% of the "
              "largest logit, 2 x the cast drift); cast drift: how far the trained model merged exactly and cast "
              "to {dtype} moves the logits on the same probe")
MERGE_RULE_16BIT = ("merged {dtype} model vs the trained model: max |logit diff| <= max(verify_tolerance, "
                    "2% of the largest logit)")
MERGE_KEYS = ("merge_max_logit_diff", "merge_cast_drift", "merge_tolerance")


def cast_reference(model, dtype):
    """The trained model as a 16-bit save holds it: a copy with the adapter merged exactly (float32) and
    its weights cast to ``dtype`` (buffers such as RoPE's inv_freq stay float32, as a fresh load has
    them). None unless every trained weight is float32 (a 16-bit or quantized model is its own reference)."""
    import copy

    import torch

    if any(p.dtype != torch.float32 for p in model.parameters()):
        return None
    reference = copy.deepcopy(model)
    for module in reference.modules():  # a forward patched onto the instance (the trainer's) may call the
        module.__dict__.pop("forward", None)  # original model: the copy runs its class's own
    if hasattr(reference, "merge_and_unload"):
        reference = reference.merge_and_unload()
    for param in reference.parameters():
        param.data = param.data.to(dtype)
    return reference.eval()


def check_merge(cfg, trained_logits, cast_logits, merged_logits, meta: dict, summary: dict) -> None:
    """Hold the merged model to the trained one, allowing twice the drift of the 16-bit cast alone
    (``cast_logits``: those of ``cast_reference``; None: the 16-bit rule alone); the values go to
    ``summary`` (metrics, version tags), the rule to ``meta``."""
    dtype = meta["dtype"]
    gap = logit_gap(trained_logits, merged_logits)
    summary["merge_max_logit_diff"] = gap[0]
    limit = effective_tolerance(cfg.verify_tolerance, gap[1], True)
    if cast_logits is None:
        meta["merge_rule"] = MERGE_RULE_16BIT.format(dtype=dtype)
        what = f"the merged {dtype} model drifted from the trained model"
    else:
        meta["merge_rule"] = MERGE_RULE.format(dtype=dtype)
        summary["merge_cast_drift"] = cast = logit_gap(trained_logits, cast_logits)[0]
        limit = max(limit, 2 * cast)
        what = (f"the merged {dtype} model drifted from the trained model (casting the trained model to {dtype} "
                f"alone moves the logits by {cast:.3g}; the rule allows twice that)")
    summary["merge_tolerance"] = limit
    import mlflow

    mlflow.log_metrics({k: summary[k] for k in MERGE_KEYS if k in summary})
    if cfg.registers:
        check_gap(gap, limit, sixteen_bit=True, what=what)


def _sixteen_bit():
    import torch

    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def save_full(model, processor, model_dir: Path, meta: dict):
    """Full fine-tuning: the weights cast to 16-bit in place (parameters only: buffers such as
    RoPE's inv_freq stay float32, exactly as a fresh load recomputes them) and saved."""
    dtype = _sixteen_bit()
    for param in model.parameters():
        param.data = param.data.to(dtype)
    model.config.dtype = dtype
    model.save_pretrained(str(model_dir))
    processor.save_pretrained(str(model_dir))
    meta["kind"], meta["dtype"] = "merged", str(dtype).removeprefix("torch.")
    return model


def model_meta(modality: str, cfg, backend: str, run_id: str, base_ref: dict, train_data, **extra) -> dict:
    """The lineage written to ``mg_model.json`` (``kind``/``dtype`` are added by the save step)."""
    meta = {"modality": modality, **extra, "backend": backend, "method": cfg.method, "run_id": run_id,
            "base_model": base_ref, "dataset": train_data.source, "dataset_digest": train_data.digest,
            "git_commit": git_commit(), "save_method": cfg.save_method,
            # an adapter reloads onto its base in the dtype (and 4-bit form) it was trained against
            "dtype": str(torch_dtype(cfg.dtype)).removeprefix("torch.")}
    if cfg.method == "qlora":
        meta["base_quantization"] = "bnb-4bit"
    return meta


def log_logit_diffs(summary: dict, verify_diff: float) -> None:
    import mlflow

    summary["verify_max_logit_diff"] = verify_diff
    mlflow.log_metrics({k: v for k, v in summary.items() if k.endswith("logit_diff") and k not in MERGE_KEYS})


def register_trained(cfg, result, model_uri: str, meta: dict, base_ref: dict, summary: dict, diff: float,
                     **extra_tags):
    """Register the verified model with its version tags; sets the run's registered_* tags and
    ``result.registered_name/version``."""
    import mlflow

    name = cfg.register_as or default_registered_name(cfg.base_model, "lora" if meta["kind"] == "adapter" else "merged")
    tags = {"mg.save_method": cfg.save_method if cfg.method != "full" else "merged_16bit",
            "mg.kind": meta["kind"], "mg.base_model": describe(base_ref), "mg.backend": meta["backend"],
            "mg.modality": meta["modality"], **extra_tags, "mg.method": cfg.method, "mg.objective": cfg.objective,
            **({"mg.family": meta["family"]} if meta.get("family") else {}),
            "mg.quantization": "bnb-4bit (training only)" if cfg.method == "qlora" else "none",
            "mg.run_id": meta["run_id"], "mg.dataset_digest": meta["dataset_digest"],
            "mg.git_commit": meta["git_commit"],
            "mg.train_loss": summary.get(mn.LOSS_FINAL), "mg.eval_loss": summary.get(mn.EVAL_LOSS_FINAL),
            "mg.verify_max_logit_diff": f"{diff:.3g}"}
    tags.update({mn.CARBON_TAG_PREFIX + mn.carbon_name(k): v for k, v in summary.items() if mn.is_carbon(k)})
    if meta.get("merge_rule"):  # how the merge was verified, and the values
        tags.update({f"mg.{k}": f"{summary[k]:.3g}" for k in MERGE_KEYS if k in summary})
        tags["mg.merge_rule"] = meta["merge_rule"]
    mv = register(model_uri, name, tags, cfg.alias)

    describe_version(name, str(mv.version), tags, summary)
    mlflow.set_tags({"mg.registered_model": name, "mg.registered_version": str(mv.version)})
    result.registered_name, result.registered_version = name, str(mv.version)
    return result


def save_and_register(cfg, modality, model, processor, backend: str, output_dir: Path, train_data,
                      eval_data, summary: dict, revision: str | None = None) -> TrainResult:
    """Save ``model`` to ``output_dir/model``; unless ``register_as=none`` (saved locally only:
    nothing logged or registered), log it, verify it against the trained model and register it.
    ``revision``: the hub commit the base was loaded from."""
    import mlflow

    run_id = mlflow.active_run().info.run_id
    model_dir = output_dir / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    model.eval()
    probe = modality.probe(processor, train_data, eval_data)
    trained_logits = model_logits(model, probe)  # the reference everything saved is held to
    base_ref = modality.base_reference(cfg.registers, revision)  # a local base: registered once
    meta = model_meta(modality.name, cfg, backend, run_id, base_ref, train_data, **modality.meta(model))
    result = TrainResult(run_id=run_id, output_dir=output_dir, model_dir=model_dir)
    if cfg.method == "full":
        saved = save_full(model, processor, model_dir, meta)
        gap = logit_gap(trained_logits, model_logits(saved, probe))
        summary["save_max_logit_diff"] = gap[0]
        mlflow.log_metric("save_max_logit_diff", gap[0])
        if cfg.registers:
            check_gap(gap, cfg.verify_tolerance, sixteen_bit=True,
                      what="the merged 16-bit model drifted from the trained model")
    elif cfg.save_method == "lora":
        saved = save_adapter(model, processor, output_dir, model_dir, base_ref, meta)
    else:
        reference = cast_reference(model, _sixteen_bit())
        cast_logits = model_logits(reference, probe) if reference is not None else None
        del reference
        saved = save_adapter(model, processor, output_dir, model_dir, base_ref, meta,
                             merge_onto=modality.auto_cls(), merge_processor=processor)
        check_merge(cfg, trained_logits, cast_logits, model_logits(saved, probe), meta, summary)
    write_metadata(model_dir, meta)
    if not cfg.registers:
        return result

    info = modality.log_model(model_dir)
    result.model_uri = info.model_uri
    diff = verify(info, saved, probe, cfg.verify_tolerance, what=f"{modality.name} model")
    log_logit_diffs(summary, diff)
    return register_trained(cfg, result, info.model_uri, meta, base_ref, summary, diff, **modality.extra_tags)
