"""Shared CLI pieces: error handling and the console. Options are generated from their dataclasses
by :mod:`mg_mlflow.options` (``click_options``, ``MlflowParamsCommand``)."""

from __future__ import annotations

import click

from mg_mlflow.errors import MGError
from mg_mlflow.options import MlflowParamsCommand, mlflow_params_to_args

__all__ = ["MGGroup", "MlflowParamsCommand", "console", "mlflow_params_to_args", "mlflow_params_to_set", "print_kv"]


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


def mlflow_params_to_set(args: list[str], cls: type) -> list[str]:
    """:func:`mg_mlflow.options.mlflow_params_to_args` for a training command (config fields only)."""
    return mlflow_params_to_args(args, config_class=cls)


def print_kv(title: str, rows: list[tuple[str, object]]) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        if value not in (None, ""):
            table.add_row(key, str(value))
    console().print(table)
