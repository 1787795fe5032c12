"""Shared CLI pieces: error handling, options generated from config dataclasses, the console."""

from __future__ import annotations

import dataclasses
import typing

import click

from mg_mlflow.errors import MGError


def console(stderr: bool = False):
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Pipes and CI logs get wide lines instead of 80-column wrapping that cuts ids and URIs.
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 200)


class MGGroup(click.Group):
    """A click group that turns MGError into a clear message and a non-zero exit (no traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MGError as err:
            out = console(stderr=True)
            out.print("error:", style="bold red", end=" ")
            out.print(str(err), markup=False, soft_wrap=True)
            ctx.exit(err.exit_code)


def config_options(cls: type, skip: tuple[str, ...] = ()):
    """Decorator adding one ``--field-name`` option per dataclass field (help and choices from metadata).

    Values arrive as strings (or None when not given) and are coerced and validated by
    :func:`mg_mlflow.config.build_config`, so the CLI, YAML and MLproject share one set of rules.
    """
    from mg_mlflow.config import RENAMED

    hints = typing.get_type_hints(cls)

    def decorate(func):
        for old, (typ, new, _) in RENAMED.items():  # deprecated names: hidden, mapped by build_config
            if new in hints and typ is bool:
                func = click.option(f"--{old}/--no-{old}", old, default=None, hidden=True)(func)
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip:
                continue
            flag = "--" + f.name.replace("_", "-")
            help_text = f.metadata.get("help", "")
            choices = f.metadata.get("choices")
            if choices:
                help_text += f" [{'|'.join(choices)}]"
            default = f.default if f.default is not dataclasses.MISSING else None
            if hints[f.name] is bool:
                func = click.option(f"{flag}/--no-{f.name.replace('_', '-')}", f.name, default=None,
                                    help=f"{help_text} (default: {'on' if default else 'off'})")(func)
            else:
                shown = "" if default in ("", None) else f" (default: {default})"
                func = click.option(flag, f.name, default=None, metavar=f.name.upper(),
                                    help=help_text + shown)(func)
        return func

    return decorate


BOOL_WORDS = {"1", "0", "true", "false", "yes", "no", "on", "off"}


def mlflow_params_to_args(args: list[str], command: click.Command | None = None, config_class: type | None = None,
                          skip: tuple[str, ...] = ()) -> list[str]:
    """The one translation of ``mlflow run -P key=value`` for every MLproject entry point.

    MLflow passes a parameter the entry point does not declare as ``--key value`` (its "extra
    parameters", logged only when given), so an entry point declares only what MLflow must check
    (a model URI) and a parameter the user did not give is simply absent: it never overrides a recipe.
    This turns each such pair into what the click command takes:

    - a field of ``config_class`` (not in ``skip``) -> ``--set key=value`` (outranks the recipe); a
      bool field only with a true/false word (``--carbon false``), other fields only when spelled
      with ``_`` (``--lora_r 8``), so ``--packing`` and ``--max-steps 3`` pass unchanged;
    - one of ``command``'s own options spelled with ``_`` -> its ``--dashed-name`` (``--tasks_dir x``
      -> ``--tasks-dir x``); a flag with a true/false word -> the flag or its ``--no-`` form.
    """
    hints = {}
    if config_class:
        from mg_mlflow.config import RENAMED  # old names (packing) still reach the config, which maps them

        hints = {**{old: typ for old, (typ, _new, _map) in RENAMED.items()}, **typing.get_type_hints(config_class)}
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
        if value is None:
            out.append(token)
            i += 1
        elif name in hints and name not in skip and (word if hints[name] is bool else "_" in name):
            out += ["--set", f"{name}={value}"]
            i += 2
        elif dashed in flags and word:
            on, off = flags[dashed]
            if word in ("1", "true", "yes", "on"):
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


def mlflow_params_to_set(args: list[str], cls: type) -> list[str]:
    """:func:`mlflow_params_to_args` for a training command (config fields only)."""
    return mlflow_params_to_args(args, config_class=cls)


class MlflowParamsCommand(click.Command):
    """A click command that also takes ``mlflow run``'s extra parameters (``--key value``), translated
    by :func:`mlflow_params_to_args` with the class's ``config_class`` and ``config_skip``."""

    config_class: type | None = None
    config_skip: tuple[str, ...] = ()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, mlflow_params_to_args(list(args), self, self.config_class, self.config_skip))


def print_kv(title: str, rows: list[tuple[str, object]]) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        if value not in (None, ""):
            table.add_row(key, str(value))
    console().print(table)
