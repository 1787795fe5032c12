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
from mg_mlflow.experiment.compare_noise import carbon_noise, same_work_emissions, work_key
from mg_mlflow.experiment.space import SHORT
from mg_mlflow.registry.resolve import is_logged_model_id, registry_version
from mg_mlflow.tracking.query import get_run
from mg_mlflow.tracking.run import use_tracking_uri

SKIP_PARAMS = {"run_name", "output_dir", "experiment", "alias", "register_as"}  # the registry says where aliases are now
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
               and mn.value(r.data.metrics, mn.LOSS_FINAL) is not None][:max_runs]
    unique = list(dict.fromkeys(ids))
    if len(unique) < 2:
        raise MGError(f"compare needs at least two runs, got {len(unique)}",
                      hint="give two or more run ids or model URIs, or --experiment NAME with two finished runs")
    return unique


def _dataset_of(metric) -> tuple[str, str]:
    return (getattr(metric, "dataset_digest", None) or "", getattr(metric, "dataset_name", None) or "")


def evaluations(client, run) -> dict[str, dict]:
    """The run's model's evaluations, per dataset digest: ``{digest: {"dataset": name, "metrics":
    {"eval/x": value}}}``. From the ``eval/*`` metrics that evaluation runs logged against the run's
    LoggedModels (latest per key and dataset), then the registered version's ``mg.eval.<digest>.<x>``
    tags for what those lack. An evaluation's own ``carbon/*`` figures are not model metrics: left out.
    Metrics logged without a dataset are under the digest ``""``."""
    found: dict[tuple[str, str], tuple[int, float]] = {}
    names: dict[str, str] = {}
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
                digest, name = _dataset_of(m)
                names.setdefault(digest, name)
                if (digest, m.key) not in found or m.timestamp >= found[(digest, m.key)][0]:
                    found[(digest, m.key)] = (m.timestamp, m.value)
    out: dict[str, dict] = {}
    for (digest, key), (_, value) in found.items():
        out.setdefault(digest, {"dataset": names.get(digest, ""), "metrics": {}})["metrics"][key] = value
    tags = run.data.tags
    if tags.get("mg.registered_model"):
        try:
            mv = client.get_model_version(tags["mg.registered_model"], tags.get("mg.registered_version", ""))
            vtags = dict(mv.tags or {})
        except Exception:  # noqa: BLE001
            vtags = {}
        for key, value in vtags.items():
            digest, dot, rest = key[len("mg.eval."):].partition(".")
            if not key.startswith("mg.eval.") or not dot or rest in ("run_id", "dataset") or mn.is_carbon(rest):
                continue
            group = out.setdefault(digest, {"dataset": vtags.get(f"mg.eval.{digest}.dataset", ""), "metrics": {}})
            group["dataset"] = group["dataset"] or vtags.get(f"mg.eval.{digest}.dataset", "")
            try:
                group["metrics"].setdefault(f"eval/{rest}", float(value))
            except ValueError:
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


def current_aliases(client, name: str, version: str) -> list[str]:
    """The aliases that point at the version now (the registry's, not the train-time ``--alias``)."""
    try:
        return sorted(client.get_model_version(name, version).aliases or [])
    except Exception:  # noqa: BLE001 - a deleted version
        return []


def _energy_source(run) -> str | None:
    if mn.carbon_value(run.data.metrics, mn.TOTAL_EMISSIONS_KG) is None:
        return None
    flag = run.data.tags.get("mg.carbon.estimated")
    if flag is None and (estimated := mn.carbon_value(run.data.metrics, mn.ESTIMATED)) is not None:
        flag = "true" if estimated else "false"
    return {"true": "estimated", "false": "measured"}.get(flag or "", "estimated")


def _labels(runs, differing: list[str]) -> list[str]:
    """Run names, made unique by what differs (e.g. ``tiny lora r8 lr0.003 (hf) [steps=150]``)."""
    names = [r.info.run_name or r.info.run_id[:8] for r in runs]
    if len(set(names)) == len(names):
        return names
    out = []
    for name, r in zip(names, runs):
        what = " ".join(f"{SHORT.get(k, k)}={r.data.params.get(k, '')}" for k in differing) or r.info.run_id[:8]
        out.append(f"{name} [{what}]" if names.count(name) > 1 else name)
    return out


def _primary_dataset(rows: list[dict]) -> str | None:
    """The digest most of the runs were evaluated on (the quality axis and bars compare on it)."""
    counts: dict[str, int] = {}
    for row in rows:
        for digest in row["evaluations"]:
            counts[digest] = counts.get(digest, 0) + 1
    if not counts:
        return None
    return max(counts, key=lambda d: (counts[d], d != ""))


def collect(targets: list[str], experiment: str = "model-garden", max_runs: int = 20) -> dict[str, Any]:
    """``{"runs": [row...], "differing_params", "eval_metrics", "eval_dataset", "datasets", "carbon"}``."""
    use_tracking_uri()
    client = _client()
    runs = [client.get_run(i) for i in resolve_run_ids(targets, experiment, max_runs)]
    serving = serving_emissions(client)
    keys = sorted({k for r in runs for k in r.data.params} - SKIP_PARAMS)
    differing = [k for k in keys if len({r.data.params.get(k, "") for r in runs}) > 1]
    rows = []
    for r, label in zip(runs, _labels(runs, differing)):
        m, tags = r.data.metrics, r.data.tags
        name, version = tags.get("mg.registered_model", ""), tags.get("mg.registered_version", "")
        registered = f"{name}/{version or '?'}" if name else ""
        train_kg = mn.carbon_value(m, mn.TOTAL_EMISSIONS_KG)
        seconds = m.get("train_seconds")
        tokens = m.get("trained_tokens")
        evals = evaluations(client, r)
        rows.append({
            "run_id": r.info.run_id, "name": label, "run_name": r.info.run_name or "", "status": r.info.status,
            "experiment_id": r.info.experiment_id,
            "params": {k: r.data.params.get(k, "") for k in differing},
            "work": work_key(r.data.params),
            "steps": m.get("train_steps"), "epochs": r.data.params.get("epochs") if r.data.params.get(
                "max_steps", "-1") in ("-1", "") else None,
            "loss_final": mn.value(m, mn.LOSS_FINAL), "eval_loss_final": mn.value(m, mn.EVAL_LOSS_FINAL),
            "evaluations": evals, "eval": {},
            "energy_kwh": mn.carbon_value(m, mn.TOTAL_ENERGY_KWH), "emissions_kg": train_kg,
            "energy_source": _energy_source(r),
            "generation_emissions_kg": mn.carbon_value(m, mn.phase_name(mn.GENERATION, mn.EMISSIONS_KG)),
            "optimisation_emissions_kg": mn.carbon_value(m, mn.phase_name(mn.OPTIMISATION, mn.EMISSIONS_KG)),
            "generation_share_energy": mn.carbon_value(m, mn.GENERATION_SHARE_ENERGY),
            "serving_emissions_kg": serving.get(registered) if registered else None,
            "duration_s": seconds if seconds is not None else
            ((r.info.end_time - r.info.start_time) / 1000.0 if r.info.end_time else None),
            "tokens_per_s": tokens / seconds if tokens and seconds else None,
            "registered": registered, "aliases": current_aliases(client, name, version) if name and version else []})
    primary = _primary_dataset(rows)
    for row in rows:
        row["eval"] = dict(row["evaluations"].get(primary, {}).get("metrics", {})) if primary is not None else {}
    datasets: dict[str, str] = {}
    for row in rows:
        for digest, group in row["evaluations"].items():
            datasets[digest] = datasets.get(digest) or group["dataset"]
    eval_keys = sorted({k for row in rows for k in row["eval"]})
    data = {"runs": rows, "differing_params": differing, "eval_metrics": eval_keys,
            "eval_dataset": {"digest": primary, "name": datasets.get(primary, "")} if primary is not None else None,
            "datasets": [{"digest": d, "name": n} for d, n in datasets.items()]}
    data["carbon"] = carbon_noise(rows, same_work_emissions(client, runs))
    return data
