"""Export the runs of an MLflow store as JSON (params, final metrics, tags, loss and tokens/s
histories, registered versions), so benchmark results go into git as text, never as a database.

    python bench/export_runs.py bench/results/<dir>/mlflow.db   # writes mlflow_runs.json beside it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HISTORIES = ("train/loss", "train/tokens_per_second", "loss", "tokens_per_second")  # and the names before train/


def export(db: str | Path) -> Path:
    import mlflow

    uri = f"sqlite:///{Path(db).resolve()}"
    client = mlflow.tracking.MlflowClient(uri, registry_uri=uri)
    out: dict = {"experiments": []}
    for exp in client.search_experiments():
        runs = []
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            history = {}
            for key in HISTORIES:
                points = client.get_metric_history(run.info.run_id, key)
                if points:
                    history[key] = [[m.step, m.value] for m in sorted(points, key=lambda m: m.step)]
            runs.append({"run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
                         "start_time": run.info.start_time, "end_time": run.info.end_time,
                         "params": run.data.params, "metrics": run.data.metrics,
                         "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.log-model")},
                         "history": history})
        out["experiments"].append({"name": exp.name, "runs": runs})
    out["registered_models"] = [
        {"name": m.name, "versions": [{"version": v.version, "tags": v.tags, "run_id": v.run_id}
                                      for v in client.search_model_versions(f"name='{m.name}'")]}
        for m in client.search_registered_models()]
    path = Path(db).with_name("mlflow_runs.json")
    path.write_text(json.dumps(out, indent=1, default=str))
    return path


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(export(arg))
