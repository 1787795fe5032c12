"""One sweep trial: a nested MLflow child run, a full training run inside it, and its ending.

The child is created with ``MlflowClient.create_run`` (tag ``mlflow.parentRunId``) and handed to the
training recipe through ``MLFLOW_RUN_ID``: its run context attaches and ends it FINISHED/FAILED/KILLED.
A pruned trial stops training at the evaluation where Optuna's pruner said so, keeps the record
(losses, carbon) and ends KILLED with ``mg.trial_state=PRUNED``: "stopped on purpose before the end",
which the UI shows apart from FINISHED (complete) and FAILED (an error). A diverged trial (the
training's error, or a NaN objective) is FAILED too, so it is never the sweep's best.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mg_mlflow import metric_names as mn
from mg_mlflow.config import build_config
from mg_mlflow.env import scoped_env
from mg_mlflow.experiment.space import suggest, trial_name
from mg_mlflow.training.recipe import train


@dataclass
class Outcome:
    number: int
    state: str                     # COMPLETE | PRUNED | FAIL | INTERRUPTED
    run_id: str
    name: str
    params: dict[str, Any]
    value: float | None = None
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def emissions_kg(self) -> float:
        return float(mn.carbon_value(self.metrics, mn.TOTAL_EMISSIONS_KG, 0.0))

    @property
    def energy_kwh(self) -> float:
        return float(mn.carbon_value(self.metrics, mn.TOTAL_ENERGY_KWH, 0.0))


def train_function(modality: str):
    """``fn(cfg, callbacks)`` training into the active MLFLOW_RUN_ID through the one training path
    (the config class carries the modality; extra callbacks prune)."""
    return lambda cfg, callbacks: train(cfg, show_progress=False, callbacks=callbacks)


@contextmanager
def attached(run_id: str):
    """``MLFLOW_RUN_ID`` pointing at the child while the block runs (restored afterwards)."""
    with scoped_env(MLFLOW_RUN_ID=run_id):
        yield


def _end(client, run_id: str, status: str, tags: dict[str, str]) -> None:
    """Tags, then the status (only when the recipe did not already end it this way)."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])
    if client.get_run(run_id).info.status != status:
        client.set_terminated(run_id, status)


def run_trial(ctx, trial) -> Outcome:
    """Suggest params, train them in a child run and end the child; the caller tells Optuna
    (``outcome.state``). ``ctx`` is the sweep."""
    client = ctx.client
    params = suggest(trial, ctx.dims)
    name = trial_name(trial.number, params)
    tags = {"mlflow.parentRunId": ctx.parent_id, "mg.run_kind": "sweep_trial", "mg.sweep.trial": str(trial.number),
            "mg.sweep.run_id": ctx.parent_id, "mg.sweep.params": json.dumps(params),
            "mg.sweep.worker_pid": str(os.getpid())}
    child = client.create_run(ctx.experiment_id, run_name=name, tags=tags).info.run_id
    trial.set_user_attr("run_id", child)
    outcome = Outcome(trial.number, "FAIL", child, name, params)
    from mg_mlflow.experiment.pruning import PruningCallback

    pruning = PruningCallback(trial) if ctx.prune else None
    try:
        options = {**ctx.options, **params,
                   "run_name": name, "register_as": ctx.trial_register_as}
        if options.get("output_dir"):  # one folder per trial, never one overwriting another
            options["output_dir"] = f"{options['output_dir'].rstrip('/')}/trial-{trial.number}"
        cfg = build_config(ctx.config_cls, ctx.spec.config_file or None, options, ctx.spec.set_args)
        with attached(child):
            trained = ctx.train(cfg, [pruning] if pruning else [])
        trial.set_user_attr("model_dir", str(trained.model_dir))
    except KeyboardInterrupt:
        outcome.state = "INTERRUPTED"
        trial.set_user_attr("interrupted", True)  # Optuna records it FAIL; a resume runs it again
        _end(client, child, "KILLED", {"mg.trial_state": "INTERRUPTED",
                                        "mg.error": "interrupted by the user (Ctrl-C)"})
        raise
    except Exception as exc:  # noqa: BLE001 - a failed trial ends alone; the sweep goes on
        outcome.error = f"{type(exc).__name__}: {exc}"
        trial.set_user_attr("error", outcome.error[:2000])
        outcome.metrics = dict(client.get_run(child).data.metrics)
        _remember(trial, ctx, outcome)
        _end(client, child, "FAILED", {"mg.trial_state": "FAIL", "mg.error": outcome.error})
        return outcome
    outcome.metrics = dict(client.get_run(child).data.metrics)
    _remember(trial, ctx, outcome)
    if pruning is not None and pruning.pruned_at is not None:
        outcome.state = "PRUNED"
        outcome.value = pruning.reported[-1][1]
        _end(client, child, "KILLED", {"mg.trial_state": "PRUNED", "mg.sweep.pruned_at_step": str(pruning.pruned_at),
                                        "mg.sweep.pruned_reason": f"{ctx.spec.pruner} pruner: {mn.EVAL_LOSS} "
                                        f"{outcome.value:.4g} at step {pruning.pruned_at} was worse than the other trials'"})
        return outcome
    value = mn.value(outcome.metrics, ctx.spec.metric)
    if value is not None and not math.isfinite(value):  # on_divergence=continue: never a best trial
        outcome.error = f"training diverged: {ctx.spec.metric}={value}"
        trial.set_user_attr("error", outcome.error)
        _end(client, child, "FAILED", {"mg.trial_state": "FAIL", "mg.error": outcome.error})
        return outcome
    if value is None:
        outcome.error = (f"the run logged no {ctx.spec.metric!r} metric "
                         f"(it has: {', '.join(sorted(k for k in outcome.metrics if not k.startswith('system/'))) or 'none'})")
        trial.set_user_attr("error", outcome.error)
        _end(client, child, "FAILED", {"mg.trial_state": "FAIL", "mg.error": outcome.error})
        return outcome
    outcome.state, outcome.value = "COMPLETE", float(value)
    _end(client, child, "FINISHED", {"mg.trial_state": "COMPLETE"})
    return outcome


def _remember(trial, ctx, outcome: Outcome) -> None:
    """What the sweep sums later (also after a resume, from the study alone)."""
    try:
        trial.set_user_attr("emissions_kg", outcome.emissions_kg)
        trial.set_user_attr("energy_kwh", outcome.energy_kwh)
    except Exception:  # noqa: BLE001 - a told trial is read-only; the run still has the metrics
        pass
