"""Build a tiny random-init Qwen2.5-VL model with a locally built processor and tokenizer, offline.

The folder looks like a hub Qwen2.5-VL checkout (config.json with ``vision_config``, model weights,
tokenizer files with Qwen's special tokens and the Qwen2-VL chat template, and a
``preprocessor_config.json`` for the image processor), so every code path that takes
``Qwen/Qwen2.5-VL-3B-Instruct`` takes it too. ~1 s, ~0.8 M parameters, a few MB.

Images are kept small (``min_pixels``/``max_pixels`` of the image processor): a 56x56 image is
4x4 patches of 14 px, merged 2x2 into 4 image tokens.
"""

from __future__ import annotations

from pathlib import Path
from mg_mlflow.data.vision_sample import sample_vision_records

# Qwen's special tokens, in Qwen's order; they get the first ids of the tiny vocabulary.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# The Qwen2-VL chat template (as shipped with Qwen/Qwen2.5-VL-*-Instruct). Newlines are written as
# {{ '\n' }} because HF's Jinja settings strip the newline after a block tag.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] + '<|im_end|>\\n' }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}{{ 'Picture ' + image_count.value|string + ': ' }}{% endif %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}{{ 'Video ' + video_count.value|string + ': ' }}{% endif %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112


def _corpus() -> list[str]:
    lines = ["system", "user", "assistant", "You are a helpful assistant.",
             "What is in the picture? Describe the image. The quick brown fox. 0123456789"]
    for rec in sample_vision_records(200, seed=1):
        lines += [rec["text"], rec["response"]]
    return lines


def build_vision_tokenizer(vocab_size: int = 768):
    """A ByteLevel BPE tokenizer whose first ids are Qwen's special tokens, with the Qwen2-VL template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:], model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_image_processor(min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS):
    """Qwen2-VL's PIL image processor (works without torchvision)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14,
                                    temporal_patch_size=2, merge_size=2)


def build_tiny_qwen2_5_vl(out_dir: str | Path, hidden_size: int = 128, layers: int = 2,
                          vision_hidden: int = 64, seed: int = 0,
                          lm_head_scale: float = 10.0) -> Path:
    """Write a tiny Qwen2.5-VL model folder (model, tokenizer, image processor) and return its path."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_vision_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    heads = 4
    text = dict(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
        max_position_embeddings=4096, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(depth=2, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2, num_heads=2,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden_size,
                  fullatt_block_indexes=[1], window_size=56, tokens_per_second=2)
    cfg = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(torch.float32)
    with torch.no_grad():
        # With std-0.02 output weights a 128-wide random model can't make logits big enough for LoRA
        # (which leaves lm_head alone) to push the loss much below ~4; x10 lets it fall below 1.
        model.lm_head.weight.mul_(lm_head_scale)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"], do_sample=False)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    build_image_processor().save_pretrained(out)
    return out
