"""Direct links into the MLflow UI (3.x hash routes, as in mlflow's ``routes.ts``).

``#/experiments/<id>/runs`` opens the training-runs table itself: a fresh browser's sidebar toggle
defaults to GenAI, where ``#/experiments/<id>`` lands on an empty traces overview (mlflow #24498).
The runs table takes its search box's filter as ``?searchFilter=`` (the experiment page's URL state).
The compare view is ``#/compare-runs?runs=[...]&experiments=[...]`` (``getCompareRunPageRoute``).
"""

from __future__ import annotations

import json
from urllib.parse import quote


def base_url(host: str = "127.0.0.1", port: int = 5000) -> str:
    return f"http://{host}:{port}"


def runs_url(base: str, experiment_id: str, kind: str | None = None) -> str:
    """The experiment's runs table; with ``kind`` (training, evaluation) only runs tagged
    ``mg.run_kind`` = kind, through the table's own search box (``searchFilter``, editable there)."""
    url = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
    if kind:
        url += "?searchFilter=" + quote(f"tags.`mg.run_kind` = '{kind}'", safe="")
    return url


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def compare_url(base: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    runs = quote(json.dumps(list(run_ids), separators=(",", ":")), safe="")
    exps = quote(json.dumps(sorted(set(experiment_ids)), separators=(",", ":")), safe="")
    return f"{base.rstrip('/')}/#/compare-runs?runs={runs}&experiments={exps}"


def version_url(base: str, name: str, version: str) -> str:
    return f"{base.rstrip('/')}/#/models/{quote(name, safe='')}/versions/{version}"
