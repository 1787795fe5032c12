"""Dataset statistics for ``model-garden data validate``: the format, turns, tool calls, and with a
tokenizer the tokens and trained tokens per example after the loss mask, and what max_length would cut."""

from __future__ import annotations

from pathlib import Path

from mg_mlflow.data.chat_tokens import profile, tokenize_dataset
from mg_mlflow.data.load import load_dataset_records, source_rows
from mg_mlflow.data.preference import KINDS as PREFERENCE_KINDS
from mg_mlflow.data.preference import detect_kind, load_preference_records, preference_stats
from mg_mlflow.data import formats
from mg_mlflow.data.vision import load_vision_records
from mg_mlflow.data.vision_processor import VisionProcessor
from mg_mlflow.data.vision_stats import vision_profile
from mg_mlflow.errors import MGError

# Above this share of records longer than max_seq_length, `data validate` and `train` warn: a cut
# record loses the end of its answer, so most of what the model would learn from it.
TRUNCATION_WARN_SHARE = 0.10


def first_record_kind(source: str, columns: dict | None, ignore_columns=()) -> str | None:
    """``preference``/``kto`` when the dataset's first record has that shape (after the column map)."""
    rows, _, _, _ = source_rows(source)
    for _, raw in rows[:1]:
        if isinstance(raw, dict):
            raw, _ = formats.apply_columns(raw, {t: s for t, s in (columns or {}).items() if s in raw},
                                           formats.names(ignore_columns))
            return detect_kind(raw)
    return None


def dataset_stats(source: str, fmt: str = "auto", base_model: str | None = None, max_seq_length: int = 512,
                  columns: dict | None = None, ignore_columns=(), responses_only: bool = True,
                  tool_calls: bool = True) -> dict[str, object]:
    """The dataset profile of ``source`` (see :func:`mg_mlflow.data.chat_tokens.profile`); preference
    and KTO data are validated as such and say which objective trains them."""
    kind = first_record_kind(source, columns, ignore_columns) if fmt == "auto" else fmt
    if kind in PREFERENCE_KINDS and not {"label", "chosen"} & set(formats.names(ignore_columns)):
        return preference_stats(load_preference_records(source, kind, columns=columns,
                                                        ignore_columns=ignore_columns))
    data = load_dataset_records(source, fmt, columns=columns, ignore_columns=ignore_columns)
    if not base_model:
        return profile(data)
    tok = load_tokenizer(base_model, "--base-model")
    rows = tokenize_dataset(tok, data, base_model, responses_only, tool_calls)
    return profile(data, rows, max_seq_length)


def is_vision_data(source: str) -> bool:
    """Whether the dataset's first record carries images (``image``/``images`` keys or image parts)."""
    import json

    if not Path(source).expanduser().is_file():
        return False
    rows, _, _, _ = source_rows(source)
    raw = rows[0][1] if rows else None
    if not isinstance(raw, dict):
        return False
    if "image" in raw or "images" in raw:
        return True
    text = json.dumps(raw.get("messages", raw.get("conversations")), default=str)
    return '"image_url"' in text or '"type": "image"' in text


def vision_stats(source: str, fmt: str = "auto", base_model: str | None = None, max_seq_length: int = 1024,
                 columns: dict | None = None, ignore_columns=()) -> dict[str, object]:
    """The profile of an image dataset (every image opened); with ``base_model`` (a Qwen2-VL-family
    folder) the visual tokens per example."""
    data = load_vision_records(source, fmt, columns, ignore_columns)
    processor = VisionProcessor.from_dir(base_model) if base_model else None
    return vision_profile(data, processor, max_seq_length if processor else None)


def load_tokenizer(base_model: str, option: str = "base_model", revision: str | None = None):
    """The tokenizer of ``base_model`` with a chat template, or an MGError naming the option."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(base_model, revision=revision)
    except (OSError, ValueError) as exc:
        raise MGError(f"{option} {base_model}: no tokenizer could be loaded ({exc})".splitlines()[0],
                      hint="give a model folder with tokenizer files, or a hub id available offline") from None
    require_chat_template(tok, base_model, option)
    return tok


def truncation_warning(share: float, max_seq_length: int, option: str = "--max-seq-length") -> str | None:
    """The warning for a truncated ``share`` above TRUNCATION_WARN_SHARE (None at or below it)."""
    if share <= TRUNCATION_WARN_SHARE:
        return None
    return (f"{100 * share:.0f}% of the records are longer than {option} {max_seq_length} tokens and will "
            f"be cut in training (their answers lose their ends); raise {option}, or shorten the records "
            f"(warned above {100 * TRUNCATION_WARN_SHARE:.0f}%)")


def require_chat_template(tokenizer, base_model: str, option: str = "base_model") -> None:
    """MGError naming the option when ``tokenizer`` cannot format chat records (no chat template)."""
    if not getattr(tokenizer, "chat_template", None):
        raise MGError(f"{option} {base_model}: the tokenizer has no chat template, so chat records "
                      "cannot be formatted", hint="use an instruct/chat model, or add chat_template to "
                      "its tokenizer_config.json (or a chat_template.jinja file)")
