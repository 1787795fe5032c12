"""Disjoint training and held-out files: no held-out record is also a training record.

A file often holds the same record more than once (the sample generator draws from a small pool; real
data has duplicates); a random split by position then puts copies on both sides and the held-out
set measures memorisation. Here distinct records are split: every copy of a record goes to the same
side, and the held-out side keeps one copy of each of its records.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from mg_mlflow.data.load import read_rows
from mg_mlflow.errors import DataError, MGError


def record_key(record: object) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


def split_records(records: list, fraction: float, seed: int = 0) -> tuple[list, list]:
    """(train, heldout): about ``fraction`` of the records held out, whole groups of equal records
    at a time, at least one; the held-out side without repeats."""
    if not 0 < fraction < 1:
        raise MGError(f"the held-out fraction must be between 0 and 1, got {fraction:g}", hint="e.g. --split 0.1")
    keys = list(dict.fromkeys(record_key(r) for r in records))
    if len(keys) < 2:
        raise MGError(f"{len(keys)} distinct record(s): nothing to split into training and held-out data")
    random.Random(seed).shuffle(keys)
    counts: dict[str, int] = {}
    for r in records:
        counts[record_key(r)] = counts.get(record_key(r), 0) + 1
    target = max(1, round(len(records) * fraction))
    held, taken = set(), 0
    for key in keys[:-1]:  # at least one distinct record stays for training
        if taken >= target:
            break
        held.add(key)
        taken += counts[key]
    train = [r for r in records if record_key(r) not in held]
    seen, heldout = set(), []
    for r in records:
        key = record_key(r)
        if key in held and key not in seen:
            seen.add(key)
            heldout.append(r)
    return train, heldout


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def beside(path: Path, suffix: str) -> Path:
    """``data.jsonl`` -> ``data-<suffix>.jsonl`` in the same folder."""
    return path.with_name(f"{path.stem}-{suffix}.jsonl")


def split_file(source: str | Path, fraction: float, seed: int = 0, train_out: str | Path | None = None,
               heldout_out: str | Path | None = None) -> tuple[Path, int, Path, int]:
    """Split a dataset file (JSONL, JSON, CSV or Parquet) into two JSONL files; nothing is written
    when a row does not parse. Returns (train path, records, held-out path, records)."""
    path = Path(source)
    if not path.is_file():
        raise MGError(f"dataset file {path} does not exist")
    rows, problems = read_rows(path)
    if problems:
        raise DataError(problems, str(path))
    train, heldout = split_records([row for _, row in rows], fraction, seed)
    t_path = Path(train_out) if train_out else beside(path, "train")
    h_path = Path(heldout_out) if heldout_out else beside(path, "heldout")
    if path.absolute() in (t_path.absolute(), h_path.absolute()):
        raise MGError(f"{path}: the split would overwrite its source", hint="give --train and --heldout other paths")
    write_jsonl(t_path, train)
    write_jsonl(h_path, heldout)
    return t_path, len(train), h_path, len(heldout)
