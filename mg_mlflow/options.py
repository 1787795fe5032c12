"""Options declared once, as dataclass fields, and everything generated from them.

A field declared with :func:`option` (help, choices, group, flags, plugin key, envvar, list
splitting) is at the same time a click option (:func:`click_options`), a YAML key and a
``--set key=value`` override (:func:`build_config`: defaults < YAML < options < ``--set``, validated
once), an MLflow plugin ``-C key=value`` key (:func:`plugin_keys`, :func:`from_plugin`) and an
``mlflow run -P key=value`` extra parameter (:func:`mlflow_params_to_args`). Every string from any of
these sources is turned into the field's type by :func:`coerce`; nothing else in the package does.

This is a shared helper below every layer: it imports click and yaml, nothing heavy.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
import shlex
import types
import typing
from pathlib import Path
from typing import Any, Callable

import click

from mg_mlflow.errors import ConfigError, MGError

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


def fields(cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


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
    option) or one string of pairs separated by commas (``optim=sgd,max_grad_norm=0.5``; a comma
    followed by the next ``KEY=`` separates pairs, so a value may hold other commas)."""
    if isinstance(value, dict):
        return {str(k).strip(): v for k, v in value.items()}
    if value is None or value == "":
        return {}
    items = list(value) if isinstance(value, (list, tuple)) else _PAIR_START.split(str(value))
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


# ---------------------------------------------------------------- merging: defaults < YAML < options < --set

def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of option: value, or a ConfigError naming the file (and line)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: no such config file"], str(path))
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"], str(path)) from None
    if not isinstance(loaded, dict):
        raise ConfigError([f"{path}: expected a mapping of option: value"], str(path))
    return loaded


def _layer_key(cls: type, key: str) -> tuple[str, str]:
    """(field, sub-key): ``trainer_args.optim`` addresses one key of a mapping field."""
    key = str(key).strip().replace("-", "_")
    names = cls.__dataclass_fields__
    if key not in names and "." in key:
        head, sub = key.split(".", 1)
        if head in names and base_type(cls, head) is dict:
            return head, sub
    return key, ""


def build_config(cls: type, config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                 set_args: list[str] | tuple[str, ...] = ()) -> Any:
    """An instance of ``cls`` from defaults < YAML file < options (None = not given) < ``--set
    key=value``. Every unknown key (with did-you-mean), every value that is not of its field's type and
    every problem ``cls.validate()`` finds are raised together as one ConfigError. Mapping fields merge
    key by key across the layers."""
    names = list(cls.__dataclass_fields__)
    problems: list[str] = []
    layer: list[tuple[str, str, Any, str]] = []  # (field, sub-key, value, where)
    if config_file:
        path = Path(config_file)
        for key, value in load_yaml(path).items():
            name, sub = _layer_key(cls, key)
            if name not in names:
                problems.append(f"{path}: {unknown(str(key), names)}")
            else:
                layer.append((name, sub, value, f"{path}: {key}"))
    for key, value in (overrides or {}).items():
        if value is None or (isinstance(value, tuple) and not value):
            continue
        name, sub = _layer_key(cls, key)
        if name not in names:
            problems.append(unknown(key, names))
        else:
            layer.append((name, sub, value, f"option {key}"))
    for item in set_args:
        if "=" not in item:
            problems.append(f"--set {item!r}: expected key=value")
            continue
        key, value = item.split("=", 1)
        name, sub = _layer_key(cls, key)
        if name not in names:
            problems.append(f"--set {unknown(key.strip().replace('-', '_'), names)}")
        else:
            layer.append((name, sub, value, f"--set {key.strip()}"))
    raw: dict[str, tuple[Any, str]] = {}
    for name, sub, value, where in layer:
        if base_type(cls, name) is dict:  # merged key by key, each layer's pairs coerced where given
            try:
                pairs = coerce(cls, name, {sub: value} if sub else value)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            raw[name] = ({**raw.get(name, ({}, where))[0], **pairs}, where)
        else:
            raw[name] = (value, where)
    kwargs = {}
    for name, (value, where) in raw.items():
        try:
            kwargs[name] = coerce(cls, name, value)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        raise ConfigError(problems + [f"{n} is required" for n in missing], str(config_file or "the options"))
    obj = cls(**kwargs)
    try:
        if hasattr(obj, "validate"):
            obj.validate()
    except ConfigError as err:
        if not problems:
            raise
        problems += err.problems
    if problems:
        raise ConfigError(problems, str(config_file or "the options"))
    return obj


def from_values(cls: type, values: dict[str, Any], source: str = "the options") -> dict[str, Any]:
    """Keyword arguments of ``cls`` from values that were given (None / empty = not given, so the
    field keeps its default); keys that are not fields are ignored, bad values raise one ConfigError."""
    names = cls.__dataclass_fields__
    out, problems = {}, []
    for key, value in values.items():
        if key not in names or value is None or (isinstance(value, (tuple, list)) and not value):
            continue
        try:
            out[key] = coerce(cls, key, value)
        except ValueError as exc:
            problems.append(f"{option_label(cls, names[key])}: {exc}")
    if problems:
        raise ConfigError(problems, source)
    return out


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def to_yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def to_argv(obj: Any) -> list[str]:
    """The CLI options that rebuild ``obj`` from its class's defaults (every field with flags that
    differs from its default): what a command run elsewhere (a queued job) is given."""
    cls = type(obj)
    argv: list[str] = []
    for f in dataclasses.fields(cls):
        flags = cli_flags(cls, f)
        value = getattr(obj, f.name)
        if not flags or value == default_of(f):
            continue
        on, _, off = flags[0].partition("/")
        typ = base_type(cls, f.name)
        if typ is bool:
            argv += [on] if value else [off] if off else []
        elif typ in (list, tuple):
            argv += [t for v in value for t in (on, str(v))]
        elif typ is dict:
            argv += [t for k, v in value.items() for t in (on, f"{k}={v}")]
        else:
            argv += [on, str(value)]
    return argv


def flat_params(values: dict[str, Any]) -> dict[str, Any]:
    """A config dict with each mapping field spread into ``field.key`` entries (MLflow params: one
    per key, a name no flat field has); an empty mapping adds nothing."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------- MLflow deployments plugin (-C key=value)

def plugin_key(f: dataclasses.Field) -> str | None:
    key = f.metadata.get("key", "")
    return f.name if key == "" else key


def plugin_keys(cls: type) -> dict[str, str]:
    """``-C`` key -> help, for every field that has a plugin key."""
    return {plugin_key(f): help_text(cls, f, typed=True) for f in dataclasses.fields(cls) if plugin_key(f)}


def from_plugin(cls: type, config: dict | None, help_command: str = "") -> dict[str, Any]:
    """``-C key=value`` strings -> keyword arguments of ``cls``; every problem reported at once (MGError)."""
    by_key = {plugin_key(f): f for f in dataclasses.fields(cls) if plugin_key(f)}
    out: dict[str, Any] = {}
    problems = []
    for key, value in dict(config or {}).items():
        f = by_key.get(key)
        if f is None:
            problems.append(unknown(key, by_key, "config key"))
            continue
        try:
            typed = coerce(cls, f.name, value, check_choices=True)
        except ValueError as exc:
            problems.append(f"config {key}={value!r}: {exc}")
            continue
        if typed is not None:
            out[f.name] = typed
    if problems:
        raise MGError("; ".join(problems), hint="known keys: " + ", ".join(sorted(by_key))
                      + (f" ({help_command})" if help_command else ""))
    return out


# ---------------------------------------------------------------- click options

class FieldOption(click.Option):
    """A click option generated from a dataclass field: ``source`` is (class, field name), ``group``
    the ``--help`` heading it is listed under."""

    def __init__(self, *args: Any, source: tuple[type, str] | None = None, group: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.source = source
        self.group = group


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


def _none_if_empty(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    return value or None


def click_options(cls: type, *, skip: tuple[str, ...] = (), helps: dict[str, str] | None = None,
                  typed: bool = True) -> Callable:
    """Decorator: one click option per field of ``cls`` that has CLI flags. Every value defaults to
    None ("not given": the YAML file or the field's default decides); a list or mapping field is a
    repeatable option. ``typed``: click checks ints, floats and choices itself; otherwise every
    value arrives as text and :func:`build_config` / :func:`from_values` coerce it, so that every
    problem is reported at once and ``mlflow run``'s ``20.0`` reads as 20. ``helps`` replaces the
    help of some fields (e.g. what "not given" means for an update)."""
    def decorate(func: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            flags = cli_flags(cls, f)
            if not flags or f.name in skip:
                continue
            typ = base_type(cls, f.name)
            meta = f.metadata
            kwargs: dict[str, Any] = {"default": None, "help": (helps or {}).get(f.name) or help_text(cls, f, typed),
                                      "cls": FieldOption, "source": (cls, f.name), "group": meta.get("group")}
            if meta.get("envvar"):
                kwargs.update(envvar=meta["envvar"], show_envvar=True)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                kwargs["required"] = True
            if typ is bool:
                if "/" not in flags[0]:
                    kwargs["is_flag"] = True
            elif typ in (list, tuple, dict):
                kwargs.update(multiple=True, callback=_none_if_empty)
                if meta.get("metavar") or typ is dict:
                    kwargs["metavar"] = meta.get("metavar") or "KEY=VALUE"
            elif typed and meta.get("choices"):
                kwargs["type"] = click.Choice(list(meta["choices"]))
            elif typed and typ in (int, float):
                kwargs["type"] = click.INT if typ is int else click.FLOAT
            elif not typed:
                kwargs["metavar"] = meta.get("metavar") or f.name.upper()
            func = click.option(*flags, f.name, **kwargs)(func)
        return func

    return decorate


def generated_params(command: click.Command, cls: type) -> dict[str, click.Option]:
    """field name -> the command's option generated from that field of ``cls``."""
    return {p.source[1]: p for p in command.params
            if isinstance(p, FieldOption) and p.source and p.source[0] is cls}


class GroupedCommand(click.Command):
    """A click command whose ``--help`` lists options under their fields' group headings (options of
    the command itself first, under "Options")."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: dict[str, list[tuple[str, str]]] = {"Options": []}
        for param in self.get_params(ctx):
            record = None if isinstance(param, click.Argument) else param.get_help_record(ctx)
            if record is not None:
                groups.setdefault(getattr(param, "group", None) or "Options", []).append(record)
        for title, rows in groups.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


# ---------------------------------------------------------------- mlflow run -P key=value

def mlflow_params_to_args(args: list[str], command: click.Command | None = None, config_class: type | None = None,
                          skip: tuple[str, ...] = ()) -> list[str]:
    """The one translation of ``mlflow run -P key=value`` for every MLproject entry point.

    MLflow passes a parameter the entry point does not declare as ``--key value`` (its "extra
    parameters", logged only when given), so an entry point declares only what MLflow must check
    (a model URI) and a parameter the user did not give is simply absent: it never overrides a recipe.
    This turns each such pair into what the click command takes:

    - a field of ``config_class`` (not in ``skip``) -> ``--set key=value`` (outranks the recipe); a
      bool field only with a true/false word (``--carbon false``), other fields only when spelled
      with ``_`` (``--lora_r 8``), so ``--max-steps 3`` passes unchanged;
    - one of ``command``'s own options spelled with ``_`` -> its ``--dashed-name`` (``--tasks_dir x``
      -> ``--tasks-dir x``); a flag with a true/false word -> the flag or its ``--no-`` form.
    """
    names_of = set(config_class.__dataclass_fields__) if config_class else set()
    flags = {}  # "--name" -> (on, off) for boolean flags of the command
    names = set()
    for param in command.params if command else ():
        if isinstance(param, click.Option):
            names.update(param.opts)
            if param.is_flag:
                flags.update({opt: (param.opts[0], (param.secondary_opts or [None])[0]) for opt in param.opts})
    out, i = [], 0
    while i < len(args):
        token = args[i]
        name = token[2:] if token.startswith("--") and "=" not in token else ""
        value = args[i + 1] if name and i + 1 < len(args) else None
        word = value.lower() if value is not None and value.lower() in BOOL_WORDS else None
        dashed = "--" + name.replace("_", "-")
        is_field = name in names_of and name not in skip
        if value is None:
            out.append(token)
            i += 1
        elif is_field and (word if base_type(config_class, name) is bool else "_" in name):
            out += ["--set", f"{name}={value}"]
            i += 2
        elif dashed in flags and word:
            on, off = flags[dashed]
            if word in TRUE_WORDS:
                out.append(on)
            elif off:
                out.append(off)
            i += 2
        elif "_" in name and dashed in names:
            out += [dashed, value]
            i += 2
        else:
            out.append(token)
            i += 1
    return out


class MlflowParamsCommand(GroupedCommand):
    """A click command that also takes ``mlflow run``'s extra parameters (``--key value``), translated
    by :func:`mlflow_params_to_args` with the class's ``config_class`` and ``config_skip``."""

    config_class: type | None = None
    config_skip: tuple[str, ...] = ()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, mlflow_params_to_args(list(args), self, self.config_class, self.config_skip))


def recipe_options(example_yaml: str, set_help: str = "override any option, repeatable: --set lora_r=8 "
                                                     "--set learning_rate=1e-4") -> Callable:
    """``--config FILE`` (the YAML layer) and ``--set KEY=VALUE`` (the last layer) of :func:`build_config`."""
    def decorate(func: Callable) -> Callable:
        func = click.option("--set", "set_args", multiple=True, metavar="KEY=VALUE", help=set_help)(func)
        return click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                            help=f"YAML recipe whose keys are the option names below (e.g. {example_yaml})"
                            if example_yaml.endswith(".yaml") else example_yaml)(func)
    return decorate
