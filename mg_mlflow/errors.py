"""User-facing errors: a message that says what is wrong and what to do, and a non-zero exit.

The subclasses of :class:`MGError` say what kind of problem it is, so that callers choose by class (the
MLflow deployments plugin maps each to an MLflow error code): :class:`NotFoundError`,
:class:`AlreadyExistsError`, :class:`InvalidInputError` and :class:`ServerError`.
"""

from __future__ import annotations


class MGError(Exception):
    """An error caused by the user's input or environment (not a bug).

    The CLI prints ``str(err)`` without a traceback and exits with ``exit_code``.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  hint: {hint}")


class NotFoundError(MGError):
    """What the user named (a deployment, say) does not exist."""


class AlreadyExistsError(MGError):
    """What the user asked for is taken: a deployment name that runs, a port in use, a start in progress."""


class InvalidInputError(MGError):
    """A value the user gave is wrong (an option, a config key, a file's content)."""


class ServerError(MGError):
    """A server Model Garden started failed: it could not start, exited, was not healthy in time, or
    survived SIGKILL. The message holds the last lines of its log."""


class ConfigError(InvalidInputError):
    """Every problem found in a configuration, reported together (torchtune's ConfigError idea)."""

    def __init__(self, problems: list[str], source: str = "configuration"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in {source}:\n{lines}")


class DataError(InvalidInputError):
    """Dataset problems, each formatted as ``file:line: what is wrong``."""

    def __init__(self, problems: list[str], source: str, total: int | None = None):
        self.problems = list(problems)
        shown = self.problems[:20]
        more = len(self.problems) - len(shown)
        lines = "\n".join(f"  {p}" for p in shown)
        if more > 0:
            lines += f"\n  ... and {more} more"
        head = f"dataset {source}: {len(self.problems)} bad record(s)"
        if total is not None:
            head += f" out of {total}"
        super().__init__(f"{head}:\n{lines}", hint="fix the records above, then run "
                         "`model-garden data validate FILE` to check again")


class MissingExtra(MGError, ImportError):
    """An optional dependency is missing; names the extra that installs it."""

    def __init__(self, package: str, extra: str, why: str = ""):
        msg = f"{package} is not installed{(' (' + why + ')') if why else ''}"
        super().__init__(msg, hint=f"pip install 'model-garden-mlflow[{extra}]'")
