"""Load and validate text datasets before any model is loaded.

Accepted records:
- instruction: ``{"instruction": str, "input": str (optional), "output": str}``
- messages: ``{"messages": [{"role": "system|user|assistant", "content": str}, ...]}`` ending
  with an assistant turn.

Every bad record is reported as ``file:line: what is wrong``; nothing is trained until the whole
file is clean.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from mg_mlflow.data.paths import outside_allowed
from mg_mlflow.errors import DataError, MGError

FILE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
                 ".parquet": "parquet", ".pq": "parquet"}
ROLES = ("system", "user", "assistant", "tool")


@dataclass
class LoadedDataset:
    records: list[dict]            # normalised to {"messages": [...]}
    source: str                    # file path (absolute) or hub name
    name: str                      # short display name
    fmt: str                       # instruction | messages
    digest: str = ""
    locations: list[str] = field(default_factory=list)  # "file:line" per record

    def __len__(self) -> int:
        return len(self.records)


def is_local(source: str) -> bool:
    p = Path(source)
    return p.exists() or p.suffix.lower() in FILE_SUFFIXES or source.startswith((".", "/", "~"))


def _read_rows(path: Path) -> tuple[list[tuple[str, object]], list[str]]:
    """(location, raw row) pairs and parse problems."""
    kind = FILE_SUFFIXES.get(path.suffix.lower())
    rows: list[tuple[str, object]] = []
    problems: list[str] = []
    if kind is None:
        raise MGError(f"{path}: unsupported file type {path.suffix!r}",
                      hint=f"use one of {', '.join(sorted(FILE_SUFFIXES))}")
    if kind == "jsonl":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"{path}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    problems.append(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})")
    elif kind == "json":
        try:
            data = json.loads(path.read_text(encoding="utf-8") or "[]")
        except json.JSONDecodeError as exc:
            raise DataError([f"{path}:{exc.lineno}: not valid JSON ({exc.msg})"], str(path)) from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError([f"{path}: expected a JSON list of records"], str(path))
        rows = [(f"{path}: record {i + 1}", r) for i, r in enumerate(data)]
    else:
        import pandas as pd

        frame = pd.read_csv(path, keep_default_na=False) if kind == "csv" else pd.read_parquet(path)
        offset = 2 if kind == "csv" else 1  # csv: line 1 is the header
        label = (lambda i: f"{path}:{i + offset}") if kind == "csv" else (lambda i: f"{path}: row {i + 1}")
        rows = [(label(i), r) for i, r in enumerate(frame.to_dict(orient="records"))]
    return rows, problems


def message_list(raw: dict) -> tuple[list | None, str | None]:
    """(``raw["messages"]`` as a non-empty list, problem); a JSON string (CSV/Parquet cells) is parsed."""
    msgs = raw.get("messages")
    if isinstance(msgs, str):
        try:
            msgs = json.loads(msgs)
        except json.JSONDecodeError:
            return None, "field 'messages' must be a list"
    if not isinstance(msgs, list) or not msgs:
        return None, "field 'messages' must be a non-empty list"
    return msgs, None


def _normalise(raw: object, fmt: str) -> tuple[dict | None, str | None, str]:
    """Return (record as messages, problem, detected format)."""
    if not isinstance(raw, dict):
        return None, f"expected an object, got {type(raw).__name__}", fmt
    if fmt == "auto":
        fmt = "messages" if "messages" in raw else "instruction" if "instruction" in raw else "auto"
        if fmt == "auto":
            return None, ("unknown record format: expected 'instruction'/'output' or 'messages' keys, "
                          f"got {sorted(raw)}"), fmt
    if fmt == "instruction":
        for key in ("instruction", "output"):
            value = raw.get(key)
            if key not in raw:
                return None, f"missing field {key!r}", fmt
            if not isinstance(value, str) or not value.strip():
                return None, f"field {key!r} must be a non-empty string", fmt
        extra = raw.get("input", "")
        if extra is None:
            extra = ""
        if not isinstance(extra, str):
            return None, "field 'input' must be a string", fmt
        user = raw["instruction"] + (("\n" + extra) if extra.strip() else "")
        return {"messages": [{"role": "user", "content": user},
                             {"role": "assistant", "content": raw["output"]}]}, None, fmt
    if "messages" not in raw:
        return None, "missing field 'messages'", fmt
    msgs, problem = message_list(raw)
    if problem:
        return None, problem, fmt
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return None, f"messages[{i}] must be an object with role and content", fmt
        if m.get("role") not in ROLES:
            return None, f"messages[{i}].role must be one of {', '.join(ROLES)}, got {m.get('role')!r}", fmt
        if not isinstance(m.get("content"), str):
            return None, f"messages[{i}].content must be a string", fmt
        clean.append({"role": m["role"], "content": m["content"]})
    if clean[-1]["role"] != "assistant":
        return None, "the last message must be the assistant's answer (role 'assistant')", fmt
    return {"messages": clean}, None, fmt


def digest_records(records: list[dict]) -> str:
    h = hashlib.sha256()
    for rec in records:
        h.update(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def load_dataset_records(source: str, fmt: str = "auto", split: str = "train") -> LoadedDataset:
    """Load ``source`` and validate every record; raise DataError listing all bad records."""
    if is_local(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise MGError(f"dataset file {source} does not exist",
                          hint="give a JSONL/JSON/CSV/Parquet file, or write one with `model-garden data sample`")
        refused = outside_allowed(path, "dataset file")
        if refused:
            raise MGError(refused, hint="copy the data into an allowed folder (links out of it are not followed)")
        rows, problems = _read_rows(path)
        src, name = str(path.resolve()), path.stem
    else:
        rows, problems = _hub_rows(source, split), []
        src, name = source, source.split("/")[-1]
    records, locations = [], []
    detected = fmt
    for loc, raw in rows:
        rec, problem, seen = _normalise(raw, fmt if fmt != "auto" else detected)
        if problem:
            problems.append(f"{loc}: {problem}")
            continue
        if detected == "auto":
            detected = seen
        records.append(rec)
        locations.append(loc)
    if problems:
        raise DataError(problems, src, total=len(rows) + sum(1 for p in problems if "not valid JSON" in p))
    if not records:
        raise MGError(f"dataset {src} has no records",
                      hint="an empty file cannot train a model; `model-garden data sample FILE` writes an example")
    return LoadedDataset(records=records, source=src, name=name, fmt=detected,
                         digest=digest_records(records), locations=locations)


def _hub_rows(name: str, split: str) -> list[tuple[str, object]]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise MGError("the `datasets` package is needed to load hub datasets") from exc
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - hub errors come in many types
        raise MGError(f"could not load dataset {name!r} (split {split!r}): {exc}",
                      hint="check the name, or pass a local file; offline machines need a local file") from None
    return [(f"{name}[{split}] row {i + 1}", row) for i, row in enumerate(ds)]


def split_eval(data: LoadedDataset, fraction: float, seed: int) -> tuple[LoadedDataset, LoadedDataset | None]:
    """Hold out ``fraction`` of the records (at least one) as an evaluation set."""
    if fraction <= 0:
        return data, None
    import random

    idx = list(range(len(data)))
    random.Random(seed).shuffle(idx)
    n_eval = max(1, int(round(len(idx) * fraction)))
    if n_eval >= len(idx):
        raise MGError(f"eval_split={fraction} leaves no training records out of {len(idx)}")
    ev, tr = sorted(idx[:n_eval]), sorted(idx[n_eval:])

    def sub(ids: list[int], suffix: str) -> LoadedDataset:
        recs = [data.records[i] for i in ids]
        return LoadedDataset(recs, data.source, data.name + suffix, data.fmt, digest_records(recs),
                             [data.locations[i] for i in ids])

    return sub(tr, "-train"), sub(ev, "-eval")


def to_trl_rows(records: list[dict], responses_only: bool) -> list[dict]:
    """Records in the form TRL's SFTTrainer expects.

    responses_only: prompt/completion conversational rows, so the loss covers the final assistant
    turn only (TRL's completion-only loss); else plain ``messages`` rows (loss on every token).
    """
    if not responses_only:
        return [{"messages": r["messages"]} for r in records]
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records]
