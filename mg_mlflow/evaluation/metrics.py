"""Scores of predictions against references, from maintained implementations where one exists.

- exact match and token F1 (SQuAD-style: lower-cased word tokens; short enough to write here),
- ROUGE-L F-measure (Google's ``rouge-score``), BLEU and chrF (``sacrebleu``; 0-100 scale),
- JSON-schema validity (``jsonschema``): the prediction parses as JSON and validates.

Corpus figures are the mean of the per-example scores, except BLEU and chrF, which are sacrebleu's
corpus scores (per-example values in the table are sentence scores).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from mg_mlflow.errors import MGError

_WORD = re.compile(r"\w+", re.UNICODE)


def normalise(text: str) -> str:
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise(prediction) == normalise(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = _WORD.findall(prediction.lower()), _WORD.findall(reference.lower())
    if not pred and not ref:
        return 1.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def load_schema(source: str):
    """A jsonschema validator for ``source`` (a file or inline JSON); MGError naming the file and
    line when it does not parse or is not a valid schema."""
    import jsonschema

    path = Path(source)
    where = str(path) if path.is_file() else "--json-schema"
    text = path.read_text(encoding="utf-8") if path.is_file() else source
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MGError(f"{where}:{exc.lineno}: the JSON schema does not parse ({exc.msg} at column {exc.colno})",
                      hint="give a JSON Schema file (or inline JSON) such as '{\"type\": \"object\"}'") from None
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        at = "/".join(str(p) for p in exc.path) or "(root)"
        raise MGError(f"{where}: not a valid JSON Schema at {at}: {exc.message}") from None
    return cls(schema)


def json_valid(prediction: str, validator) -> float:
    try:
        value = json.loads(prediction)
    except ValueError:
        return 0.0
    return float(validator.is_valid(value))


def score(predictions: list[str], references: list[str], validator=None) -> tuple[dict[str, float], list[dict]]:
    """(corpus metrics named ``eval/...``, per-example scores)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    rouge = rouge_scorer.RougeScorer(["rougeL"])
    rows = []
    for pred, ref in zip(predictions, references):
        row = {"exact_match": exact_match(pred, ref), "token_f1": token_f1(pred, ref),
               "rougeL": rouge.score(ref, pred)["rougeL"].fmeasure,
               "bleu": sacrebleu.sentence_bleu(pred, [ref]).score,
               "chrf": sacrebleu.sentence_chrf(pred, [ref]).score}
        if validator is not None:
            row["json_valid"] = json_valid(pred, validator)
        rows.append(row)
    n = max(1, len(rows))
    out = {f"eval/{k}": sum(r[k] for r in rows) / n for k in ("exact_match", "token_f1", "rougeL")}
    out["eval/bleu"] = sacrebleu.corpus_bleu(predictions, [references]).score
    out["eval/chrf"] = sacrebleu.corpus_chrf(predictions, [references]).score
    if validator is not None:
        out["eval/json_valid_rate"] = sum(r["json_valid"] for r in rows) / n
    return out, rows
