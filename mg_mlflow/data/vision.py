"""Load and validate image question-answer datasets before any model is loaded.

Accepted records (JSONL / JSON / CSV / Parquet, one record per line or row):
- vision: ``{"text": question, "image": path, "response": answer}`` (the original Model Garden format);
- messages: ``{"messages": [{"role": "user", "content": [{"type": "image", "image": path},
  {"type": "text", "text": question}]}, {"role": "assistant", "content": answer}]}``; an image
  part may also be ``{"type": "image_url", "image_url": {"url": path}}`` and content may be a string;
  or string contents with ``<image>`` placeholders (and ``{"type": "image"}`` parts without a path)
  filled in order from an ``images`` list beside the messages, as LLaMA-Factory and TRL write them;
- sharegpt: ``{"conversations": [{"from": "human", "value": "<image>..."}, ...], "images": [...]}``.

Several images per record and several turns are accepted. The column map and ``ignore_columns``
apply first, as for text; a key the format does not use is reported (:mod:`mg_mlflow.data.formats`).
Image paths are absolute or relative to the dataset file (``file://`` accepted). Every image is
opened and checked (missing, unreadable, not an image) and each problem is reported as
``file:line``; the decoded pixels are dropped at once: training loads images lazily, per batch.
Records are normalised to ``{"messages": [...]}`` with absolute image paths in ``image`` parts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

from mg_mlflow.data import formats
from mg_mlflow.data.load import LoadedDataset, is_local, message_list, read_local
from mg_mlflow.data.paths import outside_allowed
from mg_mlflow.errors import DataError, MGError

ROLES = ("system", "user", "assistant")
FORMATS = ("auto", "vision", "messages", "sharegpt")
PLACEHOLDER = "<image>"
USED = {"vision": ("text", "image", "response"), "messages": ("messages", "images"),
        "sharegpt": ("conversations", "system", "images")}


def _image_path(value: object, base: Path) -> tuple[Path | None, str | None]:
    if isinstance(value, dict):  # {"url": ...} of an image_url part
        value = value.get("url")
    if not isinstance(value, str) or not value.strip():
        return None, "image must be a non-empty path string"
    text = value.strip()
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text or text.startswith("data:"):
        return None, f"image {value!r}: only local files are supported in training data"
    path = Path(text).expanduser()
    return (path if path.is_absolute() else base / path), None


def max_image_pixels() -> int:
    """Largest image area accepted: ``MG_MAX_IMAGE_PIXELS``, default Pillow's decompression-bomb
    limit (~89 M pixels); larger files would cost gigabytes of memory per batch."""
    from PIL import Image

    default = Image.MAX_IMAGE_PIXELS or 89_478_485
    try:
        return int(os.environ.get("MG_MAX_IMAGE_PIXELS", default))
    except ValueError:
        return default


def check_image(path: Path, cache: dict[Path, tuple[str | None, str]]) -> tuple[str | None, str]:
    """(problem or None, sha256 of the file) after opening ``path`` as an image; pixels are not kept."""
    if path in cache:
        return cache[path]
    from PIL import Image, UnidentifiedImageError

    refused = outside_allowed(path, "image")
    if refused:
        result: tuple[str | None, str] = (refused, "")
    elif not path.exists():
        result = (f"image {path} does not exist", "")
    elif not path.is_file():
        result = (f"image {path} is not a file", "")
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            result = (f"image {path} cannot be read ({exc.strerror or exc})", "")
        else:
            digest = hashlib.sha256(data).hexdigest()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(io.BytesIO(data)) as img:
                        width, height = img.size
                        img.verify()
                result = (None, digest)
                if width * height > max_image_pixels():
                    result = (f"image {path} is {width}x{height} pixels, more than {max_image_pixels()} "
                              "(MG_MAX_IMAGE_PIXELS): resize it before training", "")
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                result = (f"image {path} is too large to decode safely ({exc})", "")
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                result = (f"image {path} is not a readable image ({type(exc).__name__}: {exc})", "")
    cache[path] = result
    return result


def _content(content: object, base: Path, where: str,
             listed: list | None = None) -> tuple[list[dict] | str | None, str | None]:
    """A message's content with image parts resolved; ``listed``: the record's ``images`` not yet
    placed, consumed in order by ``<image>`` placeholders and path-less image parts."""
    if isinstance(content, str):
        if listed is None or PLACEHOLDER not in content:
            return content, None
        parts: list[dict] = []
        for k, piece in enumerate(content.split(PLACEHOLDER)):
            if k:
                parts.append({"type": "image", "image": listed.pop(0) if listed else None})
            if piece:
                parts.append({"type": "text", "text": piece})
        return parts, None
    if not isinstance(content, list) or not content:
        return None, f"{where}.content must be a string or a non-empty list of parts"
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            return None, f"{where}.content[{j}] must be an object"
        kind = part.get("type") or ("image" if "image" in part else "image_url" if "image_url" in part else "text")
        if kind in ("image", "image_url"):
            value = part.get("image", part.get("image_url"))
            if value is None and listed is not None:  # {"type": "image"}: the next of the record's images
                parts.append({"type": "image", "image": listed.pop(0) if listed else None})
                continue
            path, problem = _image_path(value, base)
            if problem:
                return None, f"{where}.content[{j}]: {problem}"
            parts.append({"type": "image", "image": str(path)})
        elif kind == "text":
            if not isinstance(part.get("text"), str):
                return None, f"{where}.content[{j}].text must be a string"
            parts.append({"type": "text", "text": part["text"]})
        else:
            return None, f"{where}.content[{j}].type {kind!r} is not supported (image, image_url or text)"
    return parts, None


def _normalise(raw: object, fmt: str, base: Path) -> tuple[dict | None, str | None, str]:
    """(record as messages, problem, detected format); image files are checked by the caller."""
    if not isinstance(raw, dict):
        return None, f"expected an object, got {type(raw).__name__}", fmt
    if fmt == "auto":
        fmt = ("messages" if "messages" in raw else "sharegpt" if "conversations" in raw
               else "vision" if "image" in raw or "response" in raw else "auto")
        if fmt == "auto":
            return None, ("unknown record format: expected 'text'/'image'/'response', 'messages' or "
                          f"'conversations' keys, got {sorted(raw)}"), fmt
    if fmt == "vision":
        for key in ("text", "image", "response"):
            if key not in raw:
                return None, f"missing field {key!r}", fmt
            if not isinstance(raw[key], str) or not raw[key].strip():
                return None, f"field {key!r} must be a non-empty string", fmt
        path, problem = _image_path(raw["image"], base)
        if problem:
            return None, problem, fmt
        user = [{"type": "image", "image": str(path)}, {"type": "text", "text": raw["text"]}]
        return {"messages": [{"role": "user", "content": user},
                             {"role": "assistant", "content": raw["response"]}]}, None, fmt
    if fmt == "sharegpt":
        msgs, problem, where = _sharegpt(raw)
    else:
        msgs, problem = message_list(raw)
        where = "messages"
    if problem:
        return None, problem, fmt
    listed, problem = _listed_images(raw, base)
    if problem:
        return None, problem, fmt
    pending = list(listed) if listed is not None else None
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return None, f"{where}[{i}] must be an object with a role in {', '.join(ROLES)}", fmt
        content, problem = _content(m.get("content"), base, f"{where}[{i}]", pending)
        if problem:
            return None, problem, fmt
        clean.append({"role": m["role"], "content": content})
    if listed is not None:
        holes = sum(1 for m in clean if isinstance(m["content"], list)
                    for p in m["content"] if p["type"] == "image" and p["image"] is None)
        if holes or pending:
            placed = len(listed) - len(pending) + holes
            return None, (f"{placed} image placeholder(s) ({PLACEHOLDER} or {{\"type\": \"image\"}}) in the "
                          f"messages but {len(listed)} image(s) in 'images': put one {PLACEHOLDER} where each "
                          "image goes"), fmt
    last = clean[-1]
    if last["role"] != "assistant":
        return None, "the last message must be the assistant's answer (role 'assistant')", fmt
    if isinstance(last["content"], list):
        if any(p["type"] != "text" for p in last["content"]):
            return None, "the assistant's answer must be text only", fmt
        last["content"] = "".join(p["text"] for p in last["content"])
    if not image_paths({"messages": clean}):
        return None, "no image in the record (add an image part to the user message)", fmt
    return {"messages": clean}, None, fmt


def _sharegpt(raw: dict) -> tuple[list | None, str | None, str]:
    """ShareGPT turns as role/content messages (images stay placeholders until the ``images`` list)."""
    turns = formats.parse_json(raw.get("conversations"))
    if not isinstance(turns, list) or not turns:
        return None, "field 'conversations' must be a non-empty list", "conversations"
    msgs = [{"role": "system", "content": raw["system"]}] if isinstance(raw.get("system"), str) and raw["system"] else []
    for i, turn in enumerate(turns):
        who = turn.get("from", turn.get("role")) if isinstance(turn, dict) else None
        role = formats.SHAREGPT_ROLES.get(who) if isinstance(who, str) else None
        if role not in ROLES:
            return None, (f"conversations[{i}].from must be human, gpt or system in vision data, got {who!r}"),\
                "conversations"
        msgs.append({"role": role, "content": turn.get("value", turn.get("content"))})
    return msgs, None, "conversations"


def _listed_images(raw: dict, base: Path) -> tuple[list[str] | None, str | None]:
    """The record's ``images`` list as absolute paths (None when it has none)."""
    if "images" not in raw:
        return None, None
    value = formats.parse_json(raw["images"])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return None, "field 'images' must be a list of image paths"
    out = []
    for j, item in enumerate(value):
        path, problem = _image_path(item, base)
        if problem:
            return None, f"images[{j}]: {problem}"
        out.append(str(path))
    return out, None


def image_paths(record: dict) -> list[str]:
    """The image paths of a normalised record, in order."""
    return [p["image"] for m in record["messages"] if isinstance(m["content"], list)
            for p in m["content"] if p["type"] == "image"]


def _digest(records: list[dict], hashes: dict[str, str]) -> str:
    """Content digest: image paths replaced by the sha256 of the file, so it is the same on any machine."""
    h = hashlib.sha256()
    for rec in records:
        portable = json.dumps(rec, sort_keys=True, ensure_ascii=False)
        for path in image_paths(rec):
            portable = portable.replace(json.dumps(path)[1:-1], hashes[path])
        h.update(portable.encode() + b"\n")
    return h.hexdigest()[:16]


def load_vision_records(source: str, fmt: str = "auto", columns: dict | None = None,
                        ignore_columns=()) -> LoadedDataset:
    """Load ``source``, check every record and every image; raise DataError listing all problems."""
    if fmt not in FORMATS:
        raise MGError(f"unknown vision dataset format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    if not is_local(source):
        raise MGError(f"vision dataset {source!r} must be a local file",
                      hint="write one with `model-garden data sample --vision FILE`")
    path, rows, problems = read_local(source, sample="model-garden data sample --vision FILE")
    base = path.resolve().parent
    records, locations, cache, hashes, unused = [], [], {}, {}, {}
    columns, ignore = dict(columns or {}), formats.names(ignore_columns)
    detected = fmt
    for loc, raw in rows:
        if isinstance(raw, dict):
            raw, problem = formats.apply_columns(raw, columns, ignore)
            if problem:
                problems.append(f"{loc}: {problem}")
                continue
        rec, problem, seen = _normalise(raw, fmt if fmt != "auto" else detected, base)
        if problem is None:
            for img in image_paths(rec):
                problem, sha = check_image(Path(img), cache)
                if problem:
                    break
                hashes[img] = sha
        if problem:
            problems.append(f"{loc}: {problem}")
            continue
        if detected == "auto":
            detected = seen
        for key in formats.unused_keys(raw, detected, USED.get(detected)):
            unused.setdefault(key, []).append(loc)
        records.append(rec)
        locations.append(loc)
    problems += formats.report_unused(unused, detected, len(records), USED.get(detected))
    if problems:
        raise DataError(problems, str(path.resolve()),
                        total=len(rows) + sum(1 for p in problems if "not valid JSON" in p))
    if not records:
        raise MGError(f"dataset {path} has no records",
                      hint="`model-garden data sample --vision FILE` writes an example")
    return LoadedDataset(records=records, source=str(path.resolve()), name=path.stem, fmt=detected,
                         digest=_digest(records, hashes), locations=locations)
