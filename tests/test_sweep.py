"""`model-garden sweep`: Optuna trials as nested MLflow runs on a real sqlite store, tiny model, CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import BIN
from vision_support import shapes, tiny_vl  # noqa: F401 - fixtures


def _spec(tiny_model, data, **kw):
    from mg_mlflow.experiment.sweep import SweepSpec

    options = {"base_model": str(tiny_model), "dataset": str(data), "max_steps": 8, "batch_size": 4,
               "learning_rate": 3e-3, "system_metrics": False, "carbon": False, "eval_split": 0.2,
               "eval_steps": 4, **kw.pop("options", {})}
    return SweepSpec(options=options, **kw)


def _children(client, parent_id):
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=100)


def test_grid_2x2_makes_four_nested_children_and_registers_the_best(mg_home, tiny_model, sample_data):
    from mlflow.tracking import MlflowClient

    from mg_mlflow.experiment.sweep import run_sweep

    lines = []
    spec = _spec(tiny_model, sample_data, grid=["learning_rate=1e-5,3e-3", "lora_r=4,8"], pruner="none",
                 register="best", options={"register_as": "tiny-sweep"})
    result = run_sweep(spec, echo=lines.append)
    client = MlflowClient()
    parent = client.get_run(result.parent_run_id)
    children = _children(client, result.parent_run_id)
    assert len(children) == 4 and parent.data.tags["mg.run_kind"] == "sweep"
    assert parent.info.run_name == "sweep tiny lora: lr, r (grid)"
    assert parent.data.params["sweep.learning_rate"] == "1e-05,0.003" and parent.data.params["max_steps"] == "8"
    assert parent.info.status == "FINISHED"
    assert {c.info.status for c in children} == {"FINISHED"}
    names = sorted(c.info.run_name for c in children)
    assert all(n.startswith("trial ") and " lr=" in n and " r=" in n for n in names), names
    assert {(c.data.params["learning_rate"], c.data.params["lora_r"]) for c in children} == {
        ("1e-05", "4"), ("1e-05", "8"), ("0.003", "4"), ("0.003", "8")}
    losses = {c.info.run_id: c.data.metrics["eval/loss_final"] for c in children}
    best_id = min(losses, key=losses.get)
    assert parent.data.tags["mg.sweep.best_run_id"] == best_id == result.best["run_id"]
    assert parent.data.metrics["sweep/best/eval/loss_final"] == pytest.approx(losses[best_id])
    best_child = client.get_run(best_id)
    assert best_child.data.params["learning_rate"] == "0.003"  # 1e-5 barely moves the loss in 8 steps
    # objective per trial as a metric history the UI can plot, one point per trial
    assert len(client.get_metric_history(parent.info.run_id, "sweep/objective")) == 4
    # only the best trial became a version, and it points back at its trial run
    versions = client.search_model_versions("name='tiny-sweep'")
    assert len(versions) == 1 and versions[0].tags["mg.run_id"] == best_id
    assert result.registered == "models:/tiny-sweep/1"
    assert best_child.data.tags["mg.registered_version"] == "1"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert artifacts == {"plots/objective_per_trial.png", "plots/param_importance.png"}
    table = json.loads(open(client.download_artifacts(parent.info.run_id, "sweep/trials.json")).read())
    assert [t["state"] for t in table["trials"]] == ["COMPLETE"] * 4
    assert any("best so far" in line for line in lines)


def test_search_prunes_bad_trials(mg_home, tiny_model, sample_data):
    from mlflow.tracking import MlflowClient

    from mg_mlflow.experiment.sweep import run_sweep

    spec = _spec(tiny_model, sample_data, space=["learning_rate=loguniform:1e-7:1e-2"], trials=4,
                 pruner="median", pruner_startup_trials=1, register="none",
                 options={"max_steps": 12, "eval_steps": 2})
    result = run_sweep(spec, echo=lambda _: None)
    client = MlflowClient()
    children = _children(client, result.parent_run_id)
    pruned = [c for c in children if c.data.tags.get("mg.trial_state") == "PRUNED"]
    assert len(children) == 4 and pruned, [(c.info.run_name, c.data.tags.get("mg.trial_state")) for c in children]
    for c in pruned:
        assert c.info.status == "KILLED"
        stopped = int(c.data.tags["mg.sweep.pruned_at_step"])
        assert stopped < 12 and c.data.metrics["train_steps"] == stopped  # stopped early, record kept
    best = client.get_run(result.best["run_id"])
    assert all(best.data.metrics["eval/loss_final"] <= c.data.metrics["eval/loss_final"]
               for c in children if c.data.tags["mg.trial_state"] == "COMPLETE")
    assert client.get_run(result.parent_run_id).data.metrics["sweep/trials_pruned"] == len(pruned)


def test_failed_trial_does_not_stop_the_sweep(mg_home, tiny_model, sample_data):
    from mlflow.tracking import MlflowClient

    from mg_mlflow.experiment.sweep import run_sweep

    # learning_rate=1e30 diverges: the recipe fails inside its run (a bad config is refused before any run)
    spec = _spec(tiny_model, sample_data, grid=["learning_rate=3e-3,1e30"], pruner="none", register="none",
                 metric="loss_final", options={"eval_split": 0.0, "eval_steps": 0})
    result = run_sweep(spec, echo=lambda _: None)
    client = MlflowClient()
    by_lr = {float(c.data.params.get("learning_rate")): c for c in _children(client, result.parent_run_id)}
    assert by_lr[1e30].info.status == "FAILED" and "diverged" in by_lr[1e30].data.tags["mg.error"]
    assert by_lr[3e-3].info.status == "FINISHED" and by_lr[3e-3].data.metrics["train/loss_final"] > 0
    assert result.best["run_id"] == by_lr[3e-3].info.run_id
    assert sorted(o.state for o in result.outcomes) == ["COMPLETE", "FAIL"]


def test_carbon_budget_stops_new_trials(mg_home, tiny_model, sample_data):
    from mlflow.tracking import MlflowClient

    from mg_mlflow.experiment.sweep import run_sweep

    spec = _spec(tiny_model, sample_data, grid=["seed=1,2,3"], pruner="none", register="none",
                 metric="loss_final", max_emissions_kg=1e-12,
                 options={"carbon": True, "carbon_measure_secs": 1, "eval_split": 0.0, "eval_steps": 0})
    result = run_sweep(spec, echo=lambda _: None)
    client = MlflowClient()
    children = _children(client, result.parent_run_id)
    parent = client.get_run(result.parent_run_id)
    assert len(children) == 1  # the first trial measured > 1e-12 kg: no second one started
    spent = children[0].data.metrics["system/carbon/total_emissions_mg"]
    assert spent > 1e-6  # mg: > 1e-12 kg
    assert parent.data.metrics["sweep/total_emissions_mg"] == pytest.approx(spent)
    assert parent.data.metrics["sweep/total_energy_j"] == pytest.approx(
        children[0].data.metrics["system/carbon/total_energy_j"])
    assert "carbon budget" in parent.data.tags["mg.sweep.stopped"] and "carbon budget" in result.stopped_reason


def test_ctrl_c_marks_killed_and_resume_skips_finished_trials(mg_home, tiny_model, sample_data):
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # grid order (seed 42): max_steps=8 first, then the long trial that is interrupted
    cmd = [str(BIN / "model-garden"), "sweep", "--base-model", str(tiny_model), "--dataset", str(sample_data),
           "--grid", "max_steps=200,8", "--metric", "loss_final", "--pruner", "none", "--register", "none",
           "--no-system-metrics", "--no-carbon", "--learning-rate", "1e-3"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = MlflowClient()
    deadline = time.time() + 300
    long_run = None
    try:
        while time.time() < deadline and long_run is None:
            time.sleep(1)
            for exp in client.search_experiments():
                for r in client.search_runs([exp.experiment_id], "params.max_steps = '200'"):
                    if client.get_metric_history(r.info.run_id, "train/loss"):
                        long_run = r
        assert long_run is not None, "the long trial never started training"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    parent_id = long_run.data.tags["mlflow.parentRunId"]
    killed = client.get_run(long_run.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["mg.trial_state"] == "INTERRUPTED"
    parent = client.get_run(parent_id)
    assert parent.info.status == "KILLED" and "--resume" in parent.data.tags["mg.sweep.stopped"]
    short_before = [c for c in _children(client, parent_id) if c.data.params.get("max_steps") == "8"]
    assert len(short_before) == 1 and short_before[0].info.status == "FINISHED"

    resumed = subprocess.run([str(BIN / "model-garden"), "sweep", "--resume", parent_id], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "1 of 2 trial(s) already done" in resumed.stdout
    children = _children(client, parent_id)
    by_steps = {}
    for c in children:
        by_steps.setdefault(c.data.params.get("max_steps"), []).append(c.info.status)
    assert by_steps["8"] == ["FINISHED"]  # the finished trial was not run again
    assert sorted(by_steps["200"]) == ["FINISHED", "KILLED"]
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_bad_sweep_options_are_reported_before_anything_runs(mg_home, tiny_model, sample_data):
    from conftest import invoke_cli as run_cli

    base = ["sweep", "--base-model", str(tiny_model), "--dataset", str(sample_data)]
    proc = run_cli([*base, "--grid", "lora_rr=8,16", "--space", "learning_rate=normal:1:2"])
    assert proc.returncode == 2 and "lora_rr" in proc.stderr and "not a training option" in proc.stderr
    proc = run_cli([*base, "--eval-split", "0", "--grid", "lora_r=8,16"])  # eval/loss_final, no eval set on purpose
    assert proc.returncode == 2 and "needs an evaluation set" in proc.stderr and "--metric train/loss_final" in proc.stderr
    proc = run_cli([*base, "--grid", "lora_r=8,16", "--metric", "loss_final", "--objective", "kto"])
    assert proc.returncode == 2 and "objective kto trains on unpaired" in proc.stderr  # the training objective
    proc = run_cli([*base, "--eval-split", "0.2", "--space", "learning_rate=loguniform:1e-3:1e-5", "--trials", "2"])
    assert proc.returncode == 2 and "must be below HIGH" in proc.stderr
    assert not (mg_home / "optuna.db").exists()


def test_mlproject_sweep_entry_point(mg_home, tiny_model, sample_data, tmp_path):
    """`mlflow run . -e sweep`: no declared parameter, so one not given is absent (not ""); sweep options
    keep their names (max_emissions_kg -> --max-emissions-kg), training fields become --set; the run
    MLflow created is the parent of the trials."""
    import yaml
    from mlflow.tracking import MlflowClient

    from conftest import ROOT

    entry = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["sweep"]
    assert not entry.get("parameters") and "--if-given" not in entry["command"]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(BIN / "mlflow"), "run", str(ROOT), "-e", "sweep", "--env-manager", "local",
           "-P", f"base_model={tiny_model}", "-P", f"dataset={sample_data}", "-P", "max_steps=4",
           "-P", "grid=seed=1,2", "-P", "trials=2", "-P", "metric=loss_final", "-P", "pruner=none",
           "-P", "register=none", "-P", "max_emissions_kg=1.0", "-P", "lora_r=4",
           "-P", "carbon=false", "-P", "system_metrics=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    parents = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id], "tags.mg.run_kind = 'sweep'")]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    params = parents[0].data.params
    assert (params["sweep.trials"], params["sweep.max_emissions_kg"], params["sweep.metric"],
            params["sweep.pruner"], params["sweep.register"]) == ("2", "1.0", "train/loss_final", "none", "none")
    children = _children(client, parents[0].info.run_id)
    assert sorted(c.data.params["seed"] for c in children) == ["1", "2"]
    assert all(c.info.status == "FINISHED" and c.data.params["max_steps"] == "4" for c in children)
    assert all(c.data.params["lora_r"] == "4" and "system/carbon/total_emissions_mg" not in c.data.metrics for c in children)


def test_parallel_workers_share_one_study(mg_home, tiny_model, sample_data):
    from mlflow.tracking import MlflowClient

    from mg_mlflow.experiment.sweep import run_sweep

    spec = _spec(tiny_model, sample_data, grid=["seed=1,2,3"], pruner="none", register="none", parallel=2,
                 metric="loss_final", options={"max_steps": 4, "eval_split": 0.0, "eval_steps": 0})
    result = run_sweep(spec, echo=lambda _: None)
    client = MlflowClient()
    children = _children(client, result.parent_run_id)
    # every grid point exactly once, whichever process ran it
    assert sorted(c.data.params["seed"] for c in children) == ["1", "2", "3"]
    assert all(c.info.status == "FINISHED" for c in children)
    assert client.get_run(result.parent_run_id).data.metrics["sweep/trials_complete"] == 3


def test_vision_sweep_trains_vision_children(mg_home, tiny_vl, shapes):
    from mlflow.tracking import MlflowClient

    from mg_mlflow.experiment.sweep import SweepSpec, run_sweep

    options = {"base_model": str(tiny_vl), "dataset": str(shapes), "max_steps": 3, "batch_size": 4,
               "max_pixels": 12544, "max_seq_length": 256, "sample_images": 0, "system_metrics": False,
               "carbon": False}
    spec = SweepSpec(options={**options, "register_as": "vl-sweep"}, modality="vision",
                     grid=["learning_rate=1e-3,3e-3"], pruner="none", register="best", metric="loss_final")
    result = run_sweep(spec, echo=lambda _: None)
    client = MlflowClient()
    children = _children(client, result.parent_run_id)
    assert len(children) == 2 and {c.data.tags["mg.modality"] for c in children} == {"vision"}
    assert all(c.info.status == "FINISHED" and c.data.metrics["train/loss_final"] > 0 for c in children)
    assert client.get_run(result.parent_run_id).data.tags["mg.modality"] == "vision"
    mv = client.get_model_version("vl-sweep", "1")  # the best vision trial, verified and registered
    assert result.registered == "models:/vl-sweep/1" and mv.tags["mg.modality"] == "vision"


def test_a_plain_grid_sweep_runs_and_logs_the_defaults_it_chose(mg_home, tiny_model, sample_data):
    """The obvious command: no evaluation set and no pruner named. The objective (eval/loss_final)
    needs an evaluation set, so 0.2 is held out; a grid tries every combination, so nothing is pruned;
    both choices are logged on the parent run."""
    from mlflow.tracking import MlflowClient

    from conftest import invoke_cli

    proc = invoke_cli(["sweep", "--base-model", str(tiny_model), "--dataset", str(sample_data), "--max-steps", "6",
                       "--grid", "learning_rate=1e-3,3e-3", "--grid", "lora_r=4,8", "--register", "none",
                       "--no-carbon", "--no-system-metrics"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    (parent,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id],
                                                                                    "tags.mg.run_kind = 'sweep'")]
    children = _children(client, parent.info.run_id)
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert all(c.data.params["eval_split"] == "0.2" and c.data.metrics["eval/loss_final"] > 0 for c in children)
    chosen = json.loads(parent.data.tags["mg.sweep.defaults"])
    assert chosen["eval_split"].startswith("0.2") and "needs an evaluation set" in chosen["eval_split"]
    assert chosen["pruner"].startswith("none") and "grid" in chosen["pruner"]
    assert parent.data.params["sweep.pruner"] == "none" and parent.data.params["eval_split"] == "0.2"
    assert "eval_split=0.2" in proc.stdout


def test_a_search_with_a_pruner_gets_intermediate_evaluations(mg_home, tiny_model, sample_data):
    from mg_mlflow.errors import MGError
    from mg_mlflow.experiment.sweep import SweepSpec, validate

    base = {"base_model": str(tiny_model), "dataset": str(sample_data), "max_steps": "10"}
    spec = SweepSpec(options=dict(base), space=["learning_rate=loguniform:1e-4:1e-2"], trials=3)
    _, _, _, cfg, direction = validate(spec)
    assert (spec.pruner, cfg.eval_split, cfg.eval_steps, direction) == ("median", 0.2, 2, "minimize")
    assert set(spec.chosen) == {"eval_split", "pruner", "eval_steps"}
    # what the user said stays: an explicit --eval-steps 0 with the median pruner is refused
    spec = SweepSpec(options={**base, "eval_split": "0.2", "eval_steps": "0"}, pruner="median",
                     space=["learning_rate=loguniform:1e-4:1e-2"], trials=3)
    with pytest.raises(MGError, match="eval_steps is 0"):
        validate(spec)


def test_runs_list_shows_a_pruned_trial_as_pruned(mg_home):
    """A pruned trial ends KILLED in MLflow with mg.trial_state=PRUNED (trial.py); `runs list` says pruned."""
    from mlflow.tracking import MlflowClient

    from conftest import invoke_cli
    from mg_mlflow.tracking.run import ensure_experiment

    client = MlflowClient()
    exp = ensure_experiment("model-garden")
    for name, status, state in (("trial-a", "KILLED", "PRUNED"), ("trial-b", "KILLED", "INTERRUPTED")):
        run = client.create_run(exp, run_name=name, tags={"mg.run_kind": "sweep_trial", "mg.trial_state": state})
        client.set_terminated(run.info.run_id, status)
    out = invoke_cli(["runs", "list"]).stdout
    rows = {line.split("│")[2].strip(): line.split("│")[3].strip() for line in out.splitlines()
            if line.count("│") > 4 and "trial" in line}
    assert rows == {"trial-a": "pruned", "trial-b": "KILLED"}, out


def test_a_study_stored_with_the_metric_named_objective_resumes():
    from mg_mlflow.experiment.sweep import _spec_from_dict

    assert _spec_from_dict({"objective": "loss_final", "trials": 2}).metric == "loss_final"
