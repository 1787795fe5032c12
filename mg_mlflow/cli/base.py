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


def print_kv(title: str, rows: list[tuple[str, object]]) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        if value not in (None, ""):
            table.add_row(key, str(value))
    console().print(table)
