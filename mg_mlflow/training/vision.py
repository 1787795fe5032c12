"""The vision-language modality of the one training path (Qwen2.5-VL is the reference family).

:mod:`mg_mlflow.training.recipe` holds the skeleton; this strategy loads image records (checked
images), the model and its processor, builds batches with the Qwen2-VL collator, verifies the reload on
an image probe, and logs the model's answers on a few images before and after training (``samples/``).
The MLflow record is otherwise exactly the text one.
"""

from __future__ import annotations

from pathlib import Path

from mg_mlflow.data.load import split_eval
from mg_mlflow.data.vision import image_paths, load_vision_records
from mg_mlflow.data.vision_stats import vision_profile
from mg_mlflow.data.vision_processor import VisionProcessor, template_messages
from mg_mlflow.errors import MGError
from mg_mlflow.registry.base_ref import local_base_reference
from mg_mlflow.registry.publish import log_vision_model, make_base_reference, vision_probe
from mg_mlflow.training.backends import hf_load_kwargs, torch_dtype
from mg_mlflow.training.common import no_answer_left, trainer_kwargs
from mg_mlflow.training.start import plain_start
from mg_mlflow.training.vision_collator import RecordDataset, VisionCollator
from mg_mlflow.training.vision_samples import log_samples, pick_samples, sample_answers
from mg_mlflow.vision_config import VisionTrainConfig

LANGUAGE_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_MODULES = ("qkv", "attn.proj", "gate_proj", "up_proj", "down_proj", "mlp.0", "mlp.2")


def load_vision_data(cfg: VisionTrainConfig):
    """Load and validate records and images before any model is loaded (fails fast with file:line)."""
    train = load_vision_records(cfg.dataset, cfg.dataset_format, cfg.columns, cfg.ignore_columns)
    if cfg.eval_dataset:
        return train, load_vision_records(cfg.eval_dataset, cfg.dataset_format, cfg.columns, cfg.ignore_columns)
    return split_eval(train, cfg.eval_split, cfg.seed)


def lora_targets(cfg: VisionTrainConfig) -> str | list[str]:
    """peft ``target_modules``: a regex over the language model (and the vision tower when asked)."""
    spec = cfg.lora_target_modules.strip()
    names = list(LANGUAGE_MODULES) if spec == "all-linear" else [m.strip() for m in spec.split(",") if m.strip()]
    lang = "|".join(n.replace(".", r"\.") for n in names)
    pattern = rf".*language_model.*\.({lang})"
    if cfg.finetune_vision_layers:
        vis = "|".join(n.replace(".", r"\.") for n in (VISION_MODULES if spec == "all-linear" else names))
        pattern += rf"|.*visual\.(blocks|merger).*\.({vis})"
    return pattern


def processor_folder(base: str, revision: str | None) -> Path:
    """A local folder with the base's tokenizer and image processor files (hub ids: the HF cache)."""
    if Path(base).is_dir():
        return Path(base)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(base, revision=revision, allow_patterns=[
            "*.json", "*.jinja", "*.model", "*.txt", "*.tiktoken"]))
    except Exception as exc:  # noqa: BLE001 - offline / unknown repo
        raise MGError(f"could not fetch the processor files of {base!r}: {exc}",
                      hint="give a local model folder or a models:/ URI on offline machines") from None


def load_hf_vision(cfg: VisionTrainConfig, base: str, revision: str | None):
    from transformers import AutoModelForImageTextToText

    kwargs = hf_load_kwargs(cfg, revision, skip_modules=["visual", "lm_head"])
    try:
        model = AutoModelForImageTextToText.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as exc:
        raise MGError(f"could not load vision-language model {base!r}: {exc}",
                      hint="give a Qwen2-VL/Qwen2.5-VL folder, hub id or models:/ URI") from None
    if cfg.method == "full":
        if not cfg.finetune_vision_layers:
            for p in model.model.visual.parameters():
                p.requires_grad_(False)
        return model
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=lora_targets(cfg), bias="none")
    model = get_peft_model(model, peft_config)
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def load_unsloth_vision(cfg: VisionTrainConfig, base: str, revision: str | None):
    """Unsloth's vision path (FastVisionModel); the processor still comes from the base folder."""
    from unsloth import FastVisionModel

    model, _ = FastVisionModel.from_pretrained(
        base, load_in_4bit=cfg.method == "qlora", full_finetuning=cfg.method == "full", revision=revision,
        dtype=None if cfg.dtype == "auto" else torch_dtype(cfg.dtype),
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False)
    if cfg.method != "full":
        model = FastVisionModel.get_peft_model(
            model, finetune_vision_layers=cfg.finetune_vision_layers, finetune_language_layers=True,
            finetune_attention_modules=True, finetune_mlp_modules=True, r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none", random_state=cfg.seed)
    FastVisionModel.for_training(model)
    return model


class VisionModality:
    """Image + text records trained with a transformers ``Trainer`` and the Qwen2-VL collator; the
    model's answers on a few images before and after training are logged under ``samples/``."""

    name = "vision"
    command = "train-vision"

    def __init__(self, cfg: VisionTrainConfig):
        self.cfg = cfg
        self.samples: list[dict] = []
        self.before: list[str] = []
        self.processor: VisionProcessor | None = None
        self.profiles: dict[str, dict] = {}
        self.start = None

    @property
    def extra_tags(self) -> dict:
        lineage = self.start.version_tags() if self.start is not None else {}
        return {"mg.min_pixels": self.cfg.min_pixels, "mg.max_pixels": self.cfg.max_pixels, **lineage}

    def load_data(self):
        return load_vision_data(self.cfg)

    def prepare(self, base: str, revision: str | None, train_data, eval_data) -> None:
        """The base's processor, and each dataset's profile (image sizes, visual tokens per example),
        before any run exists."""
        cfg = self.cfg
        try:
            self.processor = VisionProcessor.from_dir(processor_folder(base, revision), cfg.min_pixels,
                                                      cfg.max_pixels)
        except MGError:
            if Path(base).is_dir():
                raise
            return  # a hub model that cannot be reached: the model load, inside the run, records the error
        for context, data in (("training", train_data), ("evaluation", eval_data)):
            if data is not None:
                self.profiles[context] = vision_profile(data, self.processor, cfg.max_seq_length)
        self.check_answers_fit(self.processor, train_data)

    def run_tags(self) -> dict:
        return self.start.run_tags() if self.start is not None else {}

    def run_params(self) -> dict:
        return {}

    def starting_point(self, base: str, revision: str | None) -> tuple[str, str | None]:
        self.start = plain_start(base, revision, self.cfg.base_model)
        return base, revision

    def base_reference(self, registers: bool, revision: str | None) -> dict:
        if registers:
            return make_base_reference(self.cfg.base_model, self.name, revision)
        return local_base_reference(self.cfg.base_model, revision)

    def reference_model(self, backend: str, base: str, revision: str | None):
        return None  # vision runs train with sft only

    def load(self, backend: str, base: str, revision: str | None):
        """(model, processor, None): the processor from the base folder, the model per backend."""
        cfg = self.cfg
        processor = self.processor or VisionProcessor.from_dir(processor_folder(base, revision), cfg.min_pixels,
                                                               cfg.max_pixels)
        model = (load_unsloth_vision if backend == "unsloth" else load_hf_vision)(cfg, base, revision)
        return model, processor, None

    def trainer(self, model, processor, peft_config, output_dir: Path, backend: str, train_data, eval_data,
                callbacks: list, ref_model=None):
        from transformers import Trainer, TrainingArguments

        cfg = self.cfg
        self.check_answers_fit(processor, train_data)
        args = TrainingArguments(**trainer_kwargs(cfg, output_dir, eval_data is not None, backend),
                                 remove_unused_columns=False, label_names=["labels"], dataloader_num_workers=0)
        return Trainer(model=model, args=args, train_dataset=RecordDataset(train_data.records),
                       eval_dataset=RecordDataset(eval_data.records) if eval_data else None,
                       data_collator=VisionCollator(processor, cfg.max_seq_length, cfg.train_on_responses_only),
                       callbacks=callbacks)

    def check_answers_fit(self, processor, train_data) -> None:
        """The same refusal as text runs: when every example's prompt (image tokens included) fills
        max_seq_length before its answer starts, nothing would be learned."""
        from PIL import Image

        for rec in train_data.records:
            sizes = []
            for path in image_paths(rec):
                with Image.open(path) as img:  # reads the header only
                    sizes.append(img.size)
            if processor.prompt_length(template_messages(rec), sizes) < self.cfg.max_seq_length:
                return
        raise no_answer_left(len(train_data.records), self.cfg.max_seq_length)

    def before_training(self, model, processor, train_data, eval_data) -> None:
        self.samples = pick_samples(eval_data or train_data, self.cfg.sample_images)
        self.before = sample_answers(model, processor, self.samples, self.cfg.sample_max_new_tokens)

    def after_training(self, model, processor, output_dir: Path) -> dict[str, float]:
        after = sample_answers(model, processor, self.samples, self.cfg.sample_max_new_tokens)
        return log_samples(self.samples, self.before, after, output_dir)

    def probe(self, processor, train_data, eval_data) -> dict:
        sample = (self.samples or pick_samples(train_data, 1))[0]
        return vision_probe(processor, sample["image"], sample["question"])

    def auto_cls(self):
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    def log_model(self, model_dir: Path):
        return log_vision_model(model_dir)

    def meta(self, model) -> dict:
        family = getattr(getattr(model, "config", None), "model_type", "") or ""
        return {"family": family, "min_pixels": self.cfg.min_pixels, "max_pixels": self.cfg.max_pixels}

