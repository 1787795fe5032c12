"""The evaluation set: the training loader's records split into prompt messages and a reference.

Same files and formats as training (:mod:`mg_mlflow.data.load`): instruction records whose
``output`` is the reference, or ``messages`` whose final assistant turn is the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from mg_mlflow.data.load import digest_records, load_dataset_records
from mg_mlflow.data.preference import PAIRS, SHAPES, UNPAIRED, load_preference_records, sniff_shape
from mg_mlflow.errors import DataError, MGError

_NO_REFERENCE = ("missing field 'output'", "field 'output' must be", "the last message must be the assistant")


@dataclass
class EvalExample:
    prompt: list[dict]        # chat messages up to (not including) the answer
    reference: str            # the expected answer (of a preference pair: the chosen one)
    location: str             # file:line
    rejected: str | None = None  # of a preference pair: the rejected answer

    @property
    def prompt_text(self) -> str:
        """The last user turn (what the per-example table shows)."""
        users = [m["content"] for m in self.prompt if m["role"] == "user"]
        return users[-1] if users else self.prompt[-1]["content"]


@dataclass
class EvalSet:
    examples: list[EvalExample]
    data: object              # the LoadedDataset (source, name, digest, records)

    @property
    def digest(self) -> str:
        return self.data.digest

    @property
    def name(self) -> str:
        return self.data.name

    @property
    def preference(self) -> bool:
        """Held-out preference pairs (chosen is the reference): preference accuracy is measured."""
        return self.data.fmt == "preference"  # the loader's kind of pairs

    def __len__(self) -> int:
        return len(self.examples)


def load_eval_set(source: str, fmt: str = "auto", limit: int | None = None, columns: dict | None = None,
                  ignore_columns=()) -> EvalSet:
    """Load and validate ``source``; every record must carry a reference answer.

    Raises MGError naming each ``file:line`` without a reference, or DataError for other bad records.
    A file of preference pairs (:mod:`mg_mlflow.data.preference`) is held-out pairs: the chosen answer
    is the reference, and the rejected one is kept for the preference metrics.
    """
    shape, _ = sniff_shape(source, columns, ignore_columns)
    if shape == PAIRS:
        return _pairs_set(source, limit, columns, ignore_columns)
    if shape == UNPAIRED:
        raise MGError(f"dataset {source} holds {SHAPES[UNPAIRED]}: evaluate scores answers against references "
                      "or preference pairs", hint=f"give {SHAPES[PAIRS]}, or conversations with reference answers")
    try:
        data = load_dataset_records(source, fmt, "test", columns, ignore_columns)
    except DataError as err:
        missing = [p for p in err.problems if any(s in p for s in _NO_REFERENCE)]
        if missing:
            shown = "\n".join(f"  {p}" for p in missing[:20])
            more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
            raise MGError(f"dataset {source}: {len(missing)} record(s) without a reference answer "
                          f"(evaluation compares the model's answers with references):\n{shown}{more}",
                          hint="give each record an 'output' (instruction format) or end its 'messages' "
                               "with the expected assistant answer") from None
        raise
    if limit is not None and 0 < limit < len(data.records):
        data.records, data.locations = data.records[:limit], data.locations[:limit]
        data.digest = digest_records(data.records)
    examples = [EvalExample(prompt=rec["messages"][:-1], reference=rec["messages"][-1]["content"], location=loc)
                for rec, loc in zip(data.records, data.locations)]
    for ex in examples:
        if not ex.prompt:
            raise MGError(f"{ex.location}: the record has an answer but no prompt before it")
    return EvalSet(examples, data)


def _pairs_set(source: str, limit: int | None, columns: dict | None = None, ignore_columns=()) -> EvalSet:
    data = load_preference_records(source, PAIRS, "test", columns, ignore_columns)
    if limit is not None and 0 < limit < len(data.records):
        data.records, data.locations = data.records[:limit], data.locations[:limit]
        data.digest = digest_records(data.records)
    examples = []
    for rec, loc in zip(data.records, data.locations):
        if len(rec["chosen"]) != 1 or len(rec["rejected"]) != 1:
            raise MGError(f"{loc}: chosen and rejected must each be one assistant answer to be scored",
                          hint="put the earlier turns in 'prompt'")
        examples.append(EvalExample(prompt=rec["prompt"], reference=rec["chosen"][0]["content"], location=loc,
                                    rejected=rec["rejected"][0]["content"]))
    return EvalSet(examples, data)
