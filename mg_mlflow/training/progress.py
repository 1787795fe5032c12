"""Live training progress in the terminal: a rich progress bar with the latest loss (and, for grpo, the total
reward next to it)."""

from __future__ import annotations

import sys

from mg_mlflow import metric_names as mn


class TrainProgress:
    """Context manager; ``advance`` after each step, ``update`` with the latest logged metrics."""

    def __init__(self, description: str = "training", enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.description = description
        self._progress = None
        self._task = None
        self._last = ""

    def __enter__(self):
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                      TextColumn("{task.fields[metrics]}"), transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=None, metrics="")
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def advance(self, step: int, total: int | None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, total=total or None)

    def update(self, step: int, total: int | None, metrics: dict[str, float]) -> None:
        parts = []
        for key in (mn.LOSS, mn.REWARD, mn.EVAL_LOSS, mn.LEARNING_RATE, mn.TOKENS_PER_SECOND):
            if key in metrics:
                value = metrics[key]
                label = mn.old_name(key)  # the transformers name: loss, eval_loss, learning_rate
                parts.append(f"{label}={value:.3g}" if key != mn.TOKENS_PER_SECOND else f"tok/s={value:,.0f}")
        self._last = " ".join(parts) or self._last
        if self._progress is not None:
            self._progress.update(self._task, completed=step, total=total or None, metrics=self._last)
        elif mn.LOSS in metrics or mn.EVAL_LOSS in metrics:
            print(f"step {step}/{total}: {self._last}", file=sys.stderr, flush=True)
