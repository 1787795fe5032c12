"""Merging the sources of a configuration (defaults < YAML < options < ``--set``), the MLflow
plugin's ``-C`` keys, and writing a configuration back out (argv, params, YAML)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mg_mlflow.errors import ConfigError, MGError
from mg_mlflow.options.fields import (base_type, cli_flags, coerce, default_of, help_text, option_label, plugin_key,
                                      unknown)

# ---------------------------------------------------------------- merging: defaults < YAML < options < --set

def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of option: value, or a ConfigError naming the file (and line)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: no such config file"], str(path))
    try:
        loaded = yaml.load(path.read_text(), Loader=_unique_keys_loader()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"], str(path)) from None
    if not isinstance(loaded, dict):
        raise ConfigError([f"{path}: expected a mapping of option: value"], str(path))
    return loaded


def _unique_keys_loader() -> type:
    """yaml's SafeLoader that refuses a key given twice in one mapping (SafeLoader keeps the last)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                self.flatten_mapping(node)
                seen: dict = {}
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=deep)
                    try:
                        first = seen.setdefault(key, key_node.start_mark.line + 1)
                    except TypeError:  # an unhashable key: SafeLoader's own error names it
                        continue
                    if first != key_node.start_mark.line + 1:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} given twice (first on line {first}); keep one",
                            key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


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
        if isinstance(value, (dict, list)) and base_type(cls, name) not in (dict, list, tuple):
            problems.append(f"{where}: expected a single value, got a {'mapping' if isinstance(value, dict) else 'list'}")
            continue
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
