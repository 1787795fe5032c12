"""Shared CLI pieces: error handling and the console. Options are generated from their dataclasses
by :mod:`mg_mlflow.options` (``click_options``, ``MlflowParamsCommand``)."""

from __future__ import annotations

import click

from mg_mlflow.errors import MGError
from mg_mlflow.options import MlflowParamsCommand, mlflow_params_to_args
from mg_mlflow.tracking.run import split_credentials

__all__ = ["MGGroup", "MlflowParamsCommand", "console", "mlflow_params_to_args", "mlflow_params_to_set", "print_kv"]


def console(stderr: bool = False):
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Pipes and CI logs get wide lines instead of 80-column wrapping that cuts ids and URIs.
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 200)


class MGGroup(click.Group):
    """A click group that turns MGError, and a tracking server's refusal of missing or wrong
    credentials, into a clear message and exit status 2 (no traceback), for every command."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MGError as err:
            _print_error(str(err))
            ctx.exit(err.exit_code)
        except Exception as exc:
            message = credentials_problem(exc)
            if message is None:
                raise
            _print_error(message)
            ctx.exit(MGError.exit_code)


def _print_error(text: str) -> None:
    out = console(stderr=True)
    out.print("error:", style="bold red", end=" ")
    out.print(text, markup=False, soft_wrap=True)


def credentials_problem(exc: BaseException) -> str | None:
    """What to do when ``exc`` is a tracking server's 401 (no or wrong credentials) or 403 (a user
    without the permission); None for any other error. MLflow's REST client raises either answer of
    its basic-auth server as an MlflowException whose error code maps back to the HTTP status."""
    import os
    import sys

    exceptions = sys.modules.get("mlflow.exceptions")  # loaded whenever an MlflowException exists
    if exceptions is None or not isinstance(exc, exceptions.MlflowException):
        return None
    uri = split_credentials(os.environ.get("MLFLOW_TRACKING_URI", ""))[0]  # never print a password
    if not uri.startswith(("http://", "https://")):  # only a tracking server asks for credentials
        return None
    status = exc.get_http_status_code()
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 401 and not user:
        return (f"the tracking server needs credentials: set MLFLOW_TRACKING_USERNAME and "
                f"MLFLOW_TRACKING_PASSWORD (server: {uri})")
    if status == 401:
        return (f"the tracking server ({uri}) refused the credentials of MLFLOW_TRACKING_USERNAME={user}: "
                "check MLFLOW_TRACKING_PASSWORD")
    if status == 403:
        return (f"the tracking server ({uri}) denied user {user or '(none)'} this operation: ask its admin "
                "for the permission (MLflow basic auth: READ, EDIT or MANAGE on the experiment or model)")
    return None


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
