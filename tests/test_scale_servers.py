"""At scale: a real `mlflow server` on PostgreSQL with an S3 artifact store (moto's server mode).

Training logs to the server, the registered adapter's artifacts land in the S3 bucket, and a machine
with an empty cache resolves `models:/NAME@ALIAS` from the server and gets the same logits.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import BIN, run_cli
from procs import stop_process

pytestmark = pytest.mark.services
INITDB = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), "initdb")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} not healthy in {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    if not Path(INITDB).exists():
        if os.environ.get("CI"):  # .ci/test installs PostgreSQL: missing it in CI is a failure
            pytest.fail("PostgreSQL server binaries (initdb) are not installed")
        pytest.skip("PostgreSQL server binaries (initdb) are not installed")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="mg-pg-"))  # outside pytest's 0700 tmp: the server runs as postgres
    data = root / "data"
    port = _free_port()
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        shutil.chown(root, "postgres")
    bindir = Path(INITDB).resolve().parent
    init = subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "mg"],
                          capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    log = data.parent / "pg.log"
    log.touch()
    log.chmod(0o666)
    subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mg", "mlflow"],
                       check=True, capture_output=True)
        yield f"postgresql+psycopg2://mg@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{port}/moto-api/", proc, log)
        env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
               "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        import boto3

        client = boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], aws_access_key_id="test",
                              aws_secret_access_key="test", region_name="us-east-1")
        client.create_bucket(Bucket="mg-artifacts")
        yield client, env
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def mlflow_server(postgres, s3, tmp_path_factory):
    _, s3_env = s3
    port = _free_port()
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", postgres,
                             "--artifacts-destination", "s3://mg-artifacts", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            env={**os.environ, **s3_env}, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{port}/health", proc, log, timeout=180)
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
