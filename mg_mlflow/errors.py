"""User-facing errors: a message that says what is wrong and what to do, and a non-zero exit."""

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


class ConfigError(MGError):
    """Every problem found in a configuration, reported together (torchtune's ConfigError idea)."""

    def __init__(self, problems: list[str], source: str = "configuration"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in {source}:\n{lines}")


class DataError(MGError):
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
