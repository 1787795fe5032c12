"""Dataset statistics for ``model-garden data validate``: records, roles, token lengths, truncation."""

from __future__ import annotations

from mg_mlflow.data.load import load_dataset_records
from mg_mlflow.errors import MGError


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
        lengths = []
        for rec in data.records:
            ids = tok.apply_chat_template(rec["messages"], tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            lengths.append(len(ids))
        over = sum(1 for n in lengths if n > max_seq_length)
        lengths.sort()
        stats["tokens (min/median/max)"] = f"{lengths[0]}/{lengths[len(lengths) // 2]}/{lengths[-1]}"
        stats["total tokens"] = sum(lengths)
        stats[f"truncated at {max_seq_length}"] = f"{over} ({100 * over / len(lengths):.1f}%)"
    return stats


def require_chat_template(tokenizer, base_model: str, option: str = "base_model") -> None:
    """MGError naming the option when ``tokenizer`` cannot format chat records (no chat template)."""
    if not getattr(tokenizer, "chat_template", None):
        raise MGError(f"{option} {base_model}: the tokenizer has no chat template, so chat records "
                      "cannot be formatted", hint="use an instruct/chat model, or add chat_template to "
                      "its tokenizer_config.json (or a chat_template.jinja file)")
