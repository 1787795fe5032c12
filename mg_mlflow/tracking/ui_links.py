"""Direct links into the MLflow UI (3.x hash routes, as in mlflow's ``routes.ts``).

Every link carries ``workflowType=machine_learning``: MLflow 3.17 chooses its sidebar (GenAI or
"Model training") from that URL parameter first, then from the browser's localStorage key
``mlflow.workflowType``, whose default is GenAI; the experiment's ``mlflow.experimentKind`` tag is not
read for it (the workflow-based navigation flag is on in the build). A fresh browser opened on a link
without it lands on the GenAI sidebar, with the training runs listed under "Evaluation runs".
``#/experiments/<id>/runs`` opens the runs table itself; it takes its search box's filter as
``?searchFilter=`` (the experiment page's URL state). The compare view is
``#/compare-runs?runs=[...]&experiments=[...]`` (``getCompareRunPageRoute``).
"""

from __future__ import annotations

import json
from urllib.parse import quote


def base_url(host: str = "127.0.0.1", port: int = 5000) -> str:
    return f"http://{host}:{port}"


TRAINING_VIEW = "workflowType=machine_learning"


def runs_url(base: str, experiment_id: str, kind: str | None = None) -> str:
    """The experiment's runs table; with ``kind`` (training, evaluation) only runs tagged
    ``mg.run_kind`` = kind, through the table's own search box (``searchFilter``, editable there)."""
    url = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}"
    if kind:
        url += "&searchFilter=" + quote(f"tags.`mg.run_kind` = '{kind}'", safe="")
    return url


def run_url(base: str, experiment_id: str, run_id: str, tab: str = "") -> str:
    """A run's page; ``tab``: model-metrics, system-metrics, artifacts (default: its overview)."""
    path = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{path}/{tab}?{TRAINING_VIEW}" if tab else f"{path}?{TRAINING_VIEW}"


def compare_url(base: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    runs = quote(json.dumps(list(run_ids), separators=(",", ":")), safe="")
    exps = quote(json.dumps(sorted(set(experiment_ids)), separators=(",", ":")), safe="")
    return f"{base.rstrip('/')}/#/compare-runs?runs={runs}&experiments={exps}&{TRAINING_VIEW}"


def version_url(base: str, name: str, version: str) -> str:
    return f"{base.rstrip('/')}/#/models/{quote(name, safe='')}/versions/{version}?{TRAINING_VIEW}"
