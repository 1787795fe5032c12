"""Serving footprint: a running deployment tracked as an MLflow run of its own.

``start_serving_monitor(deployment, metrics_url, pid)`` starts ``python -m
mg_mlflow.tracking.serving_monitor`` in its own session. That process creates a run in the
``model-garden-serving`` experiment, tagged with the deployment and the model versions it serves (and
tags each served version ``mg.serving_run`` = that run id), then every interval logs (step = point
index): cumulative energy and emissions (codecarbon, machine-wide, offline), power per
component, requests and generated tokens (summed over label sets from vLLM's Prometheus
``/metrics``), and emissions per 1k generated tokens. When the served pid dies or the monitor gets
SIGTERM/SIGINT it logs totals, the codecarbon CSV and a BoAmps-style report, and ends the run
FINISHED. A missing or partial metrics endpoint is tolerated (``serving/endpoint_up`` = 0); a
codecarbon failure is said once and the counters are still logged.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from mg_mlflow.env import mg_home, setup_env
from mg_mlflow import metric_names as mn
from mg_mlflow.tracking import boamps
from mg_mlflow.tracking.run import ensure_experiment, use_tracking_uri

SERVING_EXPERIMENT = "model-garden-serving"
COUNTERS = {"requests": "vllm:request_success_total", "generated_tokens": "vllm:generation_tokens_total",
            "prompt_tokens": "vllm:prompt_tokens_total"}


def start_serving_monitor(deployment: dict, metrics_url: str, pid: int, *, interval_s: float = 15.0,
                          country: str = "USA", region: str = "", pue: float = 1.0,
                          experiment: str = SERVING_EXPERIMENT, log_path: str | Path | None = None,
                          run_id_file: str | Path | None = None) -> subprocess.Popen | None:
    """Start the monitor process for ``pid``; None (with a warning) when it cannot start.

    Stop it with ``proc.terminate()`` (it then ends its run FINISHED) or let it notice the pid exit.
    """
    name = str(deployment.get("name") or f"pid{pid}")
    log = Path(log_path) if log_path else mg_home() / "serving" / f"{name}.carbon.log"
    cmd = [sys.executable, "-m", "mg_mlflow.tracking.serving_monitor", "--deployment", json.dumps(deployment, default=str),
           "--metrics-url", metrics_url, "--pid", str(int(pid)), "--interval", str(float(interval_s)),
           "--country", country, "--region", region, "--pue", str(float(pue)), "--experiment", experiment]
    if run_id_file:
        cmd += ["--run-id-file", str(run_id_file)]
    try:
        log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # private: it names endpoints and runs
        with os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    except OSError as exc:
        warnings.warn(f"serving carbon monitor not started: {exc}", RuntimeWarning, stacklevel=2)
        return None


# ---------------------------------------------------------------- Prometheus text

def _samples(text: str):
    """(sample name, value) of every sample, read with prometheus_client's parser. A text it rejects
    (a partial answer, a line it cannot read) is read again line by line, skipping the bad lines."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        families = []
        for line in text.splitlines():
            try:
                families += list(text_string_to_metric_families(line + "\n"))
            except ValueError:
                continue
    for family in families:
        for sample in family.samples:
            yield sample.name, sample.value


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum every sample of each metric over its label sets (NaN samples and bad lines skipped)."""
    out: dict[str, float] = {}
    for name, value in _samples(text):
        if not math.isnan(value):
            out[name] = out.get(name, 0.0) + value
    return out


def served_key(pid: int) -> str | None:
    """The API key the served process was started with (its ``VLLM_API_KEY``): a protected deployment
    answers /metrics only with it. Read from the process's environment (the same user's), so the key
    never travels on a command line."""
    import psutil

    try:
        return psutil.Process(int(pid)).environ().get("VLLM_API_KEY") or None
    except (psutil.Error, OSError, ValueError):
        return None


def scrape(url: str, timeout: float = 3.0, api_key: str | None = None) -> dict[str, float] | None:
    """The endpoint's samples, or None when it does not answer."""
    import urllib.request

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:  # noqa: S310
            return parse_prometheus(resp.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None


class CounterTotals:
    """Totals of monotonic counters across scrapes, surviving a restart of the server (counter reset)."""

    def __init__(self):
        self.totals = {k: 0.0 for k in COUNTERS}
        self._last: dict[str, float] = {}

    def update(self, samples: dict[str, float]) -> None:
        for key, name in COUNTERS.items():
            if name not in samples:
                continue  # a partial endpoint: keep what we had
            value, last = samples[name], self._last.get(key, 0.0)
            self.totals[key] += value - last if value >= last else value
            self._last[key] = value


def pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


# ---------------------------------------------------------------- the monitor process

class ServingMonitor:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.deployment: dict[str, Any] = json.loads(args.deployment)
        self.stop_event = threading.Event()
        self.stop_reason = "served process exited"
        self.counters = CounterTotals()
        self.endpoint_up = 0.0
        self.tracker: Any = None
        self.handler: Any = None
        self.sources: dict[str, str] = {}
        self.intervals = boamps.Intervals()
        self.error: str | None = None
        self.started = time.monotonic()
        self.step = 0
        self.out_dir = Path(args.out_dir or self._default_out_dir())

    def _default_out_dir(self) -> Path:
        return mg_home() / "serving" / f"{self.deployment.get('name') or self.args.pid}-carbon-{os.getpid()}"

    def _on_signal(self, signum, frame) -> None:
        self.stop_reason = f"monitor got {signal.Signals(signum).name}"
        self.stop_event.set()

    def _fail(self, what: str, exc: BaseException | str) -> None:
        if self.error is None:
            self.error = f"{what}: {exc}"
            print(f"carbon tracking stopped ({self.error}); request and token counts go on", flush=True)
            self.client.set_tag(self.run_id, "mg.carbon.status", f"failed: {self.error}"[:4000])
        tracker, self.tracker = self.tracker, None
        if tracker is not None:
            try:
                tracker.stop()
            except Exception:  # noqa: BLE001
                pass

    def _create_run(self) -> None:
        from mlflow.tracking import MlflowClient

        use_tracking_uri()
        self.client = MlflowClient()
        d, versions = self.deployment, (self.deployment.get("versions") or self.deployment.get("resolved") or [])
        served = [f"{v.get('name')}/{v.get('version')}" for v in versions if v.get("name")]
        tags = {"mg.kind": "serving", "mg.deployment": str(d.get("name", "")), "mg.served_versions": json.dumps(served),
                "mg.served_models": ",".join(map(str, d.get("served_model_names") or d.get("served_models") or [])),
                "mg.serving.uris": json.dumps(d.get("uris") or [u.get("uri") for u in versions]),
                "mg.serving.pid": str(self.args.pid), "mg.serving.metrics_url": self.args.metrics_url,
                "mg.serving.endpoint": f"http://{d.get('host', '')}:{d.get('port', '')}",
                "mg.training_runs": json.dumps([v.get("run_id") for v in versions if v.get("run_id")])}
        exp_id = ensure_experiment(self.args.experiment)
        run = self.client.create_run(exp_id, run_name=f"serve-{d.get('name') or self.args.pid}", tags=tags)
        self.run_id = run.info.run_id
        if self.args.run_id_file:
            Path(self.args.run_id_file).write_text(self.run_id)
        print(f"serving carbon run {self.run_id}", flush=True)
        for v in versions:
            try:
                self.client.set_model_version_tag(v["name"], str(v["version"]), "mg.serving_run", self.run_id)
            except Exception as exc:  # noqa: BLE001 - a version that is gone does not stop monitoring
                print(f"could not tag {v.get('name')}/{v.get('version')}: {exc}", flush=True)

    def _start_tracker(self) -> None:
        try:
            self.handler = boamps.recording_output()
            self.tracker = boamps.make_tracker(self.out_dir, self.handler, country=self.args.country,
                                               region=self.args.region, pue=self.args.pue,
                                               measure_secs=min(self.args.interval, 15.0),
                                               project_name=f"serve-{self.deployment.get('name', '')}")
            self.tracker.start()
            if getattr(self.tracker, "_start_time", 0) is None:
                raise RuntimeError("codecarbon did not start")
            self.sources = boamps.tracker_sources(self.tracker)
        except Exception as exc:  # noqa: BLE001 - fail soft
            self._fail("codecarbon could not start", exc)
            return
        src = boamps.intensity_source(self.args.country, self.args.region, True)
        self.client.log_batch(self.run_id, tags=_tags({**boamps.source_tags(self.sources, src),
                                                       "mg.carbon.status": "ok", "mg.carbon.country": self.args.country}))

    def _carbon_record(self, final: bool) -> dict | None:
        if self.tracker is None:
            return None
        try:
            before = len(self.handler.records)
            self.tracker.stop() if final else self.tracker.flush()
            if len(self.handler.records) <= before:
                raise RuntimeError("codecarbon produced no data")
            return self.handler.records[-1]
        except Exception as exc:  # noqa: BLE001
            self._fail("codecarbon flush failed", exc)
            return None

    def measure(self, final: bool = False) -> None:
        from mlflow.entities import Metric

        samples = scrape(self.args.metrics_url, api_key=served_key(self.args.pid))
        self.endpoint_up = 0.0 if samples is None else 1.0
        if samples:
            self.counters.update(samples)
        totals = self.counters.totals
        metrics = {"serving/endpoint_up": self.endpoint_up, "serving/requests": totals["requests"],
                   "serving/generated_tokens": totals["generated_tokens"], "serving/prompt_tokens": totals["prompt_tokens"]}
        record = self._carbon_record(final)
        if record is not None:
            metrics.update(self.intervals.metrics(record, totals["generated_tokens"],
                                                  per_tokens=mn.carbon(mn.MG_PER_1K_GENERATED_TOKENS)))
        self.step += 1  # the n-th point (MLflow's "relative time" axis gives the seconds)
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, self.step) for k, v in metrics.items()])

    def finish(self, status: str = "FINISHED") -> None:
        from mlflow.entities import Metric

        totals = self.counters.totals
        summary = {"serving/total_requests": totals["requests"], "serving/total_generated_tokens": totals["generated_tokens"],
                   "serving/total_prompt_tokens": totals["prompt_tokens"],
                   "serving/duration_s": time.monotonic() - self.started}
        if self.intervals.previous is not None:
            summary.update(boamps.totals_from_record(self.intervals.previous, totals["generated_tokens"],
                                                     boamps.is_estimated(self.sources),
                                                     per_tokens=mn.carbon(mn.MG_PER_1K_GENERATED_TOKENS)))
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, self.step) for k, v in summary.items()],
                              tags=_tags({"mg.serving.end_reason": self.stop_reason}))
        csv_path = self.out_dir / boamps.CSV_NAME
        if csv_path.is_file():
            self.client.log_artifact(self.run_id, str(csv_path), "carbon")
        if self.intervals.previous is not None:
            run = self.client.get_run(self.run_id)
            versions = (self.deployment.get("versions") or self.deployment.get("resolved") or [])
            served = [f"{v.get('name')}/{v.get('version')}" for v in versions]
            extra = {"requests": totals["requests"], "generated_tokens": totals["generated_tokens"],
                     "served_models": served}
            report = boamps.build_report(self.intervals.previous, run_id=self.run_id, stage="inference",
                                         tags=run.data.tags, extra=extra)
            path = boamps.write_report(report, self.out_dir / "boamps_report.json")
            self.client.log_artifact(self.run_id, str(path), "carbon")
        self.client.set_terminated(self.run_id, status)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._create_run()
        try:
            self._start_tracker()
            next_at = time.monotonic() + self.args.interval
            while not self.stop_event.is_set() and pid_alive(self.args.pid):
                if time.monotonic() >= next_at:
                    self.measure()
                    next_at = time.monotonic() + self.args.interval
                self.stop_event.wait(min(0.5, self.args.interval))
            self.measure(final=True)
        except BaseException as exc:
            self.client.set_tag(self.run_id, "mg.error", f"{type(exc).__name__}: {exc}"[:4000])
            self.finish("FAILED")
            raise
        self.finish()
        print(f"serving carbon run {self.run_id} finished ({self.stop_reason})", flush=True)
        return 0


def _tags(tags: dict[str, str]):
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in tags.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mg_mlflow.tracking.serving_monitor",
                                     description="Track a serving process's energy, emissions and tokens in MLflow.")
    parser.add_argument("--deployment", required=True, help="JSON: name, uris, versions [{uri,name,version,run_id}], ...")
    parser.add_argument("--metrics-url", required=True, help="vLLM Prometheus endpoint, e.g. http://127.0.0.1:8000/metrics")
    parser.add_argument("--pid", type=int, required=True, help="the served process: stop when it exits")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between logged points")
    parser.add_argument("--country", default="USA", help="ISO alpha-3 country for the grid carbon intensity")
    parser.add_argument("--region", default="")
    parser.add_argument("--pue", type=float, default=1.0)
    parser.add_argument("--experiment", default=SERVING_EXPERIMENT)
    parser.add_argument("--out-dir", default="", help="where codecarbon writes its CSV")
    parser.add_argument("--run-id-file", default="", help="write the MLflow run id here once created")
    args = parser.parse_args(argv)
    setup_env()
    return ServingMonitor(args).run()


if __name__ == "__main__":
    sys.exit(main())
