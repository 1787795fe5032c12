"""The sweep's parent run in MLflow: created (or reopened for ``--resume``), updated after each trial,
and finished with the best trial, plots, the children's summed energy/CO2 and the registered version."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from mg_mlflow import metric_names as mn
from mg_mlflow.config import to_dict
from mg_mlflow.env import mg_home
from mg_mlflow.errors import MGError
from mg_mlflow.experiment.register_best import register_trial
from mg_mlflow.experiment.space import SHORT
from mg_mlflow.experiment.sweep_plots import importance_png, objective_png
from mg_mlflow.options import flat_params
from mg_mlflow.tracking.query import get_run
from mg_mlflow.tracking.run import ensure_experiment


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def _tags(client, run_id: str, tags: dict) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def create_parent(spec, cfg, dims, direction: str, storage: str) -> tuple[str, str]:
    """(parent run id, study name). Under ``mlflow run`` the run MLflow created is the parent."""
    from mlflow.entities import Param

    client = _client()
    what = ", ".join(SHORT.get(d.name, d.name) for d in dims)
    kind = "grid" if any(d.kind == "grid" for d in dims) else f"{spec.sampler} search"
    name = f"sweep {Path(cfg.base_model.rstrip('/')).name} {cfg.method}: {what} ({kind})"
    tags = {"mg.run_kind": "sweep", "mg.modality": spec.modality, "mg.sweep.metric": spec.metric,
            "mg.sweep.direction": direction, "mg.sweep.defaults": json.dumps(spec.chosen)}
    env_run = os.environ.get("MLFLOW_RUN_ID")
    if env_run:
        parent_id = env_run
        _tags(client, parent_id, tags)
    else:
        exp_id = ensure_experiment(cfg.experiment)
        parent_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    study_name = f"mg-sweep-{parent_id}"
    swept = {d.name for d in dims}
    params = {f"sweep.{d.name}": d.spec() for d in dims}
    params.update({"sweep.metric": spec.metric, "sweep.direction": direction, "sweep.trials": str(spec.trials),
                   "sweep.sampler": "grid" if kind == "grid" else spec.sampler, "sweep.pruner": spec.pruner,
                   "sweep.register": spec.register, "sweep.max_emissions_kg": str(spec.max_emissions_kg)})
    # the fixed part of the configuration, under the same names as the children's params
    params.update({k: str(v) for k, v in flat_params(to_dict(cfg)).items() if k not in swept and k != "run_name"})
    existing = client.get_run(parent_id).data.params
    client.log_batch(parent_id, params=[Param(k, v[:6000]) for k, v in params.items() if k not in existing])
    _tags(client, parent_id, {"mg.sweep.study": study_name,
                              "mg.sweep.storage": storage if storage.startswith("sqlite") else "(rdb)"})
    return parent_id, study_name


def reopen_parent(run_id: str, storage: str, spec_from_dict, reopen: bool = True):
    """(parent id, study name, spec) of an earlier sweep; marks the parent RUNNING again."""
    import optuna

    run = get_run(run_id)
    if run["tags"].get("mg.run_kind") != "sweep":
        raise MGError(f"run {run['run_id']} is not a sweep (tag mg.run_kind={run['tags'].get('mg.run_kind')!r})",
                      hint="give the parent run id that `model-garden sweep` printed")
    study_name = run["tags"].get("mg.sweep.study", "")
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise MGError(f"sweep {run['run_id']}: no Optuna study {study_name!r} in {storage}",
                      hint="resume with the same MLFLOW_TRACKING_URI / MG_HOME (or MG_OPTUNA_STORAGE) as the sweep") from None
    spec = spec_from_dict(study.user_attrs.get("mg_spec") or {})
    if reopen:
        client = _client()
        client.update_run(run["run_id"], status="RUNNING")
        _tags(client, run["run_id"], {"mg.sweep.stopped": "", "mg.sweep.resumed": "true"})
    return run["run_id"], study_name, spec


def _totals(sweep) -> dict:
    kg, kwh = sweep.spent()
    return {mn.SWEEP_TOTAL_EMISSIONS: kg * mn.MG_PER_KG, mn.SWEEP_TOTAL_ENERGY: kwh * mn.J_PER_KWH,
            "sweep/trials_complete": float(len(sweep.trials("COMPLETE"))),
            "sweep/trials_pruned": float(len(sweep.trials("PRUNED"))),
            "sweep/trials_failed": float(len([t for t in sweep.trials("FAIL") if not t.user_attrs.get("interrupted")]))}


def after_trial(sweep, outcome) -> dict | None:
    """Objective per trial (a metric history the UI plots), running best, running totals."""
    import time

    from mlflow.entities import Metric

    client, now = sweep.client, int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in _totals(sweep).items()]
    if outcome.value is not None:
        metrics.append(Metric("sweep/objective", outcome.value, now, outcome.number))
    best = sweep.best()
    if best:
        metrics.append(Metric("sweep/best_objective", best["value"], now, outcome.number))
        _tags(client, sweep.parent_id, {"mg.sweep.best_trial": best["number"], "mg.sweep.best_run_id": best["run_id"],
                                        "mg.sweep.best_params": json.dumps(best["params"])})
    client.log_batch(sweep.parent_id, metrics=metrics)
    return best


def trials_table(sweep) -> list[dict]:
    return [{"number": t.number, "state": "INTERRUPTED" if t.user_attrs.get("interrupted") else t.state.name,
             "params": dict(t.params), "value": t.value, "run_id": t.user_attrs.get("run_id"),
             "emissions_kg": t.user_attrs.get("emissions_kg"), "energy_kwh": t.user_attrs.get("energy_kwh"),
             "error": t.user_attrs.get("error", "")}
            for t in sweep.study.get_trials(deepcopy=False) if t.state.is_finished()]


def finish(sweep, result):
    """Best trial, plots, totals, registration; the parent ends FINISHED."""
    client = sweep.client
    result.best = sweep.best()
    result.total_emissions_kg, result.total_energy_kwh = sweep.spent()
    table = trials_table(sweep)
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "trials.json"
        summary.write_text(json.dumps({"metric": sweep.spec.metric, "direction": sweep.direction,
                                       "best": result.best, "trials": table}, indent=2))
        client.log_artifact(sweep.parent_id, str(summary), "sweep")

        out = mg_home() / "outputs" / sweep.parent_id
        out.mkdir(parents=True, exist_ok=True)
        for png in (objective_png(table, sweep.spec.metric, sweep.direction, out / "objective_per_trial.png"),
                    importance_png(sweep.study, out / "param_importance.png")):
            if png:
                client.log_artifact(sweep.parent_id, str(png), "plots")
                result.plots.append(png)
    tags = {}
    if result.stopped_reason:
        tags["mg.sweep.stopped"] = result.stopped_reason
        sweep.echo(f"stopped: {result.stopped_reason}")
    if result.best:
        result.registered = register_outcome(sweep, result.best)
        if result.registered:
            tags["mg.sweep.registered"] = result.registered
    if tags:
        _tags(client, sweep.parent_id, tags)
    after = _totals(sweep)
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in after.items()]
    if result.best:
        metrics.append(Metric(f"sweep/best/{sweep.spec.metric}", result.best["value"], now, 0))
    client.log_batch(sweep.parent_id, metrics=metrics)
    client.set_terminated(sweep.parent_id, "FINISHED")
    return result


def register_outcome(sweep, best: dict) -> str:
    """``--register best``: the best trial's saved model becomes a version; ``all``: every trial
    registered itself, the alias (if any) moves to the best one."""
    spec, client = sweep.spec, sweep.client
    if spec.register == "none" or str(sweep.options.get("register_as", "")).lower() == "none":
        return ""  # --register none, or --register-as none (save locally only)
    if spec.register == "all":
        tags = client.get_run(best["run_id"]).data.tags
        name, version = tags.get("mg.registered_model"), tags.get("mg.registered_version")
        alias = sweep.options.get("alias")
        if name and version and alias:
            client.set_registered_model_alias(name, alias, version)
        return f"models:/{name}/{version}" if name else ""

    return register_trial(sweep, best)


def interrupted(sweep) -> None:
    client = sweep.client
    from mlflow.entities import Metric

    _tags(client, sweep.parent_id, {"mg.sweep.stopped": "interrupted by the user (Ctrl-C); continue with "
                                    f"`model-garden sweep --resume {sweep.parent_id}`"})
    client.log_batch(sweep.parent_id, metrics=[Metric(k, v, 0, 0) for k, v in _totals(sweep).items()])
    client.set_terminated(sweep.parent_id, "KILLED")


def failed(sweep, exc: BaseException) -> None:
    client = sweep.client
    _tags(client, sweep.parent_id, {"mg.error": f"{type(exc).__name__}: {exc}"})
    client.set_terminated(sweep.parent_id, "FAILED")
