"""Does an evaluation dataset share records with the model's training data?

The model's training run names its data (param ``dataset``, format, ``eval_split`` and ``seed``) and
the digest of the records it trained on (its ``training`` dataset input). The training records are
rebuilt the way the training split them (:func:`mg_mlflow.data.load.split_eval`); when their digest
still matches the run's, each evaluation record is looked up among them (by its messages). A record
of the model's own ``eval_split`` is not a training record.
"""

from __future__ import annotations

import json
from pathlib import Path

from mg_mlflow.data.load import is_local, load_dataset_records, split_eval
from mg_mlflow.errors import MGError

ADVICE = ("its scores measure memorisation, not generalisation; hold data out with `model-garden data split FILE` "
          "or `model-garden data sample PATH --split 0.1`")


def _key(record: dict) -> str:
    return json.dumps(record.get("messages"), sort_keys=True, ensure_ascii=False)


def _training_input(run) -> tuple[str | None, str]:
    for di in getattr(run.inputs, "dataset_inputs", None) or []:
        tags = {t.key: t.value for t in di.tags or []}
        if tags.get("mlflow.data.context") == "training":
            return di.dataset.digest, di.dataset.name
    return None, ""


def training_overlap(resolved, eval_set) -> str | None:
    """A warning when evaluation records are training records of the model; None when none are
    (or when the training data cannot be read back: a hub dataset, a moved or changed file)."""
    if not getattr(resolved, "run_id", None):
        return None
    import mlflow

    try:
        run = mlflow.tracking.MlflowClient().get_run(resolved.run_id)
    except Exception:  # noqa: BLE001 - a deleted run: nothing to compare with
        return None
    digest, name = _training_input(run)
    records = eval_set.data.records
    if digest and digest == eval_set.digest:
        return f"{len(records)} of {len(records)} evaluation records are the model's training data ({name}); {ADVICE}"
    params = run.data.params
    source = params.get("dataset", "")
    if run.data.tags.get("mg.modality", "text") != "text" or not source or not is_local(source) \
            or not Path(source).is_file():
        return None
    try:
        data = load_dataset_records(source, params.get("dataset_format", "auto") or "auto")
        train, _ = split_eval(data, float(params.get("eval_split") or 0.0), int(params.get("seed") or 42))
    except (MGError, ValueError):
        return None
    if digest and train.digest != digest:
        return None  # the file changed since the training: its records are not what the model saw
    seen = {_key(r) for r in train.records}
    shared = sum(1 for r in records if _key(r) in seen)
    if not shared:
        return None
    return (f"{shared} of {len(records)} evaluation records are also training records of this model "
            f"({source}); {ADVICE}")
