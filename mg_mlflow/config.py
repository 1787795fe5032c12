"""Typed configuration, documented once.

Every field of :class:`TrainConfig` is at the same time a YAML key, a ``--set key=value`` override,
a CLI option where one exists, and an MLproject parameter. Validation collects every problem and
raises one :class:`~mg_mlflow.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mg_mlflow.errors import ConfigError

BACKENDS = ("auto", "unsloth", "hf")
METHODS = ("lora", "qlora", "full")
SAVE_METHODS = ("lora", "merged_16bit")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts",
              "polynomial", "inverse_sqrt")
FORMATS = ("auto", "instruction", "messages")
BATCHING = ("auto", "padded", "padding_free", "packed")


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None, **kw: Any) -> Any:
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class TrainConfig:
    """One text fine-tuning run."""

    # what to train on
    base_model: str = _f("", "Hugging Face hub id, local model folder, or models:/ URI of a registered base model")
    dataset: str = _f("", "JSONL/JSON/CSV/Parquet file, or a Hugging Face dataset name")
    dataset_format: str = _f("auto", "record format: instruction ({instruction,input,output}), messages, or auto-detect", FORMATS)
    dataset_split: str = _f("train", "split to read when `dataset` is a hub dataset name")
    eval_dataset: str = _f("", "optional evaluation file or hub dataset name")
    eval_split: float = _f(0.0, "fraction of the training data held out for evaluation when no eval_dataset is given (0 = none)")
    # how
    backend: str = _f("auto", "training backend: unsloth (FastLanguageModel), hf (transformers+peft+trl) or auto", BACKENDS)
    method: str = _f("lora", "lora, qlora (4-bit base, needs CUDA + bitsandbytes) or full fine-tuning", METHODS)
    dtype: str = _f("auto", "compute dtype; auto = bfloat16 on a GPU that supports it, else float32", DTYPES)
    max_steps: int = _f(-1, "stop after this many optimizer steps (-1 = run `epochs`)")
    epochs: float = _f(1.0, "number of passes over the training data (ignored when max_steps > 0)")
    batch_size: int = _f(4, "per-device batch size")
    grad_accum: int = _f(1, "gradient accumulation steps")
    learning_rate: float = _f(2e-4, "peak learning rate")
    lr_scheduler: str = _f("linear", "learning-rate schedule (transformers names)", SCHEDULERS)
    warmup_steps: float = _f(0.0, "learning-rate warmup: a number of steps (>= 1) or a fraction of all steps (< 1)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_seq_length: int = _f(512, "longest tokenized example; longer ones are truncated")
    seed: int = _f(42, "random seed for data order and initialisation")
    gradient_checkpointing: bool = _f(False, "trade compute for memory by recomputing activations")
    batching: str = _f("auto", "how examples become batches: padded (pad each batch to its longest example), "
                               "padding_free (the same examples in one row without pad tokens, kept apart by "
                               "position ids), packed (examples packed into bins of max_seq_length; batch_size "
                               "counts bins), auto (the measured rule for the backend and device, see README); "
                               "the loss is the same in every mode", BATCHING)
    pad_to_multiple_of: int = _f(-1, "pad each batch's length up to a multiple of N (text runs): fewer distinct "
                                     "batch shapes for the GPU to warm up on; 0 = to the longest example; -1 = "
                                     "auto (the measured rule: 64 for padded batches on a GPU, 0 on CPU)")
    train_on_responses_only: bool = _f(True, "compute the loss on the assistant response tokens only")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = _f(0.0, "dropout on the LoRA branch")
    lora_target_modules: str = _f("all-linear", "comma-separated module names, or all-linear")
    eval_steps: int = _f(0, "evaluate every N steps (0 = only at the end, when there is an eval set)")
    save_steps: int = _f(0, "write a checkpoint every N steps (0 = none; Ctrl-C/SIGTERM still save one)")
    checkpoint_artifacts: bool = _f(False, "also log each checkpoint as a run artifact (resume on another machine)")
    resume: str = _f("", "id of an interrupted run to continue from its last checkpoint: the SAME MLflow run "
                         "goes on (its config is the base; options given now override it)")
    logging_steps: int = _f(1, "log metrics every N steps")
    metrics_sync_steps: int = _f(0, "read the per-step loss back from the GPU every N steps instead of every step "
                                    "(every step still gets its point; no step waits for the device); "
                                    "0 = auto: 10 on a GPU, 1 on the CPU")
    num_gpus: int = _f(1, "data-parallel training on N GPUs of this machine (torchrun; one MLflow run, one "
                          "registered version); MG_DDP_CPU=1 runs the N ranks on the CPU (gloo) instead")
    # where the result goes
    save_method: str = _f("lora", "register the LoRA adapter (lora) or the merged full model (merged_16bit)", SAVE_METHODS)
    register_as: str = _f("", "registered model name (default: derived from the base model); 'none' = save locally only, log and register nothing")
    alias: str = _f("", "registry alias to point at the new version, e.g. champion")
    experiment: str = _f("model-garden", "MLflow experiment name (ignored under `mlflow run`, which chooses it)")
    run_name: str = _f("", "MLflow run name")
    output_dir: str = _f("", "where checkpoints and the final model are written (default: $MG_HOME/outputs/<run id>)")
    system_metrics: bool = _f(True, "log MLflow system metrics (CPU, memory, GPU)")
    verify_tolerance: float = _f(1e-3, "max |logit difference| between trained and reloaded model before registering")
    # carbon (see mg_mlflow/tracking/carbon.py)
    carbon: bool = _f(True, "measure energy and CO2 with codecarbon and log them as metrics")
    carbon_country: str = _f("USA", "ISO 3166 alpha-3 country code for the grid carbon intensity (offline mode)")
    carbon_region: str = _f("", "optional region within the country (e.g. a US state or Canadian province)")
    carbon_pue: float = _f(1.0, "power usage effectiveness of the data centre")
    carbon_interval_steps: int = _f(10, "log carbon metrics every N optimizer steps, at most once per carbon_measure_secs")
    carbon_interval_secs: float = _f(0.0, "also log a carbon point every N seconds (0 = by steps only)")
    carbon_offline: bool = _f(True, "codecarbon offline mode (no network): grid intensity from its bundled data")
    carbon_measure_secs: float = _f(5.0, "codecarbon's power sampling interval in seconds")

    def validate(self) -> None:
        problems = collect_choice_problems(self) + collect_value_problems(self)
        if not self.base_model:
            problems.append("base_model is required (a hub id, a model folder or a models:/ URI)")
        if not self.dataset:
            problems.append("dataset is required (a JSONL/JSON/CSV/Parquet file or a hub dataset name)")
        for name in ("batch_size", "grad_accum", "max_seq_length", "lora_r", "lora_alpha", "logging_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pad_to_multiple_of < -1:
            problems.append(f"pad_to_multiple_of must be >= 0 (0 = off) or -1 (auto), got {self.pad_to_multiple_of}")
        if self.metrics_sync_steps < 0:
            problems.append(f"metrics_sync_steps must be >= 0 (0 = auto), got {self.metrics_sync_steps}")
        if self.num_gpus < 1:
            problems.append(f"num_gpus must be >= 1, got {self.num_gpus}")
        if self.max_steps == 0 or self.max_steps < -1:
            problems.append(f"max_steps must be -1 (use epochs) or > 0, got {self.max_steps}")
        if self.max_steps == -1 and self.epochs <= 0:
            problems.append(f"epochs must be > 0 when max_steps is -1, got {self.epochs}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.eval_split < 1.0:
            problems.append(f"eval_split must be in [0, 1), got {self.eval_split}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.lora_dropout < 1.0:
            problems.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.method == "full" and self.save_method == "lora":
            problems.append("method=full trains every weight, so there is no adapter: use save_method=merged_16bit")
        if self.eval_dataset and self.eval_split:
            problems.append("give either eval_dataset or eval_split, not both")
        if problems:
            raise ConfigError(problems, "the training configuration")

    @property
    def registers(self) -> bool:
        return self.register_as.lower() != "none"


# ---------------------------------------------------------------- loading and overrides

def collect_choice_problems(cfg: Any) -> list[str]:
    problems = []
    for f in fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value not in choices:
            problems.append(f"{f.name}={value!r} is not one of {', '.join(choices)}")
    return problems


MAX_TEXT = 4096  # longest text value (a path, a name): PATH_MAX; MLflow params hold 6000 characters


def collect_value_problems(cfg: Any) -> list[str]:
    """Numbers that are NaN or infinite, and text values too long to be a path or a name."""
    import math

    problems = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{f.name} must be a finite number, got {value}")
        elif isinstance(value, str) and len(value) > MAX_TEXT:
            problems.append(f"{f.name} is {len(value)} characters long (at most {MAX_TEXT}): {value[:40]!r}...")
    return problems


def field_help(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in fields(cls)}


def _base_type(cls: type, name: str) -> type:
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def parse_bool(value: Any) -> bool:
    """true/false, yes/no, on/off, 1/0 (any case) as a bool; ValueError otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def coerce(cls: type, name: str, value: Any) -> Any:
    """Turn a YAML value or a command-line string into the field's type (raises ValueError)."""
    typ = _base_type(cls, name)
    if typ is bool:
        return parse_bool(value)
    if typ is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        text = str(value).strip()
        try:
            return int(text)
        except ValueError:
            try:
                as_float = float(text)  # MLproject passes numbers as floats ("20.0")
            except ValueError:
                as_float = None
            if as_float is not None and as_float.is_integer():
                return int(as_float)
            raise ValueError(f"expected an integer, got {value!r}") from None
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
    return "" if value is None else str(value)


def _unknown(cls: type, key: str) -> str:
    names = [f.name for f in fields(cls)]
    close = difflib.get_close_matches(key, names, n=3)
    tip = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown option {key!r}{tip}"


# Old option names still accepted (YAML, --set, the CLI flag, MLproject), each mapped onto its
# replacement with a one-line notice: name -> (type, new field, {old value: new value}).
RENAMED: dict[str, tuple[type, str, dict[Any, Any]]] = {
    "packing": (bool, "batching", {True: "packed", False: None}),  # None: no change
}


def _renamed(layer: dict[str, tuple[Any, str]], problems: list[str]) -> dict[str, tuple[Any, str]]:
    """One precedence layer (the YAML file, the options, or the --set's) with its deprecated keys
    mapped onto their replacement; the same layer giving both, with different values, is a problem."""
    import logging

    out = {k: v for k, v in layer.items() if k not in RENAMED}
    for old in [k for k in layer if k in RENAMED]:
        typ, new, mapping = RENAMED[old]
        value, where = layer[old]
        try:
            mapped = mapping[parse_bool(value) if typ is bool else value]
        except (ValueError, KeyError):
            problems.append(f"{where}: {value!r} is not valid; {old} is deprecated, use {new} ({', '.join(BATCHING)})")
            continue
        if mapped is None:
            continue
        given = out.get(new)
        if given is not None and str(given[0]) != mapped:
            problems.append(f"{where}: {old}={value} means {new}={mapped}, but {given[1]} says {new}={given[0]}: "
                            f"keep only {new} ({old} is deprecated)")
            continue
        logging.getLogger(__name__).warning("%s=%s is deprecated, read as %s=%s (write %s: %s instead)",
                                            where, value, new, mapped, new, mapped)
        out[new] = (mapped, where)
    return out


def build_config(cls: type, config_file: str | Path | None = None,
                 overrides: dict[str, Any] | None = None,
                 set_args: list[str] | tuple[str, ...] = ()) -> Any:
    """Merge defaults < YAML file < explicit overrides < ``--set key=value``; validate once."""
    import yaml

    problems: list[str] = []
    values: dict[str, Any] = {}
    names = {f.name for f in fields(cls)}
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError([f"{path}: no such config file"], str(path))
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError([f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"], str(path)) from None
        if not isinstance(loaded, dict):
            raise ConfigError([f"{path}: expected a mapping of option: value"], str(path))
        layer = {}
        for key, value in loaded.items():
            if key not in names and key not in RENAMED:
                problems.append(f"{path}: {_unknown(cls, key)}")
            else:
                layer[key] = (value, f"{path}: {key}")
        values.update(_renamed(layer, problems))
    layer = {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in names and key not in RENAMED:
            problems.append(_unknown(cls, key))
        else:
            layer[key] = (value, f"option {key}")
    values.update(_renamed(layer, problems))
    layer = {}
    for item in set_args:
        if "=" not in item:
            problems.append(f"--set {item!r}: expected key=value")
            continue
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in names and key not in RENAMED:
            problems.append(f"--set {_unknown(cls, key)}")
        else:
            layer[key] = (value, f"--set {key}")
    values.update(_renamed(layer, problems))
    kwargs = {}
    for key, (value, where) in values.items():
        try:
            kwargs[key] = coerce(cls, key, value)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        raise ConfigError(problems, str(config_file or "the options"))
    cfg = cls(**kwargs)
    cfg.validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
