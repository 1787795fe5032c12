"""At scale: a real `mlflow server` on PostgreSQL with an S3 artifact store (moto's server mode).

Training logs to the server, the registered adapter's artifacts land in the S3 bucket, and a machine
with an empty cache resolves `models:/NAME@ALIAS` from the server and gets the same logits.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import BIN, run_cli
from procs import stop_process
from services_support import free_port, postgres, s3, wait_healthy  # noqa: F401 - fixtures

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def mlflow_server(postgres, s3, tmp_path_factory):
    _, s3_env = s3
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", postgres,
                             "--artifacts-destination", "s3://mg-artifacts", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            env={**os.environ, **s3_env}, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, log, timeout=180)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def test_train_register_and_resolve_through_postgres_and_s3(mlflow_server, s3, tiny_model, sample_data,
                                                             tmp_path, monkeypatch):
    import mlflow

    s3_client, _ = s3
    home = tmp_path / "trainer-home"
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "MG_HOME": str(home)}
    proc = run_cli(["train", "--base-model", str(tiny_model), "--dataset", str(sample_data), "--max-steps", "20",
                    "--learning-rate", "3e-3", "--register-as", "srv-lora", "--alias", "champion",
                    "--no-system-metrics", "--no-carbon"], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    client = mlflow.tracking.MlflowClient(mlflow_server)
    mv = client.get_model_version_by_alias("srv-lora", "champion")
    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "loss")) >= 20
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket="mg-artifacts").get("Contents", [])]
    assert any(k.endswith("adapter_model.safetensors") for k in keys), keys[:20]
    assert any(k.endswith("config/train_config.yaml") for k in keys)
    assert not any(str(tmp_path) in k for k in keys)

    # another machine: empty cache, only the tracking URI; the base resolves through the registry too
    other = tmp_path / "other-home"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MG_HOME", str(other))
    mlflow.set_tracking_uri(mlflow_server)
    from mg_mlflow.registry.loader import load_model_dir, load_transformers
    from mg_mlflow.registry.resolve import resolve_model_uri

    resolved = resolve_model_uri("models:/srv-lora@champion")
    assert resolved.version == str(mv.version) and str(other) in str(resolved.local_dir)
    assert resolved.metadata["base_model"]["uri"].startswith("models:/tiny-base/")
    model, tok = load_transformers("models:/srv-lora@champion")
    local, _ = load_model_dir(home / "outputs" / run.info.run_id / "model")
    import torch

    enc = tok("Reverse the word.\nriver", return_tensors="pt")
    with torch.no_grad():
        assert (model(**enc).logits - local(**enc).logits).abs().max().item() <= 1e-5
