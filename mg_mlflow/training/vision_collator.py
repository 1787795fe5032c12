"""Data collator for Qwen2-VL-family training batches (images opened lazily, per batch).

The per-example encoding (image tokens, answer-only labels, ``mm_token_type_ids`` for mRoPE) is
:class:`mg_mlflow.data.vision_processor.VisionProcessor`'s; this module pads examples into batches.
"""

from __future__ import annotations

from mg_mlflow.data.vision import image_paths
from mg_mlflow.data.vision_processor import (IGNORE, VisionProcessor, generate_answer, load_image,
                                             template_messages)

__all__ = ["IGNORE", "RecordDataset", "VisionCollator", "VisionProcessor", "generate_answer", "load_image",
           "template_messages"]


class RecordDataset:
    """A map-style dataset of normalised records; images stay paths until the collator opens them."""

    def __init__(self, records: list[dict]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return self.records[i]


class VisionCollator:
    """Opens a batch's images, encodes the examples and pads them (right) into one batch."""

    def __init__(self, processor: VisionProcessor, max_length: int = 1024, responses_only: bool = True):
        self.processor = processor
        self.max_length = max_length
        self.responses_only = responses_only

    def __call__(self, records: list[dict]) -> dict:
        import torch

        examples = []
        for rec in records:
            images = [load_image(p) for p in image_paths(rec)]
            examples.append(self.processor.encode(template_messages(rec), images, self.responses_only,
                                                  self.max_length))
            del images
        width = max(len(e["input_ids"]) for e in examples)
        pad = self.processor.tokenizer.pad_token_id
        ids = torch.full((len(examples), width), pad, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            labels[i, :n] = torch.tensor(e["labels"])
            mask[i, :n] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels,
                 "mm_token_type_ids": ((ids == self.processor.image_token_id) & mask.bool()).to(torch.int32)}
        with_images = [e for e in examples if e["pixel_values"] is not None]
        if with_images:
            batch["pixel_values"] = torch.cat([e["pixel_values"] for e in with_images])
            batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in with_images])
        return batch
