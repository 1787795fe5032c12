"""The MLflow record of an evaluation (MLflow 3 conventions) and the tags on the evaluated version.

- an evaluation run in the model's experiment (tag ``mg.run_kind=evaluation``), with the model's
  LoggedModel and the dataset as inputs;
- metrics logged with ``model_id`` and ``dataset`` so they show on the model's page;
- a per-example table (``mlflow.log_table``);
- after success only: version tags ``mg.eval.<digest>.run_id`` and ``mg.eval.<digest>.<metric>``.
"""

from __future__ import annotations

import hashlib
import json

from mg_mlflow.registry.model_card import refresh_description
from mg_mlflow.tracking.datasets import records_frame

TABLE = "eval/examples.json"
KEY_TAG = "mg.eval.key"


def model_id_of(resolved) -> str | None:
    """The LoggedModel id of a resolved model (a version registered from models:/m-... keeps it in
    its ``source``: its ``model_id`` is None in MLflow 3.17)."""
    if resolved.model_id:
        return resolved.model_id
    if resolved.name and resolved.version:
        import mlflow

        mv = mlflow.tracking.MlflowClient().get_model_version(resolved.name, resolved.version)
        if getattr(mv, "model_id", None):
            return mv.model_id
        source = mv.source or ""
        if source.startswith("models:/m-"):
            return source[len("models:/"):].split("/")[0]
    return None


def model_label(resolved) -> str:
    if resolved.name and resolved.version:
        return f"{resolved.name} v{resolved.version}"
    return resolved.model_id or resolved.local_dir.name


def experiment_name(resolved, default: str = "model-garden") -> str:
    """The experiment of the run that produced the model (where its evaluations belong)."""
    import mlflow

    if not resolved.run_id:
        return default
    client = mlflow.tracking.MlflowClient()
    try:
        return client.get_experiment(client.get_run(resolved.run_id).info.experiment_id).name
    except Exception:  # noqa: BLE001 - a deleted run: fall back
        return default


def eval_key(resolved, digest: str, settings: dict) -> str:
    ident = {"model": resolved.canonical_uri if resolved.name else (resolved.model_id or str(resolved.local_dir)),
             "digest": digest, **settings}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def find_earlier(key: str, experiment: str):
    """The latest FINISHED evaluation run with ``key`` in ``experiment`` (or None)."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id],
                              f"tags.`{KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def mlflow_dataset(eval_set):
    import mlflow

    data = eval_set.data
    frame = records_frame(data)
    return mlflow.data.from_pandas(frame, source=data.source, name=data.name, digest=data.digest)


def log_inputs(eval_set, model_id: str | None):
    """Dataset (context ``evaluation``) and LoggedModel inputs of the active run; returns the dataset."""
    import mlflow
    from mlflow.entities import LoggedModelInput

    ds = mlflow_dataset(eval_set)
    mlflow.log_input(ds, context="evaluation", tags={"format": eval_set.data.fmt, "records": str(len(eval_set))})
    if model_id:
        mlflow.log_input(model=LoggedModelInput(model_id))
    return ds


def log_results(metrics: dict[str, float], ds, model_id: str | None) -> None:
    import mlflow

    mlflow.log_metrics(metrics, model_id=model_id, dataset=ds, synchronous=True)


def log_table(eval_set, predictions: list[str], rows: list[dict]) -> None:
    import mlflow
    import pandas as pd

    frame = pd.DataFrame({"location": [e.location for e in eval_set.examples],
                          "prompt": [e.prompt_text for e in eval_set.examples],
                          "reference": [e.reference for e in eval_set.examples],
                          "prediction": predictions})
    for key in rows[0] if rows else ():
        frame[key] = [r[key] for r in rows]
    mlflow.log_table(frame, TABLE)


def tag_version(resolved, digest: str, dataset_name: str, run_id: str, metrics: dict[str, float]) -> dict[str, str]:
    """Point the registered version at this evaluation (replacing tags of an earlier one on the same
    digest); called only after the run succeeded. Returns the tags set."""
    import mlflow

    if not (resolved.name and resolved.version):
        return {}
    client = mlflow.tracking.MlflowClient()
    prefix = f"mg.eval.{digest}."
    current = client.get_model_version(resolved.name, resolved.version).tags or {}
    for key in [k for k in current if k.startswith(prefix)]:
        client.delete_model_version_tag(resolved.name, resolved.version, key)
    tags = {f"{prefix}run_id": run_id, f"{prefix}dataset": dataset_name,
            "mg.eval.last_run_id": run_id, "mg.eval.last_dataset_digest": digest}
    for name, value in metrics.items():
        tags[prefix + name.removeprefix("eval/")] = f"{value:.6g}"
    for key, value in tags.items():
        client.set_model_version_tag(resolved.name, resolved.version, key, value)

    refresh_description(resolved.name, str(resolved.version), {f"{dataset_name} {k}": v for k, v in metrics.items()})
    return tags


def version_metric(tags: dict[str, str], digest: str, metric: str) -> float | None:
    """A metric recorded on a version by :func:`tag_version` (``eval/x`` or ``x``), or None."""
    value = tags.get(f"mg.eval.{digest}.{metric.removeprefix('eval/')}")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
