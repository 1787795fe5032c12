"""Two real training runs that differ in one param (the same work otherwise), each registered with
carbon on, each really evaluated (``model-garden evaluate``, local) on the same held-out file: the
metrics are logged against the run's LoggedModel (MLflow 3's ``model_id=``) and tagged on the version."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from conftest import isolated_home, train_tiny


@dataclass
class Pair:
    run_ids: dict[str, str]      # run name -> run id
    model_ids: dict[str, str]
    experiment_id: str
    versions: dict[str, str]     # run name -> registered version
    metrics: dict[str, dict] = field(default_factory=dict)   # run name -> evaluation metrics
    digest: str = ""
    dataset: str = ""


def train_pair(tiny_model, data, heldout) -> Pair:
    from mlflow.tracking import MlflowClient

    from mg_mlflow.evaluation.runner import EvalOptions, evaluate

    client = MlflowClient()
    run_ids, model_ids, versions, metrics = {}, {}, {}, {}
    for name, lr in (("lr-3e-3", 3e-3), ("lr-1e-4", 1e-4)):
        result = train_tiny(tiny_model, data, max_steps=6, learning_rate=lr, run_name=name, register_as="tiny-cmp",
                            alias="champion", eval_split=0.2, carbon=True, carbon_measure_secs=1)
        run_ids[name], versions[name] = result.run_id, result.registered_version
        model_ids[name] = result.model_uri.removeprefix("models:/")
    exp_id = client.get_run(run_ids["lr-3e-3"]).info.experiment_id
    for name, version in versions.items():
        res = evaluate(f"models:/tiny-cmp/{version}", EvalOptions(str(heldout), max_new_tokens=4, carbon=True))
        metrics[name] = res.metrics
    return Pair(run_ids, model_ids, exp_id, versions, metrics, res.dataset_digest, heldout.stem)


@pytest.fixture(scope="session")
def pair_store(tmp_path_factory, tiny_model, sample_data):
    """(home, Pair): the pair trained once per session in its own store. test_compare and test_ui
    re-enter it with ``isolated_home(home)``; both only read it (test_compare adds its one
    comparison run, which no test of test_ui looks for)."""
    from mg_mlflow.data.sample import write_sample

    home = tmp_path_factory.mktemp("pair-home")
    heldout = write_sample(tmp_path_factory.mktemp("pair-data") / "heldout.jsonl", n=8, seed=21)
    with isolated_home(home):
        pair = train_pair(tiny_model, sample_data, heldout)
    return home, pair
