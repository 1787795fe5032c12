"""The names runs are logged under (``train/*``, ``eval/*``: the prefixes of transformers' W&B
integration), and runs logged before them still read: by ``runs show``/``runs list``, compare, a resume
and a ``--metric`` given the old way."""

from __future__ import annotations

import pytest

from conftest import invoke_cli

OLD_RUN = {"loss_first": 2.5, "loss_final": 1.25, "eval_loss_first": 2.75, "eval_loss_final": 1.5,
           "train_seconds": 7.0, "train_loss_mean": 1.75, "carbon/total_emissions_kg": 3.0e-6}


def test_trainer_keys_get_the_w_and_b_prefixes():
    import mg_mlflow.metric_names as mn

    assert {k: mn.trainer_metric(k) for k in ("loss", "eval_loss", "grad_norm", "rewards/chosen", "train_loss",
                                              "train_runtime", "eval_pairwise_accuracy")} == {
        "loss": "train/loss", "eval_loss": "eval/loss", "grad_norm": "train/grad_norm",
        "rewards/chosen": "train/rewards/chosen", "train_loss": "train/loss_mean",
        "train_runtime": "system/trainer/train_runtime_s",  # timings: on the System metrics tab
        "eval_pairwise_accuracy": "eval/pairwise_accuracy"}
    assert mn.trainer_metric("eval_samples_per_second") == "system/trainer/eval_samples_per_second"
    # a name given the old way means the same metric; a name that never had a prefix stays as it is
    assert [mn.canonical(k) for k in ("eval_loss_final", "loss_final", "train_loss_mean", "eval_runtime",
                                      "train_seconds", "eval/exact_match", "bleu")] == [
        "eval/loss_final", "train/loss_final", "train/loss_mean", "system/trainer/eval_runtime", "train_seconds",
        "eval/exact_match", "bleu"]
    assert mn.value({"loss_final": 1.0}, mn.LOSS_FINAL) == 1.0 and mn.value({}, mn.LOSS_FINAL, 9) == 9
    assert mn.value({"train/loss_final": 2.0, "loss_final": 1.0}, mn.LOSS_FINAL) == 2.0  # the new name first


def _old_run(client, exp: str, status: str = "FINISHED") -> str:
    """A run as Model Garden logged it before the prefixes: ``loss`` per step, ``loss_final``, ..."""
    run = client.create_run(exp, tags={"mg.run_kind": "training"})
    for step, value in ((1, 2.5), (2, 1.8), (3, 1.25)):
        client.log_metric(run.info.run_id, "loss", value, step=step)
    client.log_metric(run.info.run_id, "eval_loss", 1.5, step=3)
    for key, value in OLD_RUN.items():
        client.log_metric(run.info.run_id, key, value)
    client.log_param(run.info.run_id, "learning_rate", "0.001" if status == "FINISHED" else "0.003")
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_runs_logged_before_the_prefixes_still_read(mg_home):
    from mlflow.tracking import MlflowClient

    from mg_mlflow.experiment.compare import collect
    from mg_mlflow.experiment.compare_plot import loss_histories
    from mg_mlflow.tracking.run import ensure_experiment
    from mg_mlflow.training.resume import earlier_segment

    client = MlflowClient()
    exp = ensure_experiment("model-garden")
    a, b = _old_run(client, exp), _old_run(client, exp)
    shown = invoke_cli(["runs", "show", a])
    assert shown.returncode == 0, shown.stdout
    for key, value in (("train/loss_first", "2.5"), ("train/loss_final", "1.25"), ("eval/loss_final", "1.5")):
        assert any(key in line and value in line for line in shown.stdout.splitlines()), (key, shown.stdout)
    listed = invoke_cli(["runs", "list"])
    assert listed.returncode == 0 and listed.stdout.count("1.2500") == 2, listed.stdout
    data = collect([a, b])  # compare: both found as training runs, their final losses and emissions read
    assert [(r["loss_final"], r["eval_loss_final"]) for r in data["runs"]] == [(1.25, 1.5)] * 2
    assert loss_histories([a])[a] == [(1, 2.5), (2, 1.8), (3, 1.25)]
    # --resume of a run interrupted before the prefixes: its steps are not logged twice
    interrupted = earlier_segment(_old_run(client, exp, status="RUNNING"))
    assert interrupted.logged_through == 3 and interrupted.history["eval/loss"] == [(3, 1.5)]


def test_promote_reads_an_old_metric_name_as_the_new_one_and_says_so(mg_home):
    proc = invoke_cli(["promote", "no-such-model", "--metric", "eval_loss", "--dry-run"])
    assert proc.stderr.count("--metric eval_loss: read as eval/loss") == 1, proc.stderr
    assert proc.returncode == 2  # then the usual refusal: no such model


@pytest.mark.parametrize("metric", ["eval_loss_final", "eval/loss_final"])
def test_sweep_metric_named_the_old_way_means_the_new_name(mg_home, metric, tiny_model, sample_data):
    from mg_mlflow.experiment.sweep import SweepSpec, validate

    spec = SweepSpec(options={"base_model": str(tiny_model), "dataset": str(sample_data), "eval_split": 0.2},
                     grid=["lora_r=4,8"], metric=metric)
    validate(spec)
    assert spec.metric == "eval/loss_final"
    assert ("metric" in spec.chosen) == (metric == "eval_loss_final")  # printed once with the chosen defaults


def test_carbon_figures_convert_between_their_units():
    """Runs log mg and J; runs logged before carry kg and kWh (under ``system/carbon/`` or ``carbon/``):
    a reader asks for the unit it computes in and gets it from either."""
    import mg_mlflow.metric_names as mn

    old = {"system/carbon/total_emissions_kg": 4.4e-6, "carbon/total_energy_kwh": 1e-5,
           "carbon/generation/energy_kwh": 2e-6, "system/carbon/kg_per_1k_generated_tokens": 3e-7,
           "system/carbon/intensity_g_per_kwh": 440.0}
    assert mn.carbon_value(old, mn.TOTAL_EMISSIONS_MG) == pytest.approx(4.4)
    assert mn.carbon_value(old, mn.TOTAL_ENERGY_J) == pytest.approx(36.0)
    assert mn.carbon_value(old, mn.phase_name(mn.GENERATION, mn.ENERGY_J)) == pytest.approx(7.2)
    assert mn.carbon_value(old, mn.MG_PER_1K_GENERATED_TOKENS) == pytest.approx(0.3)
    assert mn.carbon_value(old, mn.INTENSITY_G_PER_KWH) == 440.0  # a rate keeps its unit
    new = {"system/carbon/total_emissions_mg": 4.4, "system/carbon/total_cpu_energy_j": 36.0}
    assert mn.carbon_value(new, mn.TOTAL_EMISSIONS_KG) == pytest.approx(4.4e-6)
    assert mn.carbon_value(new, mn.total_energy_name("cpu", "kwh")) == pytest.approx(1e-5)
    assert mn.carbon_value(new, mn.TOTAL_ENERGY_J, "none") == "none"
    # the same figure under both names (never logged so): the name asked for wins
    assert mn.carbon_value({**new, "system/carbon/total_emissions_kg": 1.0}, mn.TOTAL_EMISSIONS_MG) == 4.4
    tags = {"mg.carbon.total_emissions_kg": "4.4e-06"}  # a version registered before
    assert mn.carbon_value(tags, mn.TOTAL_EMISSIONS_MG, prefixes=(mn.CARBON_TAG_PREFIX,)) == pytest.approx(4.4)


def test_runs_logged_in_kg_and_kwh_read_in_the_new_units(mg_home):
    """``runs show`` prints the mg and J figures of an older run; compare, the carbon report and a resume
    read its kg and kWh converted."""
    from mlflow.tracking import MlflowClient

    from mg_mlflow.experiment.compare import collect
    from mg_mlflow.tracking import report
    from mg_mlflow.tracking.run import ensure_experiment
    from mg_mlflow.training.resume import earlier_segment

    client = MlflowClient()
    exp = ensure_experiment("model-garden")
    ids = {}
    for prefix in ("carbon/", "system/carbon/"):
        run = client.create_run(exp, tags={"mg.run_kind": "training"}, run_name=prefix)
        for step, kg in ((5, 2.2e-6), (10, 4.4e-6)):
            client.log_metric(run.info.run_id, prefix + "emissions_kg", kg, step=step)
            client.log_metric(run.info.run_id, prefix + "energy_kwh", kg / 0.44, step=step)
        client.log_metric(run.info.run_id, "train/loss", 1.0, step=10)
        ids[prefix] = run.info.run_id
    for run_id in ids.values():
        # a resumed run logs mg and J: it continues from the earlier segment's figures, converted
        assert earlier_segment(run_id).carbon == {"system/carbon/emissions_mg": pytest.approx(4.4),
                                                   "system/carbon/energy_j": pytest.approx(36.0)}
        client.log_metric(run_id, ("carbon/" if run_id == ids["carbon/"] else "system/carbon/") + "total_emissions_kg",
                          4.4e-6)
        client.set_terminated(run_id)
        shown = invoke_cli(["runs", "show", run_id])
        assert shown.returncode == 0, shown.stdout
        line = next(x for x in shown.stdout.splitlines() if "emissions_mg" in x)
        assert "system/carbon/emissions_mg" in line and "4.4" in line, shown.stdout
        assert any("system/carbon/energy_j" in x and "36" in x for x in shown.stdout.splitlines()), shown.stdout
    rows = collect(list(ids.values()))["runs"]
    assert [r["emissions_kg"] for r in rows] == [pytest.approx(4.4e-6)] * 2
    carbon = report.collect("model-garden")["runs"]
    assert sorted(r["emissions_kg"] for r in carbon) == [pytest.approx(4.4e-6)] * 2
    assert sorted(r["energy_kwh"] for r in carbon) == [pytest.approx(1e-5)] * 2
