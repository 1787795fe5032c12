"""A diverged training (learning rate 1e30: the loss turns NaN after one step) is recorded as one:
exit 2 naming the step, the run FAILED, no 0.0 logged for a NaN loss, nothing registered; in a sweep
the diverged trial fails and the sound one is still picked and registered. CPU, tiny model, sqlite."""

from __future__ import annotations

import math

import pytest
from reltrain_support import client, run_cli, runs


def _registered(name: str) -> list:
    return client().search_model_versions(f"name = '{name}'")


@pytest.mark.parametrize("extra", [[], ["--metrics-sync-steps", "3"], ["--on-divergence", "continue"]],
                         ids=["stop", "stop-read-every-3-steps", "continue"])
def test_diverged_run_exits_2_fails_logs_no_zero_and_registers_nothing(mg_home, tiny_model, sample_data, extra):
    proc = run_cli(["train", "--base-model", str(tiny_model), "--dataset", str(sample_data),
                    "--max-steps", "6", "--learning-rate", "1e30", "--no-system-metrics", "--no-carbon",
                    "--register-as", "tiny-diverged", *extra])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "training diverged at step " in out and "--learning-rate" in out, out
    step = int(out.split("training diverged at step ", 1)[1].split()[0])
    (run,) = runs()
    assert run.info.status == "FAILED"
    assert f"training diverged at step {step}" in run.data.tags.get("mg.error", ""), run.data.tags
    history = sorted(client().get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    values = [m.value for m in history]
    assert values and math.isfinite(values[0]) and values[0] > 1.0, values
    assert 0.0 not in values, values  # a NaN is logged as NaN (or not at all), never as 0
    assert run.data.metrics.get("train/loss_final", float("nan")) != 0.0
    if "continue" in extra:  # trained to the end, every step's NaN recorded, still nothing registered
        assert "on_divergence=continue" in out and run.data.tags["mg.diverged_at"] == f"at step {step}"
        assert [m.step for m in history] == [1, 2, 3, 4, 5, 6] and math.isnan(values[-1]), values
    else:  # stopped where it diverged (at the next read of the loss), not at max_steps
        assert history[-1].step < 6, [(m.step, m.value) for m in history]
    if "--metrics-sync-steps" in extra:
        assert "read back from the device every 3 steps" in out, out
    assert not _registered("tiny-diverged")


def test_sweep_fails_the_diverged_trial_and_registers_the_sound_one(mg_home, tiny_model, sample_data):
    from mlflow.tracking import MlflowClient

    from mg_mlflow.experiment.sweep import SweepSpec, run_sweep

    options = {"base_model": str(tiny_model), "dataset": str(sample_data), "max_steps": 6, "batch_size": 4,
               "system_metrics": False, "carbon": False, "register_as": "tiny-sweep-div"}
    spec = SweepSpec(options=options, grid=["learning_rate=1e30,2e-3"], metric="loss_final", pruner="none",
                     register="best")
    lines = []
    result = run_sweep(spec, echo=lines.append)
    text = "\n".join(lines)
    c = MlflowClient()
    exp = c.get_run(result.parent_run_id).info.experiment_id
    children = c.search_runs([exp], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    by_lr = {ch.data.params["learning_rate"]: ch for ch in children}
    assert set(by_lr) == {"1e+30", "0.002"}, list(by_lr)
    bad, good = by_lr["1e+30"], by_lr["0.002"]
    assert bad.info.status == "FAILED" and bad.data.tags["mg.trial_state"] == "FAIL", bad.data.tags
    assert "training diverged" in bad.data.tags["mg.error"]
    assert "FAIL" in text and "training diverged" in text, text
    assert good.info.status == "FINISHED" and result.best["run_id"] == good.info.run_id, text
    import optuna

    from mg_mlflow.experiment.sweep import optuna_storage

    study = optuna.load_study(study_name=result.study_name, storage=optuna_storage())
    states = {t.params["learning_rate"]: t.state.name for t in study.trials}
    assert states == {1e30: "FAIL", 2e-3: "COMPLETE"}, states
    (version,) = _registered("tiny-sweep-div")
    assert version.run_id == good.info.run_id
