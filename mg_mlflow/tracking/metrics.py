"""Per-step training metrics to MLflow, at the trainer's global step, with live loss in the terminal.

Names are the ones transformers users know, with the prefixes of its W&B integration
(:func:`mg_mlflow.metric_names.trainer_metric`): ``train/loss``, ``train/learning_rate``,
``train/grad_norm``, ``eval/loss``, plus ``train/tokens_per_second`` (``epoch`` and the Trainer's timings
under ``system/trainer/``). This callback is the
one owner of metric logging during training (transformers' own MLflowCallback is switched off with
``report_to="none"``); its ``history`` is keyed by those MLflow names.

Points go through a local spool (:mod:`mg_mlflow.tracking.spool`): appended to
``<output_dir>/mlflow_spool_<run id>.jsonl`` first, then sent in the background with retries, so a
tracking server that is down for a while costs no point and never stalls a step.

On a GPU the per-step ``loss`` and ``learning_rate`` arrive in batches from
:class:`mg_mlflow.training.step_stats.DeferredStepStats` (read from the device every N steps, so no step
waits for it) through :meth:`MLflowMetricsCallback.on_steps`; the Trainer's own log then brings only
``grad_norm`` and the evaluation and summary figures.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

from mg_mlflow import metric_names as mn
from mg_mlflow.tracking.spool import MetricSpool, spool_file

# TRL-only statistics (and their eval_ twins): kept out so every modality logs the same names
SKIP = {"total_flos", "num_tokens", "mean_token_accuracy", "entropy",
        "eval_num_tokens", "eval_mean_token_accuracy", "eval_entropy"}


class MLflowMetricsCallback(TrainerCallback):
    """Log every ``on_log`` dict as MLflow metrics and keep the history for plots and tags."""

    DEFERRED = ("loss", "learning_rate", "epoch")  # from on_steps when deferred (no token count is logged then)

    def __init__(self, progress: Any | None = None, logging_steps: int = 1):
        self.deferred = False  # set by DeferredStepStats' owner: per-step points come through on_steps
        self.logging_steps = logging_steps
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.progress = progress
        self._last_tokens: float | None = None
        self._last_time: float | None = None
        self.total_tokens = 0.0
        self._step_ends: list[float] = []
        self.logged_through = -1  # a resumed run: steps up to here are already in MLflow
        self.spool = None  # opened at train begin, inside the run
        self._max_steps = 0

    def continue_from(self, earlier) -> None:
        """A resumed run: keep the earlier segment's history, log no step twice."""
        self.history = {k: list(v) for k, v in earlier.history.items()}
        self.logged_through = earlier.logged_through

    def _metrics_from(self, logs: dict[str, Any]) -> dict[str, float]:
        out = {}
        for key, value in logs.items():
            if key in SKIP or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            out[key] = float(value)
        tokens = logs.get("num_input_tokens_seen")
        now = time.perf_counter()
        if tokens is not None:
            self.total_tokens = float(tokens)
            if self._last_tokens is not None and now > self._last_time and tokens > self._last_tokens:
                out["tokens_per_second"] = (tokens - self._last_tokens) / (now - self._last_time)
            self._last_tokens, self._last_time = float(tokens), now
        return out

    def on_train_begin(self, args, state, control, **kwargs):
        import mlflow

        self._last_time = time.perf_counter()
        self._last_tokens = 0.0
        self._max_steps = state.max_steps
        run = mlflow.active_run()
        if run is not None and self.spool is None:
            self.spool = MetricSpool(spool_file(args.output_dir, run.info.run_id), run.info.run_id)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        if self.deferred:  # these come per step through on_steps; the Trainer's are K-step averages
            for key in self.DEFERRED:
                logs.pop(key, None)
        self._record(int(state.global_step), self._metrics_from(logs))

    def on_steps(self, points: list[tuple[int, dict]], total_tokens: float, window_tokens: float,
                 seconds: float) -> None:
        """A batch of per-step points from DeferredStepStats; ``tokens_per_second`` over the batch."""
        self.total_tokens = total_tokens
        chosen = [(step, m) for step, m in points
                  if step == 1 or step % self.logging_steps == 0 or step == self._max_steps]
        if chosen and seconds > 0 and window_tokens > 0:  # the window's throughput on its last point
            chosen[-1] = (chosen[-1][0], {**chosen[-1][1], "tokens_per_second": window_tokens / seconds})
        for step, metrics in chosen:
            self._record(step, metrics)

    def _record(self, step: int, metrics: dict[str, float]) -> None:
        import mlflow

        # a NaN/inf point is logged as what it is (MLflow stores NaN and inf); the divergence guard
        # (mg_mlflow.training.divergence) fails the run
        if not metrics:
            return
        metrics = {mn.trainer_metric(key): value for key, value in metrics.items()}
        if step <= self.logged_through and mn.EVAL_LOSS not in metrics:
            return  # recomputed after a resume: the first segment's point is kept
        for key, value in metrics.items():
            self.history.setdefault(key, []).append((step, value))
        # spooled: a slow or absent store (sqlite on a busy disk, a server down) never stalls a step;
        # the run context flushes the spool before the run ends, so no point is lost.
        if self.spool is not None:
            self.spool.add(metrics, step)
        else:
            mlflow.log_metrics(metrics, step=step, synchronous=False)
        if self.progress is not None:
            self.progress.update(step, self._max_steps, metrics)

    def on_step_end(self, args, state, control, **kwargs):
        self._step_ends.append(time.perf_counter())
        if self.progress is not None:
            self.progress.advance(int(state.global_step), state.max_steps)

    def step_time_median(self, skip: int = 3) -> float | None:
        """Median wall time between optimizer steps, after ``skip`` warm-up steps."""
        ends = self._step_ends[skip:]
        if len(ends) < 3:
            return None
        import statistics

        return statistics.median(b - a for a, b in zip(ends, ends[1:]))

    def last(self, key: str) -> float | None:
        points = self.history.get(key)
        return points[-1][1] if points else None

    def first(self, key: str) -> float | None:
        points = self.history.get(key)
        return points[0][1] if points else None
