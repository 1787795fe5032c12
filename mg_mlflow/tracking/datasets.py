"""Training and evaluation data as MLflow dataset inputs (source + digest shown in the UI)."""

from __future__ import annotations

import json


def records_frame(data):
    """A :class:`~mg_mlflow.data.load.LoadedDataset` as a DataFrame: one column per field of its
    normalised records (``messages``; preference records ``prompt``/``chosen``/``rejected`` or
    ``prompt``/``completion``/``label``), lists as JSON text."""
    import pandas as pd

    columns = list(data.records[0]) if data.records else ["messages"]
    return pd.DataFrame({c: [v if isinstance(v := r.get(c), (str, bool)) else json.dumps(v, ensure_ascii=False)
                             for r in data.records] for c in columns})


def log_dataset_input(data, context: str) -> None:
    """Log a :class:`~mg_mlflow.data.load.LoadedDataset` as an MLflow dataset input."""
    import mlflow

    frame = records_frame(data)
    ds = mlflow.data.from_pandas(frame, source=data.source, name=data.name, digest=data.digest)
    mlflow.log_input(ds, context=context, tags={"format": data.fmt, "records": str(len(data))})
