"""Load and validate text datasets before any model is loaded.

Records come in any format of :mod:`mg_mlflow.data.formats` (instruction, messages with tool calls,
sharegpt, prompt_completion) and are normalised to ``{"messages": [...], "tools": [...]}``.

Every bad record is reported as ``file:line: what is wrong``; nothing is trained until the whole
file is clean.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from mg_mlflow.data import formats
from mg_mlflow.data.paths import outside_allowed
from mg_mlflow.errors import DataError, MGError

FILE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
                 ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class LoadedDataset:
    records: list[dict]            # normalised to {"messages": [...]}
    source: str                    # file path (absolute) or hub name
    name: str                      # short display name
    fmt: str                       # the detected format (formats.TEXT_FORMATS, vision ones)
    digest: str = ""
    locations: list[str] = field(default_factory=list)  # "file:line" per record

    def __len__(self) -> int:
        return len(self.records)


def is_local(source: str) -> bool:
    p = Path(source)
    return p.exists() or p.suffix.lower() in FILE_SUFFIXES or source.startswith((".", "/", "~"))


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """json object hook: a key given twice is an error (json keeps the last one silently)."""
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _json_problem(text: str) -> tuple[object, str | None]:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys), None
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    except ValueError as exc:
        return None, f"not valid JSON ({exc})"


def _utf8(raw: bytes, where: str) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"


def read_rows(path: Path) -> tuple[list[tuple[str, object]], list[str]]:
    """(location, raw row) pairs and parse problems."""
    kind = FILE_SUFFIXES.get(path.suffix.lower())
    rows: list[tuple[str, object]] = []
    problems: list[str] = []
    if kind is None:
        raise MGError(f"{path}: unsupported file type {path.suffix!r}",
                      hint=f"use one of {', '.join(sorted(FILE_SUFFIXES))}")
    if kind == "jsonl":
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                line, problem = _utf8(raw, f"{path}:{lineno}")
                if problem:
                    problems.append(problem)
                    continue
                if not line.strip():
                    continue
                value, problem = _json_problem(line)
                if problem:
                    problems.append(f"{path}:{lineno}: {problem}")
                else:
                    rows.append((f"{path}:{lineno}", value))
    elif kind == "json":
        text, problem = _utf8(path.read_bytes(), str(path))
        if problem:
            raise DataError([problem], str(path))
        try:
            data = json.loads(text or "[]", object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as exc:
            raise DataError([f"{path}:{exc.lineno}: not valid JSON ({exc.msg})"], str(path)) from None
        except ValueError as exc:
            raise DataError([f"{path}: not valid JSON ({exc})"], str(path)) from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError([f"{path}: expected a JSON list of records"], str(path))
        rows = [(f"{path}: record {i + 1}", r) for i, r in enumerate(data)]
    else:
        frame = _read_table(path, kind)
        offset = 2 if kind == "csv" else 1  # csv: line 1 is the header
        label = (lambda i: f"{path}:{i + offset}") if kind == "csv" else (lambda i: f"{path}: row {i + 1}")
        rows = [(label(i), r) for i, r in enumerate(frame.to_dict(orient="records"))]
    return rows, problems


def _read_table(path: Path, kind: str):
    """A CSV or Parquet file as a DataFrame; a malformed or truncated file is a DataError."""
    import pandas as pd

    if kind == "csv":
        raw = path.read_bytes()
        if not raw.strip():
            return pd.DataFrame()
        for lineno, line in enumerate(raw.splitlines(), 1):
            _, problem = _utf8(line, f"{path}:{lineno}")
            if problem:
                raise DataError([problem], str(path))
        import csv

        header = next(csv.reader([raw.splitlines()[0].decode()]))
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise DataError([f"{path}:1: duplicate column(s) {', '.join(map(repr, twice))} in the header"], str(path))
        try:
            return pd.read_csv(path, keep_default_na=False, dtype=str, on_bad_lines="error")
        except (pd.errors.ParserError, ValueError) as exc:
            raise DataError([f"{path}: not a valid CSV file ({str(exc).strip()})"], str(path)) from None
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise DataError([f"{path}: not a valid Parquet file ({type(exc).__name__}: {exc})"], str(path)) from None


def message_list(raw: dict) -> tuple[list | None, str | None]:
    """(``raw["messages"]`` as a non-empty list, problem); a JSON string (CSV/Parquet cells) is parsed."""
    msgs = raw.get("messages")
    if type(msgs).__module__ == "numpy":  # Parquet: a list column reads back as a numpy array
        msgs = msgs.tolist()
    if isinstance(msgs, str):
        try:
            msgs = json.loads(msgs)
        except json.JSONDecodeError:
            return None, "field 'messages' must be a list"
    if hasattr(msgs, "tolist"):  # a numpy array (Parquet)
        msgs = msgs.tolist()
    if not isinstance(msgs, list) or not msgs:
        return None, "field 'messages' must be a non-empty list"
    return msgs, None


def digest_records(records: list[dict]) -> str:
    h = hashlib.sha256()
    for rec in records:
        h.update(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def read_local(source: str, sample: str = "model-garden data sample"
               ) -> tuple[Path, list[tuple[str, object]], list[str]]:
    """A local dataset file's path, its (location, raw row) pairs and parse problems; refused when the file is
    missing or outside the allowed folders. ``sample``: the command the hint offers to write one."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise MGError(f"dataset file {source} does not exist",
                      hint=f"give a JSONL/JSON/CSV/Parquet file, or write one with `{sample}`")
    refused = outside_allowed(path, "dataset file")
    if refused:
        raise MGError(refused, hint="copy the data into an allowed folder (links out of it are not followed)")
    rows, problems = read_rows(path)
    return path, rows, problems


def source_rows(source: str, split: str = "train") -> tuple[list[tuple[str, object]], list[str], str, str]:
    """(location, raw row) pairs, parse problems, the source (absolute path or hub name), a short name."""
    if is_local(source):
        path, rows, problems = read_local(source)
        src, name = str(path.resolve()), path.stem
    else:
        rows, problems = _hub_rows(source, split), []
        src, name = source, source.split("/")[-1]
    return rows, problems, src, name


def load_dataset_records(source: str, fmt: str = "auto", split: str = "train", columns: dict | None = None,
                         ignore_columns=()) -> LoadedDataset:
    """Load ``source`` in any text format (:mod:`mg_mlflow.data.formats`), the column map applied first;
    raise DataError listing every bad record and every key the format does not use."""
    rows, problems, src, name = source_rows(source, split)
    columns, ignore = dict(columns or {}), formats.names(ignore_columns)
    unknown = [t for t in columns if t not in formats.KNOWN_KEYS]
    if unknown:
        raise MGError(f"--columns {unknown[0]}=...: {unknown[0]!r} is not a field of any dataset format",
                      hint=f"map the file's columns onto {', '.join(formats.KNOWN_KEYS)}, e.g. "
                           "--columns instruction=question,output=answer")
    records, locations, unused = [], [], {}
    detected = fmt
    for loc, raw in rows:
        if isinstance(raw, dict):
            raw, problem = formats.apply_columns(raw, columns, ignore)
            if problem:
                problems.append(f"{loc}: {problem}")
                continue
        rec, problem, seen = formats.normalise_record(raw, fmt if fmt != "auto" else detected)
        if problem:
            problems.append(f"{loc}: {problem}")
            continue
        if detected == "auto":
            detected = seen
        for key in formats.unused_keys(raw, detected):
            unused.setdefault(key, []).append(loc)
        records.append(rec)
        locations.append(loc)
    problems += formats.report_unused(unused, detected, len(records))
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
