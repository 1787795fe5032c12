"""Read jobs back from MLflow for the CLI (status, params, metrics, registered version)."""

from __future__ import annotations

from datetime import datetime, timezone

from mg_mlflow.errors import MGError
from mg_mlflow.tracking.run import use_tracking_uri


def _summary(run, experiment_name: str) -> dict:
    tags = run.data.tags
    reg = None
    if tags.get("mg.registered_model"):
        reg = f"models:/{tags['mg.registered_model']}/{tags.get('mg.registered_version', '?')}"
    start = datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    datasets = [f"{d.dataset.name} ({d.dataset.digest})" for d in (run.inputs.dataset_inputs or [])]
    return {"run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
            "params": run.data.params, "metrics": run.data.metrics, "tags": tags, "registered": reg,
            "start": start, "experiment": experiment_name, "datasets": datasets}


def list_runs(experiment: str, max_results: int = 20) -> list[dict]:
    import mlflow

    use_tracking_uri()
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in mlflow.search_experiments()]
        raise MGError(f"no experiment named {experiment!r}", hint=f"experiments: {', '.join(names) or '(none)'}")
    runs = mlflow.tracking.MlflowClient().search_runs([exp.experiment_id], max_results=max_results,
                                                      order_by=["attributes.start_time DESC"])
    return [_summary(r, experiment) for r in runs]


def get_run(run_id: str) -> dict:
    import mlflow
    from mlflow.exceptions import MlflowException

    use_tracking_uri()
    client = mlflow.tracking.MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        matches = [r for e in client.search_experiments() for r in
                   client.search_runs([e.experiment_id], max_results=500) if r.info.run_id.startswith(run_id)]
        if len(matches) != 1:
            raise MGError(f"no run {run_id!r}" if not matches else f"run id prefix {run_id!r} is ambiguous",
                          hint="see `model-garden runs list`") from None
        run = matches[0]
    exp = client.get_experiment(run.info.experiment_id)
    return _summary(run, exp.name)


def sample_tables(run_id: str) -> list[tuple[str, dict]]:
    """The sampled-completion tables of a grpo run (``samples/step_NNNNN.json``), oldest first, as
    (artifact path, {"columns": [...], "data": [[...], ...]})."""
    import json

    import mlflow

    use_tracking_uri()
    client = mlflow.tracking.MlflowClient()
    out = []
    for item in sorted(client.list_artifacts(run_id, "samples"), key=lambda a: a.path):
        if item.path.endswith(".json"):
            with open(client.download_artifacts(run_id, item.path), encoding="utf-8") as fh:
                out.append((item.path, json.load(fh)))
    return out
