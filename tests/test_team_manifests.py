"""The team's cluster recipes parse and fit together: compose file and Kubernetes manifests for the
tracking server (+ PostgreSQL + S3), MLflow's Kubernetes backend config and job template, the KubeRay
RayCluster. Commands are parsed by the real CLI and secrets come only from variables/Secrets."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest
import yaml

from conftest import ROOT

SECRET_VARS = {"PGPASSWORD", "POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
               "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MINIO_ROOT_PASSWORD",
               "MINIO_ROOT_USER", "MLFLOW_TRACKING_PASSWORD", "HF_TOKEN"}


def _server_options(argv: list[str]) -> dict:
    """Parse a `model-garden server ...` command with the real click command; returns its params."""
    from mg_mlflow.cli.server import server_cmd

    assert argv[:2] == ["model-garden", "server"], argv
    ctx = server_cmd.make_context("server", list(argv[2:]))
    return ctx.params


def _check_server_plan(params: dict, tmp_path, monkeypatch) -> list[str]:
    from mg_mlflow.team.server import plan_server

    monkeypatch.setenv("MG_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "long-enough-password")
    plan = plan_server(params["host"], params["port"], params["backend_store_uri"], params["artifacts_destination"],
                       params["auth"], params["workers"], params["auth_database_uri"], params["allowed_hosts"])
    assert plan.auth and "--app-name" in plan.argv and "--serve-artifacts" in plan.argv
    return plan.argv


def test_compose_wires_server_postgres_and_s3_with_secrets_from_env(tmp_path, monkeypatch):
    text = (ROOT / "serving" / "compose.yaml").read_text()
    spec = yaml.safe_load(text)
    services = spec["services"]
    assert set(services) == {"postgres", "s3", "create-bucket", "mlflow"}
    mlflow = services["mlflow"]
    params = _server_options(mlflow["command"])
    _check_server_plan(params, tmp_path, monkeypatch)
    db = urlsplit(params["backend_store_uri"])
    assert db.hostname == "postgres" and db.password is None and db.path == "/" + services["postgres"]["environment"]["POSTGRES_DB"]
    bucket = urlsplit(params["artifacts_destination"]).netloc
    assert services["create-bucket"]["entrypoint"][-1] == f"s3/{bucket}"
    env = mlflow["environment"]
    assert urlsplit(env["MLFLOW_S3_ENDPOINT_URL"]).hostname == "s3"
    for name, value in {**env, **services["postgres"]["environment"], **services["s3"]["environment"]}.items():
        if name in SECRET_VARS:
            assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*)?\}", str(value)), f"{name} must come from serving/.env"
    # the database password the server gets is the one postgres was created with
    assert env["PGPASSWORD"].split(":")[0] == services["postgres"]["environment"]["POSTGRES_PASSWORD"].split(":")[0]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert mlflow["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    assert all(p.startswith("127.0.0.1:") for p in mlflow["ports"])
    assert "COPY mg_mlflow" in mlflow["build"]["dockerfile_inline"]


def _docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _containers(doc):
    return doc["spec"]["template"]["spec"]["containers"]


def _secret_refs(containers):
    for c in containers:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                yield e["name"], ref


def test_kubernetes_manifests_fit_together(tmp_path, monkeypatch):
    path = ROOT / "serving" / "k8s" / "mlflow.yaml"
    docs = _docs(path)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        assert d["metadata"]["namespace"] == "mlflow"
    assert set(by_kind["Service"]) == {"postgres", "s3", "mlflow"}
    header_keys = set(re.findall(r"--from-literal=([A-Z_]+)=", path.read_text()))
    for name, svc in by_kind["Service"].items():
        workload = {**by_kind.get("StatefulSet", {}), **by_kind.get("Deployment", {})}[name]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"] == labels == svc["spec"]["selector"]
        port_names = {p["name"] for c in _containers(workload) for p in c.get("ports", [])}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    for d in docs:
        if d["kind"] in ("StatefulSet", "Deployment", "Job"):
            for env_name, ref in _secret_refs(_containers(d)):
                assert ref["name"] == "model-garden-tracking" and ref["key"] in header_keys, (env_name, ref)
            for c in _containers(d):
                for e in c.get("env", []):
                    if e["name"] in SECRET_VARS:
                        assert "valueFrom" in e, f"{e['name']} must come from the Secret"
    server = _containers(by_kind["Deployment"]["mlflow"])[0]
    params = _server_options(server["command"])
    _check_server_plan(params, tmp_path, monkeypatch)
    assert urlsplit(params["backend_store_uri"]).hostname == "postgres"
    env = {e["name"]: e for e in server["env"]}
    s3 = urlsplit(env["MLFLOW_S3_ENDPOINT_URL"]["value"])
    assert s3.hostname == "s3" and s3.port == by_kind["Service"]["s3"]["spec"]["ports"][0]["port"]
    bucket = urlsplit(params["artifacts_destination"]).netloc
    assert f"s3/{bucket}" in _containers(by_kind["Job"]["create-bucket"])[0]["command"][-1]
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"


def test_mlflow_kubernetes_backend_config_and_job_template(monkeypatch):
    from mlflow.projects import _parse_kubernetes_config
    from mlflow.projects._project_spec import load_project

    folder = ROOT / "projects" / "kubernetes"
    monkeypatch.chdir(folder)  # MLflow resolves kube-job-template-path from the working directory
    config = _parse_kubernetes_config(json.loads((folder / "kubernetes_config.json").read_text()))
    job = config["kube-job-template"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    # the fields MLflow's Kubernetes runner fills in (mlflow/projects/kubernetes.py)
    assert job["kind"] == "Job" and job["metadata"]["namespace"] and job["metadata"]["name"]
    assert {"name", "image", "command", "env"} <= set(container)
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert all(e.get("valueFrom") for e in container["env"] if e["name"] in SECRET_VARS)
    project = load_project(str(folder))
    assert project.docker_env and project.docker_env["image"]  # the Kubernetes backend needs a docker env
    entry = project.get_entry_point("main")
    command = entry.compute_command({"base_model": "Qwen/Qwen2.5-0.5B-Instruct", "dataset": "/data/train.jsonl"}, None)
    # the command is a real `model-garden train` (mg_mlflow's __main__) whose options all exist
    argv = command.split()
    assert argv[:4] == ["python", "-m", "mg_mlflow", "train"]
    from mg_mlflow.cli import cli
    from mg_mlflow.team.submit import check_command

    check_command(argv[3:], cli)


def test_kuberay_cluster_offers_the_training_slot_and_gpus():
    from mg_mlflow.team.ray_local import SLOT

    spec = _docs(ROOT / "projects" / "kuberay" / "raycluster.yaml")[0]
    assert spec["apiVersion"] == "ray.io/v1" and spec["kind"] == "RayCluster"
    import ray

    assert spec["spec"]["rayVersion"] == ray.__version__
    head = spec["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no training on the head
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports["dashboard"] == 8265
    groups = {g["groupName"]: g for g in spec["spec"]["workerGroupSpecs"]}
    cpu_resources = json.loads(json.loads(groups["cpu"]["rayStartParams"]["resources"]))
    assert cpu_resources == {SLOT: 1}
    gpu = groups["gpu"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu["rayStartParams"]["num-gpus"]) == limits["nvidia.com/gpu"]
    images = {c["image"] for g in [head, *groups.values()] for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1


@pytest.mark.parametrize("path", ["serving/compose.yaml", "serving/k8s/mlflow.yaml", "projects/kuberay/raycluster.yaml",
                                  "projects/kubernetes/kubernetes_job_template.yaml"])
def test_no_literal_secret_in_the_recipes(path):
    text = (ROOT / path).read_text()
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        assert not re.search(r"(PASSWORD|SECRET[A-Z_]*|TOKEN)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9]{6,}", line), line
