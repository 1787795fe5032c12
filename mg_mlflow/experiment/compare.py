"""Compare training runs from MLflow alone: the params that differ, final losses, evaluation
metrics of the runs' models, energy, emissions, duration, throughput and the registered version.

Runs are named by run id (or a unique prefix) or by a model URI (``models:/NAME/VERSION``,
``models:/NAME@ALIAS``, ``models:/m-<id>``), or taken from an experiment. Evaluation metrics are
the ``eval/*`` metrics logged against a run's LoggedModel (MLflow 3: ``log_metric(..., model_id=)``
from evaluation runs), else the registered version's ``mg.eval.*`` tags.
"""

from __future__ import annotations

import json
from typing import Any

from mg_mlflow import metric_names as mn
from mg_mlflow.errors import MGError
from mg_mlflow.registry.resolve import is_logged_model_id, registry_version
from mg_mlflow.tracking.query import get_run
from mg_mlflow.tracking.run import use_tracking_uri

SKIP_PARAMS = {"run_name", "output_dir", "experiment"}
NOT_TRAINING = {"sweep", "evaluation", "comparison"}
SERVING_EXPERIMENT = "model-garden-serving"


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def resolve_run_ids(targets: list[str], experiment: str, max_runs: int = 20) -> list[str]:
    """Run ids for run ids/prefixes and model URIs; with no targets, the experiment's latest
    finished training runs (sweep parents and evaluation runs left out)."""
    client = _client()
    ids: list[str] = []
    for target in targets:
        if is_logged_model_id(target.removeprefix("models:/")):
            model_id = target.removeprefix("models:/")
            try:
                ids.append(client.get_logged_model(model_id).source_run_id)
            except Exception:  # noqa: BLE001
                raise MGError(f"no logged model {model_id!r}") from None
        elif target.startswith("models:/"):
            _, mv = registry_version(target)
            run_id = mv.run_id or (mv.tags or {}).get("mg.run_id")
            if not run_id:
                raise MGError(f"{target} has no training run recorded (no run id on the version)")
            ids.append(run_id)
        else:
            ids.append(get_run(target)["run_id"])
    if not targets:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise MGError(f"no experiment named {experiment!r}", hint=f"experiments: {', '.join(names) or '(none)'}")
        runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=max_runs * 3,
                                  order_by=["attributes.start_time DESC"])
        ids = [r.info.run_id for r in runs if r.data.tags.get("mg.run_kind", "training") not in NOT_TRAINING
               and "loss_final" in r.data.metrics][:max_runs]
    unique = list(dict.fromkeys(ids))
    if len(unique) < 2:
        raise MGError(f"compare needs at least two runs, got {len(unique)}",
                      hint="give two or more run ids or model URIs, or --experiment NAME with two finished runs")
    return unique


def eval_metrics(client, run) -> dict[str, float]:
    """``eval/*`` metrics linked to the run's logged models by evaluation runs (latest per key)."""
    found: dict[str, tuple[int, float]] = {}
    model_ids = [o.model_id for o in (getattr(run.outputs, "model_outputs", None) or [])]
    if not model_ids:
        try:
            model_ids = [m.model_id for m in client.search_logged_models(
                experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")]
        except Exception:  # noqa: BLE001 - older stores
            model_ids = []
    for model_id in dict.fromkeys(model_ids):
        try:
            logged = client.get_logged_model(model_id)
        except Exception:  # noqa: BLE001
            continue
        for m in logged.metrics or []:
            if m.key.startswith("eval/") and m.run_id != run.info.run_id:
                if m.key not in found or m.timestamp >= found[m.key][0]:
                    found[m.key] = (m.timestamp, m.value)
    out = {k: v for k, (_, v) in found.items()}
    tags = run.data.tags
    if tags.get("mg.registered_model"):
        try:
            mv = client.get_model_version(tags["mg.registered_model"], tags.get("mg.registered_version", ""))
            for key, value in (mv.tags or {}).items():
                name = "eval/" + key[len("mg.eval."):]
                if key.startswith("mg.eval.") and name not in out:
                    try:
                        out[name] = float(value)
                    except ValueError:
                        pass
        except Exception:  # noqa: BLE001
            pass
    return out


def serving_emissions(client) -> dict[str, float]:
    """kg CO2eq of serving per ``name/version`` (serving runs name the versions they served)."""
    exp = client.get_experiment_by_name(SERVING_EXPERIMENT)
    if exp is None:
        return {}
    out: dict[str, float] = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        kg = mn.carbon_value(r.data.metrics, mn.TOTAL_EMISSIONS_KG, mn.carbon_value(r.data.metrics, mn.EMISSIONS_KG))
        if kg is None:
            continue
        for key in json.loads(r.data.tags.get("mg.served_versions") or "[]"):
            out[key] = out.get(key, 0.0) + kg
    return out


def collect(targets: list[str], experiment: str = "model-garden", max_runs: int = 20) -> dict[str, Any]:
    """``{"runs": [row...], "differing_params": [...], "eval_metrics": [...]}``."""
    use_tracking_uri()
    client = _client()
    runs = [client.get_run(i) for i in resolve_run_ids(targets, experiment, max_runs)]
    serving = serving_emissions(client)
    keys = sorted({k for r in runs for k in r.data.params} - SKIP_PARAMS)
    differing = [k for k in keys if len({r.data.params.get(k, "") for r in runs}) > 1]
    rows = []
    for r in runs:
        m, tags = r.data.metrics, r.data.tags
        registered = (f"{tags['mg.registered_model']}/{tags.get('mg.registered_version', '?')}"
                      if tags.get("mg.registered_model") else "")
        train_kg = mn.carbon_value(m, mn.TOTAL_EMISSIONS_KG)
        serve_kg = serving.get(registered, 0.0) if registered else 0.0
        seconds = m.get("train_seconds")
        tokens = m.get("trained_tokens")
        rows.append({
            "run_id": r.info.run_id, "name": r.info.run_name or r.info.run_id[:8], "status": r.info.status,
            "experiment_id": r.info.experiment_id,
            "params": {k: r.data.params.get(k, "") for k in differing},
            "loss_final": m.get("loss_final"), "eval_loss_final": m.get("eval_loss_final"),
            "eval": eval_metrics(client, r),
            "energy_kwh": mn.carbon_value(m, mn.TOTAL_ENERGY_KWH), "emissions_kg": train_kg,
            "serving_emissions_kg": serve_kg or None,
            "footprint_kg": (train_kg or 0.0) + serve_kg if train_kg is not None or serve_kg else None,
            "duration_s": seconds if seconds is not None else
            ((r.info.end_time - r.info.start_time) / 1000.0 if r.info.end_time else None),
            "tokens_per_s": tokens / seconds if tokens and seconds else None,
            "registered": registered})
    eval_keys = sorted({k for row in rows for k in row["eval"]})
    return {"runs": rows, "differing_params": differing, "eval_metrics": eval_keys}


COLUMNS = (("loss_final", "loss"), ("eval_loss_final", "eval loss"), ("energy_kwh", "energy kWh"),
           ("emissions_kg", "CO2 kg"), ("duration_s", "seconds"), ("tokens_per_s", "tokens/s"))


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def flat_rows(data: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (what every text format prints)."""
    header = ["run", *data["differing_params"], *(label for _, label in COLUMNS), *data["eval_metrics"], "registered"]
    body = []
    for row in data["runs"]:
        body.append([row["name"], *(row["params"][k] for k in data["differing_params"]),
                     *(_fmt(row[key]) for key, _ in COLUMNS), *(_fmt(row["eval"].get(k)) for k in data["eval_metrics"]),
                     row["registered"]])
    return header, body


def render(data: dict, fmt: str) -> str:
    """``json``, ``csv`` or ``markdown`` text (the table format is printed by the CLI with rich)."""
    if fmt == "json":
        return json.dumps(data, indent=2)
    header, body = flat_rows(data)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        writer.writerows(body)
        return buf.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        return "\n".join(lines)
    raise MGError(f"unknown format {fmt!r}: use table, json, csv or markdown")
