"""The metric spool batches fast steps' points and sends everything on flush (a real sqlite MLflow store)."""

from __future__ import annotations

import time


def test_points_of_fast_steps_go_in_few_batches_and_flush_sends_at_once(mg_home, tmp_path):
    import mlflow

    from mg_mlflow.tracking.spool import MetricSpool, read_spool

    client = mlflow.tracking.MlflowClient()
    run = client.create_run(client.create_experiment("spool"))
    spool = MetricSpool(tmp_path / "spool.jsonl", run.info.run_id, linger_secs=0.5)
    try:
        began = time.monotonic()
        for step in range(1, 41):  # 40 steps in ~0.8 s
            spool.add({"train/loss": 1.0 / step, "train/reward": float(step)}, step=step)
            time.sleep(0.02)
        took = time.monotonic() - began
        started = time.monotonic()
        assert spool.flush(timeout=30)
        assert time.monotonic() - started < 0.4, "flush waited for the linger"
        # one send per 0.5 s of steps (plus the first and the flush), not one per step
        assert 2 <= spool.sends <= 2 + took / 0.5, (spool.sends, took)
        assert spool.sent == spool.logged == 80
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(1, 41))
        sends = spool.sends
        # after a quiet spell a point goes at once; the next one waits for the linger after that send
        spool.linger_secs = 2.0  # wide enough for a slow poll below
        time.sleep(2.1)
        spool.add({"train/loss": 0.01}, step=41)
        _wait_until(lambda: spool.sends == sends + 1 and not spool.pending)
        spool.add({"train/loss": 0.005}, step=42)
        time.sleep(0.2)
        assert spool.pending == 1 and spool.sends == sends + 1
        _wait_until(lambda: not spool.pending)
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 42
    finally:
        assert spool.close(timeout=30)
    assert len(read_spool(tmp_path / "spool.jsonl")[0]) == 82


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the spool did not send in time"
        time.sleep(0.01)
