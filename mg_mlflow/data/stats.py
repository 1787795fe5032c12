"""Dataset statistics for ``model-garden data validate``: records, roles, token lengths, truncation."""

from __future__ import annotations

from mg_mlflow.data.load import load_dataset_records
from mg_mlflow.errors import MGError

# Above this share of records longer than max_seq_length, `data validate` and `train` warn: a cut
# record loses the end of its answer, so most of what the model would learn from it.
TRUNCATION_WARN_SHARE = 0.10
# `train` measures the share on at most this many records, evenly spaced (a few seconds of tokenizing).
TRUNCATION_SAMPLE = 5000


def dataset_stats(source: str, fmt: str = "auto", base_model: str | None = None,
                  max_seq_length: int = 512) -> dict[str, object]:
    data = load_dataset_records(source, fmt)
    turns = [len(r["messages"]) for r in data.records]
    chars = [sum(len(m["content"]) for m in r["messages"]) for r in data.records]
    stats: dict[str, object] = {
        "records": len(data), "format": data.fmt, "digest": data.digest,
        "turns (min/mean/max)": f"{min(turns)}/{sum(turns) / len(turns):.1f}/{max(turns)}",
        "characters (min/mean/max)": f"{min(chars)}/{sum(chars) / len(chars):.0f}/{max(chars)}",
    }
    if base_model:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(base_model)
        except (OSError, ValueError) as exc:
            raise MGError(f"--base-model {base_model}: no tokenizer could be loaded ({exc})".splitlines()[0],
                          hint="give a model folder with tokenizer files, or a hub id available offline") from None
        require_chat_template(tok, base_model, "--base-model")
        lengths = sorted(token_lengths(tok, data.records))
        over = sum(1 for n in lengths if n > max_seq_length)
        stats["tokens (min/median/max)"] = f"{lengths[0]}/{lengths[len(lengths) // 2]}/{lengths[-1]}"
        stats["total tokens"] = sum(lengths)
        stats[f"truncated at {max_seq_length}"] = f"{over} ({100 * over / len(lengths):.1f}%)"
        stats["truncated share"] = over / len(lengths)
    return stats


def token_lengths(tokenizer, records: list[dict]) -> list[int]:
    """Tokens of each chat record once formatted by the tokenizer's chat template."""
    lengths = []
    for rec in records:
        ids = tokenizer.apply_chat_template(rec["messages"], tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        lengths.append(len(ids))
    return lengths


def truncated_share(tokenizer, records: list[dict], max_seq_length: int,
                    limit: int = TRUNCATION_SAMPLE) -> float:
    """Share of ``records`` longer than ``max_seq_length`` tokens (measured on at most ``limit`` of
    them, evenly spaced)."""
    if not records:
        return 0.0
    step = max(1, -(-len(records) // limit))
    lengths = token_lengths(tokenizer, records[::step])
    return sum(1 for n in lengths if n > max_seq_length) / len(lengths)


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
