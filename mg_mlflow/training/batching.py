"""How examples become batches: ``padded``, ``padding_free`` or ``packed``, and what ``auto`` picks.

The modes, all on TRL's ``SFTTrainer``:

- ``padded``: each batch is ``batch_size`` examples padded to the longest one, with an attention mask.
- ``padding_free``: the same ``batch_size`` examples per step, concatenated into one row with no pad
  token; ``position_ids`` restart at 0 for each example, so attention and the loss keep each
  example separate (the same tokens and the same loss as ``padded``, without the pad work).
- ``packed``: examples are packed into bins of ``max_seq_length`` tokens (TRL best-fit-decreasing,
  ``packing_strategy="bfd"``, which keeps boundaries through ``position_ids``); ``batch_size``
  then counts bins, so one step sees more examples.

The choice is always ours, never a library's default (Unsloth turns padding-free on by itself when
``SFTConfig.padding_free`` is left unset). ``auto`` resolves by :func:`auto_rule`; the requested and
the resolved mode are logged as the params ``batching`` and ``batching_resolved``, the rule as the
tag ``mg.batching_reason``. Padded text batches are bucketed by ``pad_to_multiple_of`` (-1 = auto,
:data:`AUTO_PAD_MULTIPLE`), logged as ``pad_to_multiple_of_resolved``. The measurements behind both
tables are in docs/performance.md (bench/gpu/bench_parity.py).

Attention for flattened rows (:func:`attention_implementation`): with the hf backend on a CUDA GPU,
padding-free and packed rows run PyTorch FlexAttention (``attn_implementation="flex_attention"``):
transformers turns the restarting ``position_ids`` into a block-sparse document mask, so only the
blocks inside one example are computed. SDPA over the same rows needs a dense block-diagonal mask,
which rules out its flash kernel. Padded rows keep SDPA. Unsloth attends flattened rows itself
(:func:`unsloth_flat_attention`: one varlen flash call per layer).

On a GPU a small model's step costs about the same whatever its tokens (launch-bound), so tokens/s
follows the real tokens per step: ``packed`` (full bins) is the fastest layout for variable-length
rows on both backends, near fixed-row speed, at the price of more examples per step
(docs/performance.md).
"""

from __future__ import annotations

from contextlib import contextmanager

from mg_mlflow.config import BATCHING
from mg_mlflow.env import scoped_env
from mg_mlflow.errors import MGError
from mg_mlflow.vision_config import VisionTrainConfig

MODES = BATCHING  # auto, padded, padding_free, packed (TrainConfig.batching's choices)

# batching = auto, per backend and device: never a mode that changes how many examples a step holds
# (``packed`` does: batch_size then counts bins of max_seq_length, so it is only ever asked for);
# between padded (bucketed to 64 on a GPU) and padding_free, the one measured faster on
# variable-length rows. bench/gpu/bench_parity.py, 1B shape, LoRA, batch 8, rows of 64-511 tokens,
# two ABBA pairs each, median (range); docs/performance.md:
# - unsloth, cuda (one H100, 2026-12-06): padding-free through Unsloth's varlen flash path is 0.80x
#   (0.66-0.94) of padded64; packed is 2.13x (2.01-2.24) padded64 and 0.97x (0.87-1.06) fixed rows.
# - hf, cuda: padding-free through FlexAttention 1.04x padded64 in one pair, slower in the other (one
#   H200, 2026-12-04); packed is 2.48x (2.35-2.61) padded64 and 0.99x (0.97-1.01) fixed rows (H100).
# - cpu: padded; a flattened row attends through a dense block-diagonal mask there.
CPU_WHY = "CPU: no varlen kernel; a flattened row attends through a full block-diagonal mask"
PACKED_HINT = "on variable-length rows --batching packed is {x} as fast (bins of max_seq_length; docs/performance.md)"
AUTO_RULES: dict[tuple[str, str], tuple[str, str]] = {
    ("unsloth", "cuda"): ("padded", "GPU, Unsloth: padded to a multiple of 64 is 1.25x padding-free; "
                          + PACKED_HINT.format(x="2.1x")),
    ("hf", "cuda"): ("padded", "GPU, hf: padded to a multiple of 64 is as fast as padding-free (FlexAttention); "
                     + PACKED_HINT.format(x="2.5x")),
    ("unsloth", "cpu"): ("padded", CPU_WHY),
    ("hf", "cpu"): ("padded", CPU_WHY),
}

# device -> (N, why) for pad_to_multiple_of = -1 (auto): padded text batches are padded up to a
# multiple of N tokens, so a GPU sees at most max_seq_length / N batch shapes.
AUTO_PAD_MULTIPLE: dict[str, tuple[int, str]] = {
    "cuda": (64, "fewer batch shapes: 1.3-2.0x tokens/s on variable-length rows (docs/performance.md)"),
    "cpu": (0, "CPU: no per-shape warm-up to win back; padding to the longest row is the least work"),
}

# transformers (>= 5) builds a block-diagonal causal mask from restarting position_ids, with no 2-D
# attention mask, for these attention implementations (masking_utils.find_packed_sequence_indices;
# flash-attention reads the boundaries as cu_seq_lens). Any other implementation would let the
# examples of one flattened row attend to each other.
BOUNDARY_SAFE_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flash_attention_4",
                           "flex_attention")
FLAT_ROW_ATTENTION = "flex_attention"  # hf backend, CUDA, padding_free / packed rows


def device_kind() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def attention_implementation(mode: str, device: str | None = None) -> str:
    """The hf backend's ``attn_implementation`` for batches built in ``mode``: FlexAttention for
    flattened rows on a CUDA GPU (a document mask from ``position_ids``), SDPA otherwise (FlexAttention
    has no backward on the CPU)."""
    device = device or device_kind()
    if mode in ("padding_free", "packed") and device.startswith("cuda"):
        from transformers.utils import is_torch_flex_attn_available

        if is_torch_flex_attn_available():
            return FLAT_ROW_ATTENTION
    return "sdpa"


def resolve_batching(cfg, backend: str, device: str | None = None) -> str:
    """The mode a run uses: the requested one, or for ``auto`` :func:`auto_rule` of
    (backend, device). Vision runs are always padded (each example keeps its own image)."""
    return resolve_with_reason(cfg, backend, device)[0]


def resolve_with_reason(cfg, backend: str, device: str | None = None) -> tuple[str, str]:
    """(mode, why) as :func:`resolve_batching`; ``why`` becomes the run tag ``mg.batching_reason``."""
    if isinstance(cfg, VisionTrainConfig):
        return "padded", "vision: each example keeps its own image"
    if cfg.batching != "auto":
        return cfg.batching, "requested"
    device = device or device_kind()
    mode, why = auto_rule(backend, device)
    return mode, f"auto ({backend}, {device}): {why}"


def auto_rule(backend: str, device: str) -> tuple[str, str]:
    """(mode, why) for ``auto`` on this backend and device (the :data:`AUTO_RULES` row)."""
    return AUTO_RULES[(backend, "cuda" if device.startswith("cuda") else "cpu")]


def resolve_pad_multiple(cfg, mode: str, device: str | None = None) -> tuple[int, str]:
    """(N, why) for a text run's ``pad_to_multiple_of``: the value asked for (0 = off), or for -1 (auto)
    the :data:`AUTO_PAD_MULTIPLE` row of the device when batches are ``padded``; padding-free and packed
    rows have no per-batch width to bucket (auto = 0)."""
    if cfg.pad_to_multiple_of >= 0:
        return cfg.pad_to_multiple_of, "requested"
    if mode != "padded":
        return 0, f"auto: {mode} rows are not padded per batch"
    device = device or device_kind()
    n, why = AUTO_PAD_MULTIPLE["cuda" if device.startswith("cuda") else "cpu"]
    return n, f"auto ({device}): {why}"


def sft_kwargs(mode: str, backend: str) -> dict:
    """The ``SFTConfig`` arguments for a mode. ``padding_free`` is always given explicitly: Unsloth's
    patched ``SFTConfig`` defaults it to None, meaning "let Unsloth decide", and an explicit value
    always wins over its automatic choice (unsloth/trainer.py, utils/padding_choice.py)."""
    if mode == "packed":
        return {"packing": True, "packing_strategy": "bfd", "padding_free": True}
    if mode == "padding_free" and backend == "unsloth":
        # Unsloth rewrites TRL's "padding_free needs max_length=None" guard into its own truncation of
        # the prepared rows, and attaches the boundaries to its attention (enable_padding_free_metadata);
        # a custom collator would make it turn its metadata off, so it gets the flag, not a collator.
        return {"packing": False, "padding_free": True}
    # hf padding_free: TRL refuses padding_free=True with a max_length and no packing (it would not
    # truncate), so the dataset is prepared (and truncated) as for padded and the flattening is done
    # by TRL's own collator (see :func:`data_collator`).
    return {"packing": False, "padding_free": False}


def data_collator(mode: str, backend: str, tokenizer):
    """TRL's ``DataCollatorForLanguageModeling`` in padding-free form for hf ``padding_free``, else
    None (the trainer builds its own)."""
    if mode != "padding_free" or backend == "unsloth":
        return None
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)


def check_boundaries(model, mode: str, backend: str) -> None:
    """Refuse padding_free/packed where the model's attention would mix the examples of one row."""
    if mode == "padded" or backend == "unsloth":  # Unsloth masks packed rows itself (utils/packing.py)
        return
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl not in BOUNDARY_SAFE_ATTENTION:
        raise MGError(f"batching={mode} needs an attention implementation that keeps examples apart by "
                      f"position ids, and this model uses {impl!r} (safe: {', '.join(BOUNDARY_SAFE_ATTENTION)})",
                      hint="use --batching padded, or load the model with sdpa / flash_attention_2")


def effective_mode(trainer) -> str:
    """What the built trainer will really do (Unsloth may change the config in its __init__)."""
    args = trainer.args
    if getattr(args, "packing", False):
        return "packed"
    if getattr(args, "padding_free", False) or getattr(trainer.data_collator, "padding_free", False):
        return "padding_free"
    return "padded"


@contextmanager
def unsloth_choice(mode: str, backend: str):
    """Pin Unsloth's own knob while its SFTTrainer is built: ``UNSLOTH_PADDING_CHOICE`` (read when
    the trainer is constructed; ``padded`` or ``padding_free``). The explicit ``padding_free`` of
    :func:`sft_kwargs` already wins; this also covers an Unsloth that only reads the variable.
    The variable is restored afterwards, so nothing leaks into the next run of the process."""
    if backend != "unsloth":
        yield
        return
    with scoped_env(UNSLOTH_PADDING_CHOICE="padded" if mode == "padded" else "padding_free"):
        yield


# Unsloth (2026.10) attends flattened rows in one varlen flash call per layer (its ``_LeanFlashVarlen``:
# torch's own ``aten._flash_attention_forward`` with ``cu_seqlens``) only when torch's public
# ``varlen_attn`` takes ``enable_gqa`` (torch >= 2.12). Otherwise it runs one SDPA call per run of
# equal lengths, which made padding-free rows 0.47x as fast as padded ones on an H200
# (docs/performance.md). The aten flash kernel itself takes grouped K/V heads in torch 2.11 as well.
VARLEN_FLASH = "varlen flash"
SEGMENT_SDPA = "per-segment SDPA"


def unsloth_flat_attention(mode: str, backend: str) -> str:
    """What Unsloth runs flattened rows (``padding_free`` / ``packed``) through, after opening its
    varlen flash path where only the ``varlen_attn`` signature of this torch kept it shut; "" for
    padded rows and the hf backend. Logged as the tag ``mg.flat_attention``."""
    if backend != "unsloth" or mode == "padded":
        return ""
    import torch

    if not torch.cuda.is_available():
        return f"{SEGMENT_SDPA} (no CUDA GPU)"
    try:
        from unsloth.utils import attention_dispatch as dispatch
    except ImportError:  # an Unsloth without this module attends by its own rules
        return "unsloth's own"
    if getattr(dispatch, "_TORCH_VARLEN_ATTN", None) is not None:
        return f"{VARLEN_FLASH} (Unsloth, torch varlen_attn)"
    lean = getattr(dispatch, "_LeanFlashVarlen", None)
    if lean is None or not hasattr(torch.ops.aten, "_flash_attention_forward") or \
            not torch.backends.cuda.is_flash_attention_available():
        return f"{SEGMENT_SDPA} (Unsloth: no varlen flash kernel in this torch)"

    def varlen_attn(query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                    enable_gqa=False):  # torch 2.12's signature, for Unsloth's compiled path
        left, right = window_size
        return lean.apply(query, key, value, cu_q, max_q, (left, right) == (-1, 0), scale, left, right)

    dispatch._TORCH_VARLEN_ATTN = varlen_attn
    dispatch._LEAN_VARLEN = True
    dispatch._varlen_can_use_cudnn = lambda *args, **kwargs: False  # torch 2.11 varlen never takes cuDNN
    return f"{VARLEN_FLASH} (aten flash kernel, grouped K/V; torch {torch.__version__.split('+')[0]})"
