"""Bad input: a clear message naming the file/option, a non-zero exit, and nothing registered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import BIN, invoke_cli


def _registered(home):
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    return [m.name for m in mlflow.tracking.MlflowClient().search_registered_models()]


def _runs(experiment="model-garden"):
    import mlflow

    client = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


CASES = {
    "malformed-json": (lambda d: _write(d / "x.jsonl", ['{"instruction": "a", "output": "b"}', '{"instruction": ']),
                       [], "x.jsonl:2: not valid JSON"),
    "missing-field": (lambda d: _write(d / "x.jsonl", [json.dumps({"instruction": "a"})]),
                      [], "x.jsonl:1: missing field 'output'"),
    "empty-file": (lambda d: _write(d / "x.jsonl", [""]), [], "has no records"),
    "unknown-backend": (None, ["--backend", "tpu"], "backend='tpu' is not one of auto, unsloth, hf"),
    "unknown-option-value": (None, ["--method", "lorax"], "method='lorax' is not one of lora, qlora, full"),
    "unknown-set-key": (None, ["--set", "lora_rank=4"], "unknown option 'lora_rank' (did you mean lora_r"),
    "bad-number": (None, ["--max-steps", "ten"], "max_steps: expected an integer, got 'ten'"),
    "missing-base-folder": (None, ["--base-model", "./no/such/model"], "base model folder ./no/such/model does not exist"),
    "qlora-on-cpu": (None, ["--method", "qlora"], "method=qlora needs a CUDA GPU"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clear_error_with_nothing_left_behind(mg_home, tiny_model, sample_data, tmp_path, case):
    make_data, extra, expected = CASES[case]
    data = make_data(tmp_path) if make_data else sample_data
    args = ["train", "--base-model", str(tiny_model), "--dataset", str(data), "--max-steps", "2",
            "--no-system-metrics", "--no-carbon", *extra]
    proc = invoke_cli(args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert _registered(mg_home) == []
    assert _runs() == []  # rejected before any MLflow run was created


def test_unreachable_hub_model_fails_the_run_with_the_error_recorded(mg_home, sample_data, tmp_path):
    proc = invoke_cli(["train", "--base-model", "no-such-org/no-such-model", "--dataset", str(sample_data),
                       "--max-steps", "2", "--no-system-metrics", "--no-carbon"], cwd=tmp_path,
                      env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "could not load base model 'no-such-org/no-such-model'" in proc.stderr
    (run,) = _runs()
    assert run.info.status == "FAILED"
    assert "could not load base model" in run.data.tags["mg.error"]
    import mlflow

    client = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert "error.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert _registered(mg_home) == []


def test_ctrl_c_ends_the_run_killed(mg_home, tiny_model, sample_data, tmp_path):
    proc = subprocess.Popen([str(BIN / "model-garden"), "train", "--base-model", str(tiny_model),
                             "--dataset", str(sample_data), "--max-steps", "100000", "--no-system-metrics",
                             "--no-carbon"], cwd=tmp_path, env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import mlflow

        client = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
        deadline = time.time() + 120
        run = None
        while time.time() < deadline:
            runs = _runs()
            if runs and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= 3:
                run = runs[0]
                break
            time.sleep(0.5)
        assert run is not None, "training never logged a loss"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED"
    assert "Ctrl-C" in run.data.tags["mg.error"]
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) >= 3  # metrics kept
    assert _registered(mg_home) == []
