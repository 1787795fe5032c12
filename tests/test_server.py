"""`model-garden server` for a team: MLflow's server on a real PostgreSQL with a real S3 store (moto),
basic auth on, schema by MLflow's migrations. Training, evaluation, the registry and deploy planning work against
it with nothing but MLFLOW_TRACKING_URI and MLflow's credential variables; artifacts land in the bucket.
"""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest

from conftest import BIN, run_cli
from services_support import free_port, postgres, s3, wait_healthy  # noqa: F401 - fixtures (one database and bucket per module)

ADMIN, ADMIN_PW = "admin", "admin-pw-4242"
DB_PW = "db-pw-not-in-argv-91"


def _get(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _start_server(args: list[str], env: dict, log: Path):
    import psutil

    port = free_port()
    proc = subprocess.Popen([str(BIN / "model-garden"), "server", "--port", str(port), *args],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_healthy(f"http://127.0.0.1:{port}/health", proc, log, timeout=300)
    return proc, f"http://127.0.0.1:{port}", psutil.Process(proc.pid).children(recursive=True)


def _stop_server(proc, tree):
    import psutil

    proc.send_signal(signal.SIGTERM)  # the CLI stops the whole server process group
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, f"server processes left behind: {alive}"


def _server_env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.update(extra, MG_HOME=str(home))
    return env


@pytest.fixture(scope="module")
def pg_server(postgres, s3, tmp_path_factory):  # noqa: F811
    _, s3_env = s3
    home = tmp_path_factory.mktemp("server-home")
    log = home / "server.log"
    uri = postgres.replace("mg@", f"mg:{DB_PW}@")  # the password must move to PGPASSWORD
    proc, url, tree = _start_server(["--backend-store-uri", uri, "--artifacts-destination", "s3://mg-artifacts/team"],
                                    _server_env(home, **s3_env), log)
    try:
        yield {"url": url, "home": home, "log": log, "tree": tree, "pg": postgres}
    finally:
        _stop_server(proc, tree)


def test_training_registry_and_deploy_against_postgres_and_s3(pg_server, s3, tiny_model, sample_data, tmp_path,
                                                              monkeypatch):  # noqa: F811
    url = pg_server["url"]
    client_env = {"MLFLOW_TRACKING_URI": url, "MG_HOME": str(tmp_path / "client-home")}
    # the client has no S3 credentials and no database access: everything goes through the server
    train = run_cli(["train", "--base-model", str(tiny_model), "--dataset", str(sample_data), "--max-steps", "12",
                     "--learning-rate", "3e-3", "--register-as", "team-lora", "--alias", "champion",
                     "--no-system-metrics", "--no-carbon"], env=client_env, cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]

    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    client = mlflow.tracking.MlflowClient(url)
    mv = client.get_model_version_by_alias("team-lora", "champion")
    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "train/loss")) == 12
    s3_client, _ = s3
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket="mg-artifacts", Prefix="team/").get("Contents", [])]
    assert any(k.endswith("adapter_model.safetensors") for k in keys), keys[:20]
    assert any(k.endswith("config/train_config.yaml") for k in keys)

    plan = run_cli(["deploy", "models:/team-lora@champion", "--dry-run"], env=client_env)  # resolves through the server
    assert plan.returncode == 0 and "--enable-lora" in plan.stdout, plan.stdout + plan.stderr

    # another machine: empty cache, only the tracking URI; the base resolves through the registry too,
    # and the adapter from the bucket gives the trainer's own logits
    monkeypatch.setenv("MG_HOME", str(tmp_path / "other-home"))
    mlflow.set_tracking_uri(url)
    import torch

    from mg_mlflow.registry.loader import load_model_dir, load_transformers
    from mg_mlflow.registry.resolve import resolve_model_uri

    resolved = resolve_model_uri("models:/team-lora@champion")
    assert resolved.version == str(mv.version) and str(tmp_path / "other-home") in str(resolved.local_dir)
    assert resolved.metadata["base_model"]["uri"].startswith("models:/tiny-base/")
    model, tok = load_transformers("models:/team-lora@champion")
    local, _ = load_model_dir(tmp_path / "client-home" / "outputs" / run.info.run_id / "model")
    enc = tok("Reverse the word.\nriver", return_tensors="pt")
    with torch.no_grad():
        assert (model(**enc).logits - local(**enc).logits).abs().max().item() <= 1e-5

    # evaluation against the server: metrics on the model, the table in the bucket, tags on the version
    held = sample_data.parent / "held-team.jsonl"
    held.write_text("".join(sample_data.read_text().splitlines(keepends=True)[:6]))
    ev = run_cli(["evaluate", "models:/team-lora@champion", "--dataset", str(held), "--max-new-tokens", "4",
                  "--no-carbon", "--json"], env=client_env, cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    tags = client.get_model_version("team-lora", mv.version).tags
    eval_run = client.get_run(tags["mg.eval.last_run_id"])
    assert eval_run.info.status == "FINISHED" and "eval/exact_match" in eval_run.data.metrics
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket="mg-artifacts", Prefix="team/").get("Contents", [])]
    assert any(eval_run.info.run_id in k for k in keys)  # its artifacts (the per-example table) went to S3

    # schema created by MLflow's migrations; the DB password never reached the server's argv or the log
    import psycopg2

    dsn = pg_server["pg"].replace("postgresql+psycopg2", "postgresql")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT version_num FROM alembic_version")
        assert len(cur.fetchall()) == 1
    for proc in pg_server["tree"]:
        assert DB_PW not in " ".join(proc.cmdline())
    text = pg_server["log"].read_text()
    assert DB_PW not in text and "(password passed as PGPASSWORD)" in text


def test_basic_auth_rejects_without_credentials_and_accepts_mlflow_variables(tmp_path, tiny_model, sample_data):
    home = tmp_path / "auth-home"  # the embedded default: sqlite + artifacts in $MG_HOME, proxied; the
    # server creates a fresh schema itself (migrations are exercised by the PostgreSQL test)
    env = _server_env(home, MLFLOW_AUTH_ADMIN_USERNAME=ADMIN, MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PW)
    proc, url, tree = _start_server(["--auth", "--no-upgrade-db"], env, tmp_path / "auth.log")
    try:
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=5"
        assert _get(search) == 401
        assert _get(search, (ADMIN, "wrong-password")) == 401
        assert _get(search, (ADMIN, ADMIN_PW)) == 200
        no_creds = {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": ""}
        # every command, through one handler at the CLI's top: a sentence and exit 2, no traceback
        for args in (["runs", "list"], ["carbon", "report"],
                     ["train", "--base-model", str(tiny_model), "--dataset", str(sample_data), "--max-steps", "1"]):
            anon = run_cli(args, env=no_creds)
            out = anon.stderr + anon.stdout
            assert anon.returncode == 2, (args, out[-3000:])
            assert ("the tracking server needs credentials: set MLFLOW_TRACKING_USERNAME and "
                    "MLFLOW_TRACKING_PASSWORD") in " ".join(out.split()), (args, out[-3000:])
            assert "Traceback" not in out and len(out.splitlines()) <= 3, (args, out[-3000:])
        wrong = run_cli(["runs", "list"], env={**no_creds, "MLFLOW_TRACKING_USERNAME": ADMIN,
                                               "MLFLOW_TRACKING_PASSWORD": "wrong-password"})
        assert wrong.returncode == 2 and "refused the credentials of MLFLOW_TRACKING_USERNAME=admin" in \
            " ".join(wrong.stderr.split()), wrong.stderr[-3000:]
        creds = {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": ADMIN_PW}
        log_run = ("import mlflow; mlflow.set_experiment('model-garden')\n"
                   "with mlflow.start_run(run_name='with-credentials'):\n"
                   "    mlflow.log_metric('loss', 1.5, step=1); mlflow.log_text('hello', 'note.txt')")
        logged = subprocess.run([str(BIN / "python"), "-c", log_run], env={**os.environ, **creds},
                                capture_output=True, text=True, timeout=300)
        assert logged.returncode == 0, logged.stderr[-2000:]
        listed = run_cli(["runs", "list"], env=creds)
        assert listed.returncode == 0 and "with-credentials" in listed.stdout and "FINISHED" in listed.stdout
        notes = list((home / "mlartifacts").rglob("note.txt"))  # proxied into $MG_HOME's artifact folder
        assert len(notes) == 1 and notes[0].read_text() == "hello"
        assert (home / "server" / "basic_auth.db").is_file()
        assert ADMIN_PW not in (tmp_path / "auth.log").read_text()
        assert ADMIN_PW not in (home / "server" / "basic_auth.ini").read_text()
    finally:
        _stop_server(proc, tree)


def test_a_new_admin_password_is_reported_and_can_be_reset(tmp_path):
    """MLflow keeps the first admin password: a start with another one says so, `--reset-admin-password`
    changes it through MLflow's auth store; the auth database and mlflow.db are private (0600)."""
    home = tmp_path / "home"
    first, second = "first-admin-pw-1", "second-admin-pw-2"
    search = "/api/2.0/mlflow/experiments/search?max_results=5"
    proc, url, tree = _start_server(["--auth"], _server_env(home, MLFLOW_AUTH_ADMIN_USERNAME=ADMIN,
                                                            MLFLOW_AUTH_ADMIN_PASSWORD=first), tmp_path / "1.log")
    try:
        assert _get(url + search, (ADMIN, first)) == 200
    finally:
        _stop_server(proc, tree)
    assert "another password" not in (tmp_path / "1.log").read_text()
    for db in (home / "server" / "basic_auth.db", home / "mlflow.db"):
        assert db.stat().st_mode & 0o777 == 0o600, db

    env = _server_env(home, MLFLOW_AUTH_ADMIN_USERNAME=ADMIN, MLFLOW_AUTH_ADMIN_PASSWORD=second)
    proc, url, tree = _start_server(["--auth", "--no-upgrade-db"], env, tmp_path / "2.log")
    try:
        said = " ".join((tmp_path / "2.log").read_text().split())
        assert f"already has the admin '{ADMIN}' with another password" in said and "NOT in effect" in said
        assert "model-garden server --reset-admin-password" in said and second not in said
        assert _get(url + search, (ADMIN, second)) == 401 and _get(url + search, (ADMIN, first)) == 200
    finally:
        _stop_server(proc, tree)

    reset = run_cli(["server", "--reset-admin-password"], env=env)
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert f"admin '{ADMIN}': password changed in sqlite:///{home / 'server' / 'basic_auth.db'}" in reset.stdout
    proc, url, tree = _start_server(["--auth", "--no-upgrade-db"], env, tmp_path / "3.log")
    try:
        assert "another password" not in (tmp_path / "3.log").read_text()
        assert _get(url + search, (ADMIN, second)) == 200 and _get(url + search, (ADMIN, first)) == 401
    finally:
        _stop_server(proc, tree)


def test_server_plan_defaults_and_refusals(tmp_path, monkeypatch):
    from mg_mlflow.errors import MGError
    from mg_mlflow.team.server import plan_server

    monkeypatch.setenv("MG_HOME", str(tmp_path))
    for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    off = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # MLflow's unused job runner: 8 processes
    plan = plan_server()
    argv = plan.argv
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert argv[argv.index("--artifacts-destination") + 1] == str(tmp_path / "mlartifacts")
    assert "--serve-artifacts" in argv and argv[argv.index("--host") + 1] == "127.0.0.1" and plan.env == off
    plan = plan_server(backend_store_uri="postgresql://mlflow:s3cr3t@db:5432/mlflow")
    assert "s3cr3t" not in " ".join(plan.argv) and plan.env == {**off, "PGPASSWORD": "s3cr3t"}
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")  # the user's own choice wins
    assert plan_server().env == {}
    with pytest.raises(MGError, match="admin account"):
        plan_server(auth=True)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "short")
    with pytest.raises(MGError, match="at least 12 characters"):
        plan_server(auth=True)
    with pytest.raises(MGError, match="no bucket"):
        plan_server(artifacts_destination="s3://")
    with pytest.raises(MGError, match="expected a database URI"):
        plan_server(backend_store_uri="http://elsewhere:5000")
    dry = run_cli(["server", "--dry-run", "--port", "5055"], env={"MG_HOME": str(tmp_path)})
    assert dry.returncode == 0 and "mlflow server" in dry.stdout and "--port 5055" in dry.stdout
