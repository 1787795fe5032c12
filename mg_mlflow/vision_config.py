"""Configuration of a vision-language fine-tuning run: :class:`TrainConfig` plus image settings.

Every field is a YAML key, a ``--set key=value`` override, a ``model-garden train-vision`` option
and an MLproject parameter of the ``train_vision`` entry point, exactly as for text runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from mg_mlflow.config import DATA, LORA, OPTIM, TrainConfig
from mg_mlflow.errors import ConfigError
from mg_mlflow.options import option

VISION_FORMATS = ("auto", "vision", "messages", "sharegpt")
VISION = "Vision"


@dataclass
class VisionTrainConfig(TrainConfig):
    """One vision-language (image + text -> text) fine-tuning run; Qwen2.5-VL is the reference family."""

    dataset: str = option("", "JSONL/JSON/CSV/Parquet file of image question-answer records (image paths "
                              "absolute or relative to the file)", group=DATA)
    dataset_format: str = option("auto", "record format: vision ({text,image,response}), messages with image "
                                         "parts or with <image> placeholders and an images list, sharegpt "
                                         "(conversations + images), or auto: detected from the records and logged "
                                         "as the param dataset_format_resolved", VISION_FORMATS, group=DATA)
    max_seq_length: int = option(1024, "longest example in tokens, image tokens included; longer answers are "
                                       "truncated", group=DATA, trainer_keys=("max_length",))
    batch_size: int = option(2, "per-device batch size", group=OPTIM,
                             trainer_keys=("per_device_train_batch_size", "per_device_eval_batch_size"))
    lora_target_modules: str = option("all-linear", "comma-separated module names, or all-linear (the "
                                                    "language model's linear layers; the vision tower's too when "
                                                    "finetune_vision_layers is on)", group=LORA)
    # ---- vision
    min_pixels: int = option(56 * 56, "smallest image area in pixels after resizing (multiples of 28x28 patches)",
                             group=VISION)
    max_pixels: int = option(256 * 28 * 28, "largest image area in pixels after resizing: bounds image tokens "
                                            "(max_pixels / 784) and memory", group=VISION)
    finetune_vision_layers: bool = option(False, "also train the vision tower: LoRA on its linear layers and merger "
                                                 "(method=full: unfreeze it); off = language model only", group=VISION)
    sample_images: int = option(4, "images whose answers before and after training are logged as artifacts "
                                   "(0 = none)", group=VISION)
    sample_max_new_tokens: int = option(16, "longest generated answer for the sample images", group=VISION)

    # vision runs train with transformers' Trainer: trainer_args are its TrainingArguments
    trainer_args_of = ("transformers", "TrainingArguments")

    def validate(self) -> None:
        try:
            super().validate()
            problems: list[str] = []
        except ConfigError as err:
            problems = list(err.problems)
        if self.min_pixels < 28 * 28:
            problems.append(f"min_pixels must be >= 784 (one 28x28 merged patch), got {self.min_pixels}")
        if self.max_pixels < self.min_pixels:
            problems.append(f"max_pixels ({self.max_pixels}) must be >= min_pixels ({self.min_pixels})")
        if self.max_pixels // (28 * 28) >= self.max_seq_length:
            problems.append(f"max_pixels={self.max_pixels} allows {self.max_pixels // 784} image tokens, "
                            f"not less than max_seq_length={self.max_seq_length}: lower max_pixels or raise max_seq_length")
        if self.batching not in ("auto", "padded"):
            problems.append(f"batching={self.batching} is not supported for vision runs (each example keeps its "
                            "own image and image tokens): use batching=padded or auto")
        if self.pad_to_multiple_of > 0:
            problems.append(f"pad_to_multiple_of={self.pad_to_multiple_of} applies to text runs only (the vision "
                            "collator pads each batch to its longest example): leave it at -1 (auto) or 0")
        if self.objective != "sft":
            problems.append(f"objective={self.objective}: vision runs train with sft only (the preference "
                            "objectives are for text runs: model-garden train --objective ...)")
        if self.sample_images < 0 or self.sample_max_new_tokens < 1:
            problems.append("sample_images must be >= 0 and sample_max_new_tokens >= 1")
        if problems:
            raise ConfigError(problems, "the vision training configuration")
