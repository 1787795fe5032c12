"""Two real training runs that differ in one param, each registered, each with an evaluation run whose
``eval/exact_match`` is logged against the run's LoggedModel (MLflow 3's ``model_id=``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from conftest import isolated_home, train_tiny

EXACT_MATCH = {"lr-3e-3": 0.5, "lr-1e-4": 0.25}


@dataclass
class Pair:
    run_ids: dict[str, str]      # run name -> run id
    model_ids: dict[str, str]
    experiment_id: str
    versions: dict[str, str]     # run name -> registered version


def train_pair(tiny_model, data) -> Pair:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run_ids, model_ids, versions = {}, {}, {}
    for name, lr in (("lr-3e-3", 3e-3), ("lr-1e-4", 1e-4)):
        result = train_tiny(tiny_model, data, max_steps=6, learning_rate=lr, run_name=name, register_as="tiny-cmp",
                            eval_split=0.2, carbon=True, carbon_measure_secs=1)
        run_ids[name], versions[name] = result.run_id, result.registered_version
        model_ids[name] = result.model_uri.removeprefix("models:/")
    exp_id = client.get_run(run_ids["lr-3e-3"]).info.experiment_id
    for name, model_id in model_ids.items():
        ev = client.create_run(exp_id, run_name=f"evaluate {name}",
                               tags={"mg.run_kind": "evaluation", "mg.model_id": model_id}).info.run_id
        client.log_metric(ev, "eval/exact_match", EXACT_MATCH[name], model_id=model_id)
        client.set_terminated(ev, "FINISHED")
    return Pair(run_ids, model_ids, exp_id, versions)


@pytest.fixture(scope="session")
def pair_store(tmp_path_factory, tiny_model, sample_data):
    """(home, Pair): the pair trained once per session in its own store. test_compare and test_ui
    re-enter it with ``isolated_home(home)``; both only read it (test_compare adds its one
    comparison run, which no test of test_ui looks for)."""
    home = tmp_path_factory.mktemp("pair-home")
    with isolated_home(home):
        pair = train_pair(tiny_model, sample_data)
    return home, pair
