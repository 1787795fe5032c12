"""A remote tracking server stopped mid-run: training goes on and every metric reaches the server.

The test stops a real ``mlflow server`` for ``MG_TEST_OUTAGE_S`` seconds (default 15)
while a training (slowed to ~8 steps/s by an extra callback) logs to it, then restarts it on the same
port over the same sqlite store and artifact folder. The training usually ends during the outage, so
its final metrics, artifacts and FINISHED status also wait for the server.

The training runs with MLflow's HTTP retry back-off factor 1 (``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``,
default 2): a call that fails while the server is down is retried at once, then after 2, 4, 8, 16,
32, 64 s (~126 s in all) instead of 4, 8, ..., 120 s (~244 s). That still spans the outage and the
restart, and the training ends sooner after the restart (test time). The outage outlasts the rest of
the training (~12 s of steps after the server stops) and is short enough that the call waiting on it
retries soon after the restart.
"""

from __future__ import annotations

import os
import sys
import time

from reltrain_support import MlflowServer, client, runs, stop, wait_for

OUTAGE_S = float(os.environ.get("MG_TEST_OUTAGE_S", "15"))
STEPS = 100  # ~13 s at 8 steps/s: on a quiet machine the training ends while the server is down

SLOW_TRAIN = """
import sys, time
from transformers import TrainerCallback
import mg_mlflow.training.common as common

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.1)

_orig = common.training_callbacks
def _slowed(*args, **kwargs):
    metrics_cb, carbon_cb, callbacks = _orig(*args, **kwargs)
    return metrics_cb, carbon_cb, [*callbacks, Slow()]
common.training_callbacks = _slowed
from mg_mlflow.cli import main
sys.argv = ["model-garden", *sys.argv[1:]]
main()
"""


def _lines(path) -> int:
    return sum(1 for _ in open(path)) if path.is_file() else 0


def test_metrics_logged_during_an_outage_all_reach_the_server(tiny_model, sample_data, tmp_path):
    import subprocess

    from mg_mlflow.tracking.spool import read_spool

    t0 = time.time()
    server = MlflowServer(tmp_path / "server").start()
    print(f"\nserver up in {time.time() - t0:.0f} s")
    script = tmp_path / "slow_train.py"
    script.write_text(SLOW_TRAIN)
    out_dir = tmp_path / "out"
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.url, "MG_HOME": str(tmp_path / "home"),
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")}
    env.pop("MLFLOW_RUN_ID", None)
    log = open(tmp_path / "train.log", "w")
    proc = subprocess.Popen([sys.executable, str(script), "train", "--base-model", str(tiny_model),
                             "--dataset", str(sample_data), "--max-steps", str(STEPS), "--no-system-metrics",
                             "--no-carbon", "--register-as", "none", "--output-dir", str(out_dir)],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run = wait_for(lambda: next((r for r in runs(server.url) if len(client(server.url).get_metric_history(
            r.info.run_id, "train/loss")) >= 3), None), 180, "three losses on the server")
        print(f"first losses {time.time() - t0:.0f} s")
        spool = out_dir / f"mlflow_spool_{run.info.run_id}.jsonl"
        server.stop()
        down_at, lines_at_stop = time.time() * 1000, _lines(spool)
        time.sleep(OUTAGE_S)
        lines_before_restart, up_at = _lines(spool), time.time() * 1000
        assert proc.poll() is None or proc.returncode == 0  # the outage did not crash the training
        server.start()
        print(f"restarted in {time.time() - up_at / 1000:.0f} s")
        restarted_at = time.time()
        assert proc.wait(timeout=400) == 0, (tmp_path / "train.log").read_text()[-3000:]
        print(f"\ntraining ended {time.time() - restarted_at:.0f} s after the restart")
        c = client(server.url)
        finished = c.get_run(run.info.run_id)
        assert finished.info.status == "FINISHED"  # the status update survived too
        logged, bad = read_spool(spool)
        on_server = [(m.key, m.step, m.value, m.timestamp) for key in {p["key"] for p in logged}
                     for m in c.get_metric_history(run.info.run_id, key)]
        expected = [(p["key"], p["step"], p["value"], p["timestamp"]) for p in logged]
        during = [p for p in expected if down_at <= p[3] <= up_at]
        print(f"\noutage {OUTAGE_S:.0f} s: metrics logged {len(set(expected))}, on the server {len(on_server)}, "
              f"logged while the server was down {len(during)}")
        assert bad == 0 and lines_before_restart > lines_at_stop  # training went on during the outage
        assert len(during) >= 10
        # a point logged twice in the same millisecond is one point for MLflow (it stores each
        # (key, step, value, timestamp) once): compare distinct points
        assert len(on_server) == len(set(on_server)) == len(set(expected))  # logged == on the server
        assert set(on_server) == set(expected)
        steps = sorted(s for k, s, _, _ in expected if k == "train/loss")
        assert steps == list(range(steps[0], steps[0] + len(steps))) and steps[-1] == STEPS  # no gap
        assert finished.data.metrics["train_steps"] == STEPS
    finally:
        stop(proc)
        server.stop()
