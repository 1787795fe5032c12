"""Deployment options generated from :class:`~mg_mlflow.deploy.plan.DeployOptions` (declared once).

- ``cli_options()``: one click option per field for ``model-garden deploy`` and ``deployments update``
  (every option defaults to None = "not given", so an update keeps what it is not told to change);
- ``plugin_keys()`` / ``from_plugin()``: the MLflow plugin's ``-C key=value`` keys, their help and typing;
- ``from_cli()``: click values -> DeployOptions keyword arguments.
"""

from __future__ import annotations

import dataclasses
import shlex
import types
import typing
from typing import Any

from mg_mlflow.errors import MGError


def _fields() -> list[dataclasses.Field]:
    from mg_mlflow.deploy.plan import DeployOptions

    return list(dataclasses.fields(DeployOptions))


def base_type(f: dataclasses.Field) -> type:
    """int / float / str / bool / list for a field (Optional unwrapped)."""
    from mg_mlflow.deploy.plan import DeployOptions

    hint = typing.get_type_hints(DeployOptions)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def cli_flags(f: dataclasses.Field) -> tuple[str, ...]:
    """The click declarations of a field (empty: the field has no CLI option)."""
    flags = f.metadata.get("flags")
    if flags is not None:
        return tuple(flags)
    dashed = f.name.replace("_", "-")
    return (f"--{dashed}/--no-{dashed}",) if base_type(f) is bool else (f"--{dashed}",)


def plugin_key(f: dataclasses.Field) -> str | None:
    key = f.metadata.get("key", "")
    return f.name if key == "" else key


def _help(f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "")
    default = default_of(f)
    if base_type(f) is bool:
        return f"{text} (default: {'on' if default else 'off'})"
    if default not in (None, "", []) and "default" not in text:
        text += f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})"
    return text


def coerce(f: dataclasses.Field, value: Any) -> Any:
    """A plugin / YAML value -> the field's type (ValueError naming what was expected)."""
    from mg_mlflow.config import parse_bool

    typ = base_type(f)
    if typ is list:
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        if f.metadata.get("split") == "shell":
            return shlex.split(str(value))
        return [v.strip() for v in str(value).split(",") if v.strip()]
    if typ is bool:
        return parse_bool(value)
    if value is None or value == "":
        return None
    choices = f.metadata.get("choices")
    if choices and str(value) not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
    if typ in (int, float):
        try:
            return typ(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected {'an integer' if typ is int else 'a number'}, got {value!r}") from None
    return str(value)


def plugin_keys() -> dict[str, str]:
    """``-C`` key -> help, for every field that has a plugin key."""
    return {plugin_key(f): _help(f) for f in _fields() if plugin_key(f)}


def from_plugin(config: dict | None, name: str | None = None) -> dict[str, Any]:
    """``-C key=value`` strings -> DeployOptions keyword arguments; every problem reported at once."""
    import difflib

    by_key = {plugin_key(f): f for f in _fields() if plugin_key(f)}
    out: dict[str, Any] = {"name": name} if name else {}
    problems = []
    for key, value in dict(config or {}).items():
        f = by_key.get(key)
        if f is None:
            close = difflib.get_close_matches(key, list(by_key), n=2)
            problems.append(f"unknown config key {key!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
            continue
        try:
            typed = coerce(f, value)
        except ValueError as exc:
            problems.append(f"config {key}={value!r}: {exc}")
            continue
        if typed is not None:
            out[f.name] = typed
    if problems:
        raise MGError("; ".join(problems), hint="known keys: " + ", ".join(sorted(by_key))
                      + " (mlflow deployments help -t vllm)")
    return out


def cli_options(func=None, *, skip: tuple[str, ...] = (), helps: dict[str, str] | None = None):
    """Decorator: one click option per DeployOptions field that has CLI flags (values default to None).
    ``helps`` replaces the help of some fields (e.g. what "not given" means for an update)."""
    import click

    if func is None:
        return lambda f: cli_options(f, skip=skip, helps=helps)
    for f in reversed(_fields()):
        flags = cli_flags(f)
        if not flags or f.name in skip:
            continue
        typ = base_type(f)
        kwargs: dict[str, Any] = {"default": None, "help": (helps or {}).get(f.name) or _help(f)}
        if f.metadata.get("envvar"):
            kwargs["envvar"] = f.metadata["envvar"]
            kwargs["show_envvar"] = True
        if typ is list:
            kwargs.update(multiple=True, default=())
        elif f.metadata.get("choices"):
            kwargs["type"] = click.Choice(list(f.metadata["choices"]))
        elif typ in (int, float):
            kwargs["type"] = click.INT if typ is int else click.FLOAT
        func = click.option(*flags, f.name, **kwargs)(func)
    return func


def from_cli(values: dict[str, Any]) -> dict[str, Any]:
    """Click values (None / empty = not given) -> DeployOptions keyword arguments that were given."""
    names = {f.name for f in _fields()}
    out = {}
    for key, value in values.items():
        if key not in names or value is None or (isinstance(value, tuple) and not value):
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    return out
