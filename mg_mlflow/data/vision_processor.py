"""Model inputs for Qwen2-VL-family models without torchvision: images, chat prompt, generation.

``transformers``' ``Qwen2_5_VLProcessor`` (and so ``AutoProcessor``) needs torchvision for its video
processor, and PyPI torchvision does not load beside the CPU torch build
(``operator torchvision::nms does not exist``). This module
does the processor's job for images: the PIL image processor turns each image into patches, every
``<|image_pad|>`` of the chat template is expanded to the image's number of tokens, and labels
cover the answer only. It formats data for a model, so it sits in the data layer: training (the
collator) and the registry (the vision pyfunc) both build on it.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from mg_mlflow.errors import MGError

IGNORE = -100


def load_image(src: Any):
    """A RGB PIL image from a path, ``file://`` URI, base64 string / data URI, bytes or PIL image."""
    from PIL import Image

    if hasattr(src, "convert"):
        return src.convert("RGB")
    if isinstance(src, (bytes, bytearray)):
        return Image.open(io.BytesIO(src)).convert("RGB")
    text = str(src).strip()
    if text.startswith("data:"):
        text = text.split(",", 1)[1]
        return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")
    if text.startswith("file://"):
        text = text[len("file://"):]
    path = Path(text).expanduser()
    if len(text) < 4096 and path.is_file():
        with Image.open(path) as img:
            return img.convert("RGB")
    try:
        return Image.open(io.BytesIO(base64.b64decode(text, validate=True))).convert("RGB")
    except Exception:  # noqa: BLE001 - neither a file nor base64
        raise MGError(f"image {text[:80]!r} is neither an existing file nor base64 image data") from None


class VisionProcessor:
    """Tokenizer + image processor of a Qwen2-VL-family model folder."""

    def __init__(self, tokenizer, image_processor):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.merge = int(getattr(image_processor, "merge_size", 2))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_dir(cls, folder: str | Path, min_pixels: int | None = None, max_pixels: int | None = None):
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        folder = Path(folder)
        if not (folder / "preprocessor_config.json").is_file():
            raise MGError(f"{folder} has no preprocessor_config.json (image processor)",
                          hint="train from a Qwen2-VL/Qwen2.5-VL model folder or hub id")
        kwargs = {}
        if min_pixels:
            kwargs["min_pixels"] = min_pixels
        if max_pixels:
            kwargs["max_pixels"] = max_pixels
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(folder), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if not tokenizer.chat_template:
            for name in ("chat_template.jinja", "chat_template.json"):
                path = folder / name
                if path.is_file():
                    text = path.read_text()
                    if name.endswith(".json"):
                        import json

                        text = json.loads(text)["chat_template"]
                    tokenizer.chat_template = text
                    break
        if not tokenizer.chat_template:
            raise MGError(f"the tokenizer of {folder} has no chat template",
                          hint="train from an instruct model (e.g. Qwen/Qwen2.5-VL-3B-Instruct)")
        return cls(tokenizer, image_processor)

    def save_pretrained(self, out: str | Path) -> None:
        self.tokenizer.save_pretrained(str(out))
        self.image_processor.save_pretrained(str(out))

    # ------------------------------------------------------------ encoding

    def _images(self, images: list) -> tuple[Any, Any, list[int]]:
        feats = self.image_processor(images=images, return_tensors="pt")
        grid = feats["image_grid_thw"]
        counts = [int(g.prod()) // (self.merge ** 2) for g in grid]
        return feats["pixel_values"], grid, counts

    def _expand(self, text: str, counts: list[int]) -> str:
        pieces = text.split(self.image_token)
        if len(pieces) - 1 != len(counts):
            raise MGError(f"{len(pieces) - 1} image placeholders in the prompt but {len(counts)} images")
        out = pieces[0]
        for n, piece in zip(counts, pieces[1:]):
            out += self.image_token * n + piece
        return out

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, messages: list[dict], images: list, responses_only: bool = True,
               max_length: int = 1024) -> dict:
        """One training example: the last message is the answer the loss is computed on."""
        pixel_values, grid, counts = self._images(images) if images else (None, None, [])
        prompt = self.tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        prompt_ids = self._ids(self._expand(prompt, counts))
        answer_ids = self._ids(messages[-1]["content"] + (self.tokenizer.eos_token or ""))
        ids = (prompt_ids + answer_ids)[:max(max_length, len(prompt_ids) + 1)]  # never cut image tokens
        if responses_only:
            labels = [IGNORE] * len(prompt_ids) + ids[len(prompt_ids):]
            for start, end in self._earlier_answers(messages, counts, prompt_ids):
                labels[start:end] = ids[start:end]
        else:
            labels = [IGNORE if t == self.image_token_id else t for t in ids]
        return {"input_ids": ids, "labels": labels, "pixel_values": pixel_values, "image_grid_thw": grid}

    def _earlier_answers(self, messages: list[dict], counts: list[int], prompt_ids: list[int]) -> list[tuple[int, int]]:
        """Token spans of the assistant turns before the last one (a multi-turn record trains every
        assistant turn, as text runs do): each turn lies between the conversation rendered up to it
        with the generation prompt and rendered through it."""
        from trl.data_utils import common_prefix_length

        def ids(msgs: list[dict], generation: bool) -> list[int]:
            text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation)
            return self._ids(self._expand(text, counts[:text.count(self.image_token)]))

        return [(common_prefix_length(ids(messages[:i], True), prompt_ids),
                 common_prefix_length(ids(messages[:i + 1], False), prompt_ids))
                for i, m in enumerate(messages[:-1]) if m["role"] == "assistant"]

    def prompt_length(self, messages: list[dict], image_sizes: list[tuple[int, int]]) -> int:
        """Tokens before the answer (image tokens included) of an example whose images have these
        (width, height) sizes; the images themselves are not needed."""
        return len(self.prompt_ids(messages, image_sizes)[0])

    def prompt_ids(self, messages: list[dict], image_sizes: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        """(token ids before the answer, image tokens per image) for images of these (width, height) sizes."""
        counts = [self._count_for(tuple(size)) for size in image_sizes]
        prompt = self.tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        return self._ids(self._expand(prompt, counts)), counts

    def trained_tokens(self, messages: list[dict], image_sizes: list[tuple[int, int]], max_length: int) -> tuple[int, int, int]:
        """(tokens, trained tokens, prompt tokens) of one example, as :meth:`encode` would label it."""
        prompt, counts = self.prompt_ids(messages, image_sizes)
        answer = len(self._ids(messages[-1]["content"] + (self.tokenizer.eos_token or "")))
        kept = min(len(prompt) + answer, max(max_length, len(prompt) + 1))
        earlier = sum(end - start for start, end in self._earlier_answers(messages, counts, prompt))
        return len(prompt) + answer, kept - len(prompt) + earlier, len(prompt)

    def _count_for(self, size: tuple[int, int]) -> int:
        cache = self.__dict__.setdefault("_counts", {})
        if size not in cache:
            from PIL import Image

            cache[size] = self._images([Image.new("RGB", size)])[2][0]
        return cache[size]

    def generation_inputs(self, images: list, question: str, system: str | None = None) -> dict:
        """Tensors for ``model.generate`` for one user turn with ``images`` then ``question``."""
        import torch

        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pixel_values, grid, counts = self._images(images) if images else (None, None, [])
        ids = torch.tensor([self._ids(self._expand(prompt, counts))])
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
               "mm_token_type_ids": (ids == self.image_token_id).to(torch.int32)}
        if images:
            out.update(pixel_values=pixel_values, image_grid_thw=grid)
        return out

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def generate_answer(model, processor: VisionProcessor, image, question: str, max_new_tokens: int = 32,
                    temperature: float = 0.0, top_p: float = 1.0) -> str:
    """The model's answer to ``question`` about ``image`` (path, base64 or PIL image)."""
    import torch

    inputs = processor.generation_inputs([load_image(image)], question)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    greedy = temperature <= 0
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=not greedy,
                  pad_token_id=processor.tokenizer.pad_token_id)
    if not greedy:
        kwargs.update(temperature=temperature, top_p=top_p)
    with torch.no_grad():
        out = model.generate(**inputs, **kwargs)
    return processor.decode(out[0, inputs["input_ids"].shape[1]:])


def template_messages(record: dict) -> list[dict]:
    """A normalised vision record's messages with image parts as ``{"type": "image"}`` placeholders
    (what the chat template expects; the images travel separately)."""
    return [{"role": m["role"], "content": [{"type": "image"} if p["type"] == "image" else p for p in m["content"]]}
            if isinstance(m["content"], list) else m for m in record["messages"]]
