"""Declaring option fields and turning any value into a field's type (no click here)."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
import shlex
import types
import typing
from typing import Any

MAX_TEXT = 4096  # longest text value (a path, a name): PATH_MAX; MLflow params hold 6000 characters
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
BOOL_WORDS = set(TRUE_WORDS + FALSE_WORDS)
_NONE = type(None)
_PAIR_START = re.compile(r",\s*(?=[A-Za-z_][A-Za-z0-9_.]*\s*=)")  # a comma that starts the next KEY=


# ---------------------------------------------------------------- declaring

def option(default: Any = dataclasses.MISSING, help: str = "", choices: tuple[str, ...] | None = None, *,
           group: str | None = None, flags: tuple[str, ...] | None = None, key: str | None = "",
           envvar: str | None = None, split: str | None = None, metavar: str | None = None,
           **extra: Any) -> Any:
    """A dataclass field documented once.

    ``help``/``choices``: the help text and allowed values. ``group``: the ``--help`` heading it is
    listed under. ``flags``: click declarations (default ``--field-name``, ``--x/--no-x`` for a bool;
    ``()`` = no CLI option). ``key``: the MLflow plugin ``-C`` key (default the field name; None = none).
    ``envvar``: environment variable the CLI option also reads. ``split``: how one string becomes a list
    (``comma``, the default, or ``shell``). ``extra``: more metadata for the declaring module."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "group": group, "flags": flags,
            "key": key, "envvar": envvar, "split": split, "metavar": metavar, **extra}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_named(cls: type, name: str) -> dataclasses.Field:
    return cls.__dataclass_fields__[name]


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None if f.default is dataclasses.MISSING else f.default


def _hints(cls: type) -> dict[str, Any]:
    cache = cls.__dict__.get("_mg_hints")
    if cache is None:
        cache = typing.get_type_hints(cls)
        setattr(cls, "_mg_hints", cache)
    return cache


def _union_args(hint: Any) -> tuple:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def base_type(cls: type, name: str) -> type:
    """bool / int / float / str / list / tuple / dict for a field (Optional unwrapped)."""
    hint = next(a for a in _union_args(_hints(cls)[name]) if a is not _NONE)
    return typing.get_origin(hint) or hint


def is_optional(cls: type, name: str) -> bool:
    return _NONE in _union_args(_hints(cls)[name])


# ---------------------------------------------------------------- coercion

def parse_bool(value: Any) -> bool:
    """true/false, yes/no, on/off, 1/0 (any case) as a bool; ValueError otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        try:
            as_float = float(text)  # MLproject passes numbers as floats ("20.0")
        except ValueError:
            as_float = None
        if as_float is not None and as_float.is_integer():
            return int(as_float)
        raise ValueError(f"expected an integer, got {value!r}") from None


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None


def parse_pairs(value: Any) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a dict: a mapping (YAML), a list of ``KEY=VALUE`` strings (a repeated
    option, each of which may hold several pairs) or one string of pairs separated by commas (``optim=sgd,max_grad_norm=0.5``; a comma
    followed by the next ``KEY=`` separates pairs, so a value may hold other commas)."""
    if isinstance(value, dict):
        return {str(k).strip(): v for k, v in value.items()}
    if value is None or value == "":
        return {}
    items = ([part for v in value for part in (_PAIR_START.split(v) if isinstance(v, str) else [v])]
             if isinstance(value, (list, tuple)) else _PAIR_START.split(str(value)))
    out: dict[str, Any] = {}
    for item in items:
        if isinstance(item, dict):
            out.update(parse_pairs(item))
            continue
        key, sep, val = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {str(item)!r}")
        out[key.strip().replace("-", "_")] = val.strip()
    return out


def _split_list(value: Any, how: str | None) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v) != ""]
    if value is None:
        return []
    if how == "shell":
        return shlex.split(str(value))
    return [v.strip() for v in str(value).split(",") if v.strip()]


def coerce(cls: type, name: str, value: Any, check_choices: bool = False) -> Any:
    """A YAML value, a command-line / ``--set`` / MLproject / plugin string -> the field's type
    (ValueError naming what was expected). ``None`` or ``""`` is None for an Optional field.
    ``check_choices``: also refuse a value outside the field's choices (else validation does)."""
    f = field_named(cls, name)
    typ = base_type(cls, name)
    if typ in (list, tuple):
        out = _split_list(value, f.metadata.get("split"))
        return tuple(out) if typ is tuple else out
    if typ is dict:
        return parse_pairs(value)
    if (value is None or value == "") and is_optional(cls, name):
        return None
    if typ is bool:
        return parse_bool(value)
    if typ is int:
        out = _int(value)
    elif typ is float:
        out = _float(value)
    else:
        out = "" if value is None else str(value)
    choices = f.metadata.get("choices")
    if check_choices and choices and str(out) not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
    return out


def _coerce_kind(kind: Any, value: Any) -> Any:
    origin = typing.get_origin(kind) or kind
    if kind is Any:
        return value
    if origin is bool:
        return parse_bool(value)
    if origin is int:
        return _int(value)
    if origin is float:
        return _float(value)
    if isinstance(origin, type) and issubclass(origin, enum.Enum):
        allowed = [str(m.value) for m in origin]
        text = value.value if isinstance(value, enum.Enum) else str(value).strip()
        if text not in allowed:
            close = difflib.get_close_matches(text, allowed, n=3)
            raise ValueError(f"{text!r} is not a known value" + (f" (did you mean {', '.join(close)}?)" if close
                                                                 else f"; one of {', '.join(allowed)}"))
        return text
    if origin in (dict, list, tuple):
        loaded = value
        if isinstance(value, str):
            import yaml

            try:
                loaded = yaml.safe_load(value)
            except yaml.YAMLError:
                loaded = value
            if origin is not dict and not isinstance(loaded, list):
                loaded = _split_list(value, "comma")
        if not isinstance(loaded, dict if origin is dict else (list, tuple)):
            raise ValueError(f"expected {'a mapping' if origin is dict else 'a list'}, got {value!r}")
        return list(loaded) if origin is list else loaded
    if origin is str:
        return str(value)
    return value


def coerce_hint(hint: Any, value: Any) -> Any:
    """A value -> a type annotation of any dataclass (e.g. a field of TRL's ``SFTConfig``): Optional
    takes none/null, a Union tries its members (text last; an enum member makes the values strict)."""
    kinds = _union_args(hint)
    if _NONE in kinds and (value is None or str(value).strip().lower() in ("none", "null")):
        return None
    kinds = [k for k in kinds if k is not _NONE]
    has_enum = any(isinstance(typing.get_origin(k) or k, type) and issubclass(typing.get_origin(k) or k, enum.Enum)
                   for k in kinds)
    ordered = [k for k in kinds if k is not str] + ([] if has_enum else [k for k in kinds if k is str])
    first_error = None
    for kind in ordered:
        try:
            return _coerce_kind(kind, value)
        except ValueError as exc:
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return value


def did_you_mean(key: str, names) -> str:
    close = difflib.get_close_matches(key, list(names), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def unknown(key: str, names, what: str = "option") -> str:
    return f"unknown {what} {key!r}{did_you_mean(key, names)}"


def check_values(obj: Any) -> list[str]:
    """Problems of a built object: values outside a field's choices, numbers that are NaN or
    infinite, text too long to be a path or a name."""
    problems = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            problems.append(f"{f.name}={value!r} is not one of {', '.join(choices)}")
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{f.name} must be a finite number, got {value}")
        elif isinstance(value, str) and len(value) > MAX_TEXT:
            problems.append(f"{f.name} is {len(value)} characters long (at most {MAX_TEXT}): {value[:40]!r}...")
    return problems



def cli_flags(cls: type, f: dataclasses.Field) -> tuple[str, ...]:
    """The click declarations of a field (empty: the field has no CLI option)."""
    flags = f.metadata.get("flags")
    if flags is not None:
        return tuple(flags)
    dashed = f.name.replace("_", "-")
    return (f"--{dashed}/--no-{dashed}",) if base_type(cls, f.name) is bool else (f"--{dashed}",)


def option_label(cls: type, f: dataclasses.Field) -> str:
    """How a user names the field: its first CLI flag (``--max-new-tokens``), else its name."""
    flags = cli_flags(cls, f)
    return flags[0].split("/")[0] if flags else f.name


def help_text(cls: type, f: dataclasses.Field, typed: bool = True) -> str:
    """The field's help with its default (and, when the CLI takes text, its choices)."""
    text = f.metadata.get("help", "")
    choices = f.metadata.get("choices")
    if choices and not typed:
        text += f" [{'|'.join(choices)}]"
    default = default_of(f)
    if base_type(cls, f.name) is bool:
        return f"{text} (default: {'on' if default else 'off'})"
    if default not in (None, "", [], (), {}) and "default" not in text:
        text += f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})"
    return text


def plugin_key(f: dataclasses.Field) -> str | None:
    key = f.metadata.get("key", "")
    return f.name if key == "" else key
