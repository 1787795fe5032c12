"""Training and evaluation data as MLflow dataset inputs (source + digest shown in the UI)."""

from __future__ import annotations

import json
import warnings


def records_frame(data):
    """A :class:`~mg_mlflow.data.load.LoadedDataset` as a DataFrame: one column per field of its
    normalised records (``messages``; preference records ``prompt``/``chosen``/``rejected`` or
    ``prompt``/``completion``/``label``), lists as JSON text."""
    import pandas as pd

    columns = list(data.records[0]) if data.records else ["messages"]
    return pd.DataFrame({c: [v if isinstance(v := r.get(c), (str, bool)) else json.dumps(v, ensure_ascii=False)
                             for r in data.records] for c in columns})


def log_dataset_input(data, context: str, profile: dict | None = None) -> None:
    """Log a :class:`~mg_mlflow.data.load.LoadedDataset` as an MLflow dataset input, and its profile
    (format, turns, tool calls, trained tokens after the mask) as ``datasets/<context>_profile.json``."""
    import mlflow

    frame = records_frame(data)
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice (schemes "" and "file") and warns that a path
        # "can be interpreted in multiple ways" while both are the same class of source
        # (mlflow/data/dataset_source_registry.py, resolve).
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways",
                                category=UserWarning)
        ds = mlflow.data.from_pandas(frame, source=data.source, name=data.name, digest=data.digest)
    mlflow.log_input(ds, context=context, tags={"format": data.fmt, "records": str(len(data))})
    if profile is not None:
        log_dataset_profile(data, context, profile)


def log_dataset_profile(data, context: str, profile: dict) -> None:
    """A dataset's profile as the run artifact ``datasets/<context>_profile.json``."""
    import mlflow

    mlflow.log_dict({"dataset": data.name, "source": data.source, "context": context, **profile},
                    f"datasets/{context}_profile.json")
