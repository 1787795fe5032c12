"""Two trainings logging to the same embedded sqlite store at once both finish with complete histories."""

from __future__ import annotations

import os

from reltrain_support import client, runs, start_training, stop

STEPS = 40


def test_two_trainings_share_one_fresh_sqlite_store(tiny_model, sample_data, tmp_path):
    home = tmp_path / "shared-home"  # both start on a store that does not exist yet (schema race too)
    env = {"MG_HOME": str(home), "MLFLOW_TRACKING_URI": None}
    procs = []
    for i in range(2):
        work = tmp_path / f"job{i}"
        work.mkdir()
        procs.append(start_training(["--base-model", str(tiny_model), "--dataset", str(sample_data),
                                     "--max-steps", str(STEPS), "--no-system-metrics", "--no-carbon",
                                     "--run-name", f"job{i}", "--register-as", f"concurrent-{i}",
                                     "--save-steps", "0"], cwd=work, env=env))
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            stop(p)
    logs = [(tmp_path / f"job{i}" / "train.log").read_text() for i in range(2)]
    assert codes == [0, 0], [log[-3000:] for log in logs]
    assert not any("database is locked" in log for log in logs)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    finished = runs(uri)
    assert sorted(r.info.run_name for r in finished) == ["job0", "job1"]
    for run in finished:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client(uri).get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, STEPS + 1)), run.info.run_name  # complete history
        assert run.data.metrics["train_steps"] == STEPS
    versions = [str(client(uri).get_latest_versions(f"concurrent-{i}")[0].version) for i in range(2)]
    assert versions == ["1", "1"]
