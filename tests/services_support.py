"""PostgreSQL and S3 (moto's server mode) for the team-server tests, started once per session.

The clusters are session fixtures (imported by conftest.py, so every module shares one); each module
gets its own database (``postgres``) and a freshly reset S3 with an empty ``mg-artifacts`` bucket
(``s3``), so no module sees another's runs or objects.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from procs import free_port, stop_process

BIN = Path(sys.executable).parent

INITDB = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), "initdb")
BUCKET = "mg-artifacts"
_databases = itertools.count(1)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
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


@pytest.fixture(scope="session")
def pg_cluster():
    """A PostgreSQL server on 127.0.0.1: (bin folder, port)."""
    if not Path(INITDB).exists():
        if os.environ.get("CI"):  # .ci/test installs PostgreSQL: missing it in CI is a failure
            pytest.fail("PostgreSQL server binaries (initdb) are not installed")
        pytest.skip("PostgreSQL server binaries (initdb) are not installed")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="mg-pg-"))  # outside pytest's 0700 tmp: the server runs as postgres
    data = root / "data"
    port = free_port()
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
        yield bindir, port
    finally:
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    """moto's S3 server on 127.0.0.1: its endpoint URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/moto-api/", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def postgres(pg_cluster):
    """A new database for this module: its SQLAlchemy URI (user mg, no password)."""
    bindir, port = pg_cluster
    name = f"mlflow{next(_databases)}"
    subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mg", name],
                   check=True, capture_output=True)
    return f"postgresql+psycopg2://mg@127.0.0.1:{port}/{name}"


@pytest.fixture(scope="module")
def s3(moto_endpoint):
    """(boto3 client, env for the server): S3 emptied for this module, with an empty bucket mg-artifacts."""
    import boto3

    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST"), timeout=30)
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "MLFLOW_S3_ENDPOINT_URL": moto_endpoint}
    client = boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client, env
