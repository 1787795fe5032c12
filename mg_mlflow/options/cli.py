"""Click options and commands generated from option fields, and ``mlflow run -P`` translation."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import click

from mg_mlflow.options.fields import BOOL_WORDS, TRUE_WORDS, base_type, cli_flags, help_text

# ---------------------------------------------------------------- click options

class FieldOption(click.Option):
    """A click option generated from a dataclass field: ``source`` is (class, field name), ``group``
    the ``--help`` heading it is listed under."""

    def __init__(self, *args: Any, source: tuple[type, str] | None = None, group: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.source = source
        self.group = group


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
