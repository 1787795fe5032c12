"""Build a tiny random-init Llama-architecture model and a locally trained tokenizer, offline.

The result is an ordinary Hugging Face model folder (config.json, model.safetensors, tokenizer
files with a chat template), so every code path that takes a hub id takes it too. ~1 s, ~1-2 MB.
"""

from __future__ import annotations

from pathlib import Path
from mg_mlflow.data.sample import sample_records

# A ChatML-style template that renders tools the way Qwen-style templates do: the ``tools`` list as a
# ``tools`` turn first, each tool call as ``<tool_call>{"name", "arguments"}</tool_call>`` after the
# assistant's text, tool results as ``tool`` turns. Records without tools render as plain ChatML.
# HF's Jinja settings strip the newline after a block tag, so newlines are written as {{ '\n' }}.
CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>tools\n' }}{% for tool in tools %}{{ tool | tojson }}{{ '\n' }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% if message.tool_calls %}{% for call in message.tool_calls %}"
    "{{ '<tool_call>' }}{{ (call.function if call.function is defined else call) | tojson }}{{ '</tool_call>' }}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>", "<|unk|>"]


def _corpus() -> list[str]:
    lines = []
    for rec in sample_records(400, seed=1):
        lines += [rec["instruction"], rec.get("input", ""), rec["output"]]
    lines += ["user", "assistant", "system", "You are a helpful assistant.",
              "The quick brown fox jumps over the lazy dog. 0123456789"]
    return [line for line in lines if line]


def build_tokenizer(vocab_size: int = 1024):
    """A ByteLevel BPE tokenizer trained on sample text, with bos/eos/pad and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|im_end|>", pad_token="<|pad|>",
        unk_token="<|unk|>", additional_special_tokens=["<|im_start|>", "<|eos|>"],
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(out_dir: str | Path, hidden_size: int = 128, layers: int = 2, heads: int = 4,
                     vocab_size: int = 1024, seed: int = 0) -> Path:
    """Write a tiny Llama model folder to ``out_dir`` and return its path."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(vocab_size)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        head_dim=hidden_size // heads, max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False, torch_dtype="float32",
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
