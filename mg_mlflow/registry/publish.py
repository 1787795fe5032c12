"""Log a model folder to MLflow, verify it reloads with the same logits, then register it.

No version is registered unless the artifact, loaded back through ``models:/m-<id>``, reproduces
the trained model's logits on a probe input within tolerance.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from mg_mlflow.data.vision_processor import load_image
from mg_mlflow.data.vision_sample import draw_shape
from mg_mlflow.errors import MGError
from mg_mlflow.registry.base_ref import default_registered_name
from mg_mlflow.registry.loader import load_model_dir, load_vision_dir
from mg_mlflow.registry.metadata import folder_digest
from mg_mlflow.registry.resolve import registry_version

PROBE_TEXT = "Model Garden checks that the registered model answers exactly like the trained one."
REQUIREMENTS = ("mlflow", "torch", "transformers", "peft", "accelerate", "tokenizers",
                "safetensors", "pandas")


def pip_requirements(extra: tuple[str, ...] = ()) -> list[str]:
    reqs = []
    for name in (*REQUIREMENTS, *extra):
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs


def package_dir() -> str:
    return str(Path(__file__).resolve().parents[1])


def text_probe(tokenizer, text: str = PROBE_TEXT) -> dict:
    """Model inputs for the text probe."""
    return dict(tokenizer(text, return_tensors="pt"))


def vision_probe(processor, image, question: str) -> dict:
    """Model inputs for an image probe: ``image`` (a path, URI, base64 or PIL image) and a question."""
    return processor.generation_inputs([load_image(image)], question)


def model_logits(model, inputs: dict):
    """Logits (float32, on the CPU) of ``model`` on probe ``inputs`` (text or image + text)."""
    import torch

    model.eval()
    batch = {k: v.to(model.device) for k, v in inputs.items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    with torch.no_grad():
        return model(**batch).logits.float().cpu()


def logit_gap(reference_logits, logits) -> tuple[float, float]:
    """(max |difference|, max |reference logit|); an infinite difference when the shapes differ."""
    diff = float((reference_logits - logits).abs().max()) if reference_logits.shape == logits.shape else float("inf")
    return diff, float(reference_logits.abs().max())


def is_16bit(model) -> bool:
    import torch

    return any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters())


def effective_tolerance(tolerance: float, logit_scale: float, sixteen_bit: bool) -> float:
    """``tolerance`` between float32 models; where either side is 16-bit, at least 2% of the largest
    logit, since bfloat16 keeps ~3 significant digits and kernels (fused vs eager) round differently."""
    return max(tolerance, 0.02 * logit_scale) if sixteen_bit else tolerance


def check_gap(gap: tuple[float, float], tolerance: float, sixteen_bit: bool, what: str) -> float:
    """Raise (nothing registered) when ``gap`` is over the tolerance rule; return the difference."""
    diff, scale = gap
    limit = effective_tolerance(tolerance, scale, sixteen_bit)
    if not diff <= limit:
        raise MGError(f"{what}: max |logit diff| {diff:.3g} > tolerance {limit:g}; nothing was registered",
                      hint="this is a bug or a lossy save; raise verify_tolerance only if you know why")
    return diff


@contextmanager
def staged(model_dir: Path):
    """``model_dir`` seen as ``<tmp>/model_dir`` (hard links, copies across filesystems), so the
    artifact layout is always ``artifacts/model_dir`` whatever the folder was called."""
    with tempfile.TemporaryDirectory(prefix=".mg-stage-", dir=Path(model_dir).parent) as tmp:
        dest = Path(tmp) / "model_dir"
        shutil.copytree(model_dir, dest, copy_function=_link_or_copy)
        yield dest


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def log_model_dir(model_dir: Path, name: str, python_model, signature, extra_requirements: tuple[str, ...] = ()):
    """Log ``model_dir`` (artifact ``model_dir``) as a pyfunc model of the active run; returns ModelInfo."""
    import mlflow

    with staged(model_dir) as folder, quiet_log_model():
        return mlflow.pyfunc.log_model(
            name=name, python_model=python_model, artifacts={"model_dir": str(folder)},
            signature=signature, pip_requirements=pip_requirements(extra_requirements),
            code_paths=[package_dir()],
        )


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextmanager
def quiet_log_model():
    """Two notices of ``mlflow.pyfunc.log_model`` that do not apply to these models, silenced while it
    runs: the CloudPickle caution (the pickled object is our own class, its code shipped in
    ``code_paths``) and the missing ``input_example`` (an example would make MLflow load the whole
    model once more to check it; the signature is explicit)."""
    import warnings

    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    pickle_notice = _DropMessage("serialized using CloudPickle")
    pyfunc_log.addFilter(pickle_notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*An input example was not provided", category=UserWarning)
            yield
    finally:
        pyfunc_log.removeFilter(pickle_notice)


def log_text_model(model_dir: Path, name: str = "model", python_model=None):
    """Log ``model_dir`` as a text pyfunc model of the active run; returns MLflow's ModelInfo."""
    from mg_mlflow.registry.pyfunc_model import TextModel, signature

    return log_model_dir(model_dir, name, python_model or TextModel(), signature())


def log_reward_model(model_dir: Path, name: str = "model"):
    """Log ``model_dir`` as a reward model (a pyfunc that scores texts) of the active run; returns ModelInfo."""
    from mg_mlflow.registry.pyfunc_model import RewardModel, reward_signature

    return log_model_dir(model_dir, name, RewardModel(), reward_signature())


def log_vision_model(model_dir: Path, name: str = "model"):
    """Log ``model_dir`` as a vision pyfunc model of the active run; returns MLflow's ModelInfo."""
    from mg_mlflow.registry.pyfunc_vision import EXTRA_REQUIREMENTS, VisionModel, signature

    return log_model_dir(model_dir, name, VisionModel(), signature(), EXTRA_REQUIREMENTS)


def verify(model_info, reference, inputs: dict, tolerance: float, what: str = "model") -> float:
    """Reload through ``models:/m-<id>`` and compare its logits on probe ``inputs`` with ``reference``
    (a model, or its logits); raise (nothing registered) if they differ beyond the tolerance rule."""
    import mlflow

    loaded = mlflow.pyfunc.load_model(model_info.model_uri).unwrap_python_model().model
    sixteen_bit = is_16bit(loaded)
    if not hasattr(reference, "shape"):
        sixteen_bit = sixteen_bit or is_16bit(reference)
        reference = model_logits(reference, inputs)
    return check_gap(logit_gap(reference, model_logits(loaded, inputs)), tolerance, sixteen_bit,
                     f"the logged {what} does not reproduce the trained model")


def register(model_uri: str, name: str, tags: dict[str, Any], alias: str = ""):
    """Register ``model_uri`` under ``name`` with version tags and an optional alias."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    clean = {k: str(v) for k, v in tags.items() if v is not None and v != ""}
    mv = mlflow.register_model(model_uri, name, tags=clean)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return mv


def _log_verified_text_base(folder: Path):
    """Log a text base folder as ``base_model`` and check its reload on the probe text."""
    reference, tokenizer = load_model_dir(folder)
    info = log_text_model(folder, name="base_model")
    verify(info, reference, text_probe(tokenizer), 1e-5, what="base model")
    return info


def _log_verified_vision_base(folder: Path):
    """Log a vision base folder as ``base_model`` and check its reload on a drawn-shape probe."""
    reference, processor = load_vision_dir(folder)
    info = log_vision_model(folder, name="base_model")
    verify(info, reference, vision_probe(processor, draw_shape("red", "circle"), "What is this?"), 1e-5,
           what="vision base model")
    return info


def register_base_folder(folder: Path, modality: str = "text") -> str:
    """Register a local base model folder once (keyed by content digest); return models:/NAME/V.
    It is logged as a ``modality`` model and its reload checked before it is registered."""
    import mlflow

    folder = Path(folder).resolve()
    digest = folder_digest(folder)
    name = default_registered_name(str(folder), "base")
    client = mlflow.tracking.MlflowClient()
    for mv in client.search_model_versions(f"name='{name}'"):
        if (mv.tags or {}).get("mg.content_digest") == digest:
            return f"models:/{name}/{mv.version}"
    log_verified = _log_verified_vision_base if modality == "vision" else _log_verified_text_base
    info = log_verified(folder)
    mv = register(info.model_uri, name, {"mg.content_digest": digest, "mg.save_method": "base",
                                          "mg.source_folder_name": folder.name, "mg.modality": modality})
    return f"models:/{name}/{mv.version}"


def make_base_reference(base_model: str, modality: str = "text", revision: str | None = None) -> dict:
    """Turn what the user trained from into a reference any machine with the registry resolves.
    A local folder is registered once as a ``modality`` base; a hub id is pinned to ``revision``,
    the commit that was actually loaded (``main`` when unknown)."""
    if base_model.startswith("models:/"):
        _, mv = registry_version(base_model)
        return {"kind": "registry", "uri": f"models:/{mv.name}/{mv.version}"}
    path = Path(base_model).expanduser()
    if path.is_dir():
        return {"kind": "registry", "uri": register_base_folder(path, modality)}
    return {"kind": "hub", "id": base_model, "revision": revision or "main"}
