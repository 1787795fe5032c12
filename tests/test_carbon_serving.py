"""Serving footprint monitor (a real separate process, real codecarbon, a real Prometheus page served by
a small HTTP server process standing in for vLLM) and ``model-garden carbon report`` in every format.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import invoke_cli, train_tiny

EXPERIMENT = "carbon-report"
MODEL = "carbon-served"

FAKE_VLLM = r'''
import http.server, os, sys, threading, time
stop_file, count = sys.argv[1], {"n": 0}

class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/metrics":
            self.send_response(404); self.end_headers(); return
        count["n"] += 1
        n = count["n"]
        body = (
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
            "# TYPE vllm:generation_tokens_total counter\n"
            f'vllm:generation_tokens_total{{model_name="carbon-served"}} {100.0 * n}\n'
            f'vllm:request_success_total{{finished_reason="stop",model_name="carbon-served"}} {2.0 * n}\n'
            f'vllm:request_success_total{{finished_reason="length",model_name="carbon-served"}} {1.0 * n}\n'
            f'vllm:prompt_tokens_total{{model_name="carbon-served"}} {50.0 * n}\n'
            'vllm:num_requests_running{model_name="carbon-served"} 1.0\n').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Metrics)
print(server.server_address[1], flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
deadline = time.time() + 400
while not os.path.exists(stop_file) and time.time() < deadline:
    time.sleep(0.1)
server.shutdown()
print(count["n"], flush=True)
'''


@pytest.fixture(scope="module")
def trained(module_home, tiny_model, sample_data):
    return train_tiny(tiny_model, sample_data, carbon=True, carbon_interval_steps=5, carbon_measure_secs=0.2,
                      max_steps=15, register_as=MODEL, experiment=EXPERIMENT)


def _client():
    from mlflow.tracking import MlflowClient

    from mg_mlflow.tracking.run import use_tracking_uri

    use_tracking_uri()
    return MlflowClient()


def _wait_points(client, run_id_file: Path, key: str, n: int, timeout: float = 300.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if run_id_file.is_file() and run_id_file.read_text():
            run_id = run_id_file.read_text()
            if len(client.get_metric_history(run_id, key)) >= n:
                return run_id
        time.sleep(0.3)
    raise AssertionError(f"monitor logged fewer than {n} points of {key} in {timeout}s")


def _deployment(trained, pid: int, port: int) -> dict:
    uri = f"models:/{MODEL}/{trained.registered_version}"
    return {"name": "carbon-test", "uris": [uri], "port": port, "host": "127.0.0.1", "pid": pid,
            "served_model_names": [MODEL],
            "versions": [{"uri": uri, "name": MODEL, "version": trained.registered_version, "run_id": trained.run_id}]}


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """A monitor that follows a fake vLLM until that process exits by itself."""
    from mg_mlflow.tracking.serving_monitor import start_serving_monitor

    tmp = tmp_path_factory.mktemp("serve")
    stop_file = tmp / "stop"
    fake = subprocess.Popen([sys.executable, "-c", FAKE_VLLM, str(stop_file)], stdout=subprocess.PIPE, text=True)
    monitor = None
    try:
        port = int(fake.stdout.readline())
        monitor = start_serving_monitor(_deployment(trained, fake.pid, port), f"http://127.0.0.1:{port}/metrics",
                                        fake.pid, interval_s=1.0, country="FRA", log_path=tmp / "monitor.log",
                                        run_id_file=tmp / "run_id")
        assert monitor is not None
        run_id = _wait_points(_client(), tmp / "run_id", "system/carbon/emissions_mg", 3)
        stop_file.write_text("stop")
        scrapes = int(fake.stdout.readline())
        fake.wait(timeout=30)
        rc = monitor.wait(timeout=180)  # it notices the pid is gone by itself
        yield {"run_id": run_id, "rc": rc, "scrapes": scrapes, "log": (tmp / "monitor.log").read_text()}
    finally:
        for proc in (monitor, fake):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_monitor_follows_the_served_process_until_it_exits(served, trained, tmp_path):
    from mg_mlflow.tracking import boamps

    assert served["rc"] == 0, served["log"]
    client = _client()
    run = client.get_run(served["run_id"])
    assert run.info.status == "FINISHED"
    tags, m = run.data.tags, run.data.metrics
    assert tags["mg.deployment"] == "carbon-test" and tags["mg.kind"] == "serving"
    assert json.loads(tags["mg.served_versions"]) == [f"{MODEL}/{trained.registered_version}"]
    assert tags["mg.serving.end_reason"] == "served process exited"
    assert client.get_experiment(run.info.experiment_id).name == "model-garden-serving"

    history = sorted(client.get_metric_history(served["run_id"], "system/carbon/emissions_mg"), key=lambda p: p.step)
    assert len(history) >= 3 and [p.step for p in history] == sorted({p.step for p in history})
    assert all(b.value >= a.value for a, b in zip(history, history[1:])) and history[-1].value > 0
    # counters: summed over label sets, equal to what the server served on its last answered scrape
    n = served["scrapes"]
    assert m["serving/total_generated_tokens"] == 100.0 * n
    assert m["serving/total_requests"] == 3.0 * n and m["serving/total_prompt_tokens"] == 50.0 * n
    assert m["serving/endpoint_up"] == 0.0  # the last scrape found the server gone
    assert m["system/carbon/mg_per_1k_generated_tokens"] == pytest.approx(
        m["system/carbon/total_emissions_mg"] / m["serving/total_generated_tokens"] * 1000, rel=1e-9)
    record = boamps.record_from_csv(client.download_artifacts(served["run_id"], "carbon/emissions.csv", str(tmp_path)))
    assert m["system/carbon/total_emissions_mg"] == pytest.approx(record["emissions"] * 1e6, rel=1e-9)
    report = json.loads(Path(client.download_artifacts(served["run_id"], "carbon/boamps_report.json",
                                                       str(tmp_path))).read_text())
    assert report["task"]["taskStage"] == "inference" and report["task"]["nbRequest"] == 3.0 * n
    assert report["modelGarden"]["estimated"] is True

    mv = client.get_model_version(MODEL, trained.registered_version)
    assert mv.tags["mg.serving_run"] == served["run_id"]


def test_monitor_ends_on_sigterm_and_tolerates_a_missing_endpoint(module_home, tmp_path):
    from mg_mlflow.tracking.serving_monitor import start_serving_monitor

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    monitor = None
    try:
        deployment = {"name": "no-endpoint", "uris": [], "versions": [], "port": 9, "host": "127.0.0.1"}
        monitor = start_serving_monitor(deployment, "http://127.0.0.1:9/metrics", sleeper.pid, interval_s=1.0,
                                        log_path=tmp_path / "m.log", run_id_file=tmp_path / "run_id")
        client = _client()
        run_id = _wait_points(client, tmp_path / "run_id", "system/carbon/energy_j", 2)
        monitor.send_signal(signal.SIGTERM)
        assert monitor.wait(timeout=60) == 0, (tmp_path / "m.log").read_text()
        assert sleeper.poll() is None  # the monitor never touches the served process
    finally:
        for proc in (monitor, sleeper):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mg.serving.end_reason"] == "monitor got SIGTERM"
    m = run.data.metrics
    assert m["serving/endpoint_up"] == 0.0 and m["serving/total_generated_tokens"] == 0.0
    assert m["system/carbon/total_energy_j"] > 0 and "system/carbon/mg_per_1k_generated_tokens" not in m


def test_prometheus_text_is_summed_over_labels():
    from mg_mlflow.tracking.serving_monitor import CounterTotals, parse_prometheus

    text = ('# TYPE vllm:generation_tokens_total counter\n'
            'vllm:generation_tokens_total{model_name="a"} 10\n'
            'vllm:generation_tokens_total{model_name="b {x}"} 5.5 1700000000\n'
            'garbage line\nvllm:request_success_total NaN\n')
    assert parse_prometheus(text) == {"vllm:generation_tokens_total": 15.5}
    totals = CounterTotals()
    for value in (10.0, 30.0, 5.0):  # the server restarted between the 2nd and 3rd scrape
        totals.update({"vllm:generation_tokens_total": value})
    assert totals.totals["generated_tokens"] == 35.0


def test_carbon_report_renders_in_every_format(served, trained, tmp_path):
    chart = tmp_path / "chart.png"
    table = invoke_cli(["carbon", "report", "--experiment", EXPERIMENT, "--chart", str(chart)],
                       env={"COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    assert trained.run_id[:8] in table.stdout and served["run_id"][:8] in table.stdout
    assert f"{MODEL}/{trained.registered_version}" in table.stdout and "estimated" in table.stdout
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    as_json = invoke_cli(["carbon", "report", "--model", MODEL, "--format", "json", "--no-chart"])
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    client = _client()
    train_m = client.get_run(trained.run_id).data.metrics
    serve_m = client.get_run(served["run_id"]).data.metrics
    (version,) = data["versions"]
    assert version["training_runs"] == [trained.run_id] and version["serving_runs"] == [served["run_id"]]
    # the report's JSON is in kg, the runs' metrics in mg
    assert version["training_emissions_kg"] == pytest.approx(train_m["system/carbon/total_emissions_mg"] / 1e6)
    assert version["serving_emissions_kg"] == pytest.approx(serve_m["system/carbon/total_emissions_mg"] / 1e6)
    assert version["total_emissions_kg"] == pytest.approx(version["training_emissions_kg"] + version["serving_emissions_kg"])
    assert version["generated_tokens"] == serve_m["serving/total_generated_tokens"] and version["estimated"] is True
    assert {r["kind"] for r in data["runs"]} == {"training", "serving"}

    out = tmp_path / "boamps.json"
    boamps = invoke_cli(["carbon", "report", "-e", EXPERIMENT, "-f", "boamps", "-o", str(out), "--no-chart"])
    assert boamps.returncode == 0, boamps.stderr
    reports = json.loads(out.read_text())["reports"]
    by_stage = {r["task"]["taskStage"]: r for r in reports}
    assert set(by_stage) == {"training", "inference"}
    assert by_stage["training"]["header"]["reportId"] == trained.run_id
    assert by_stage["training"]["modelGarden"]["emissionsKgCO2eq"]["value"] == pytest.approx(
        train_m["system/carbon/total_emissions_mg"] / 1e6, rel=1e-9)
    assert by_stage["inference"]["modelGarden"]["energyKWh"]["cpu"]["estimated"] is True

    missing = invoke_cli(["carbon", "report", "--experiment", "no-such-experiment"])
    assert missing.returncode == 2 and "no experiment named" in missing.stderr and "Traceback" not in missing.stderr
