"""Carbon during training: per-interval points, totals = codecarbon's CSV, version tags, fail-soft.

Real codecarbon (offline; on a machine without RAPL/GPU its figures are estimates), a real sqlite
MLflow store, real tiny training runs.
"""

from __future__ import annotations

import json
import warnings

import pytest

from conftest import train_tiny


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def test_training_logs_carbon_points_totals_and_version_tags(mg_home, tiny_model, sample_data, tmp_path):
    from mg_mlflow.tracking import boamps

    # points come every 5 steps but at most once per power sample (0.1 s here)
    result = train_tiny(tiny_model, sample_data, carbon=True, carbon_interval_steps=5, carbon_measure_secs=0.1,
                        carbon_country="FRA", max_steps=40, register_as="tiny-carbon")
    client = _client()

    # >= 2 points at increasing steps, cumulative figures never go down
    for key in ("system/carbon/emissions_mg", "system/carbon/energy_j"):
        history = sorted(client.get_metric_history(result.run_id, key), key=lambda m: m.timestamp)
        steps = [m.step for m in history]
        values = [m.value for m in history]
        assert len(history) >= 2, key
        assert steps == sorted(set(steps)) and steps[0] > 0 and steps[-1] == 40, steps
        assert all(s % 5 == 0 for s in steps), steps
        assert all(b >= a for a, b in zip(values, values[1:])), values
        assert values[-1] > 0
    for key in ("system/carbon/cpu_power_w", "system/carbon/ram_power_w", "system/carbon/gpu_power_w", "system/carbon/emissions_rate_g_per_h"):
        assert len(client.get_metric_history(result.run_id, key)) >= 2, key
    run = client.get_run(result.run_id)
    assert run.data.metrics["system/carbon/cpu_power_w"] > 0 and run.data.metrics["system/carbon/gpu_power_w"] == 0

    # totals are codecarbon's own last CSV record (kg, kWh), logged in mg and J
    csv_path = client.download_artifacts(result.run_id, "carbon/emissions.csv", str(tmp_path))
    record = boamps.record_from_csv(csv_path)
    m = run.data.metrics
    assert not [k for k in m if k.endswith("_kg") or "kg_per" in k or k.endswith("_energy_kwh")], sorted(m)
    assert m["system/carbon/total_emissions_mg"] == pytest.approx(record["emissions"] * 1e6, rel=1e-9)
    assert m["system/carbon/total_energy_j"] == pytest.approx(record["energy_consumed"] * 3.6e6, rel=1e-9)
    # a run of seconds on CPU: the totals read as plain numbers with two decimals (MLflow's bar label)
    assert f"{m['system/carbon/total_emissions_mg']:.2f}" != "0.00" and f"{m['system/carbon/total_energy_j']:.2f}" != "0.00"
    assert m["system/carbon/duration_s"] == pytest.approx(record["duration"], rel=1e-9)
    assert m["system/carbon/emissions_mg"] == pytest.approx(record["emissions"] * 1e6, rel=1e-9)  # last point = total
    assert m["system/carbon/total_cpu_energy_j"] + m["system/carbon/total_ram_energy_j"] == pytest.approx(
        record["energy_consumed"] * 3.6e6, rel=1e-6)
    assert m["system/carbon/mg_per_1k_tokens"] == pytest.approx(
        record["emissions"] * 1e6 / m["trained_tokens"] * 1000, rel=1e-6)
    assert m["system/carbon/intensity_g_per_kwh"] == pytest.approx(record["emissions"] / record["energy_consumed"] * 1000)
    assert record["country_iso_code"] == "FRA"

    # labelled as estimates (no RAPL, no GPU here)
    tags = run.data.tags
    assert tags["mg.carbon.status"] == "ok" and tags["mg.carbon.estimated"] == "true"
    assert tags["mg.carbon.source.cpu"].startswith("estimated") and tags["mg.carbon.source.ram"].startswith("estimated")

    # the registry page shows the footprint
    mv = client.get_model_version("tiny-carbon", result.registered_version)
    assert float(mv.tags["mg.carbon.total_emissions_mg"]) == pytest.approx(record["emissions"] * 1e6, rel=1e-9)
    assert float(mv.tags["mg.carbon.total_energy_j"]) == pytest.approx(record["energy_consumed"] * 3.6e6, rel=1e-9)
    assert float(mv.tags["mg.carbon.duration_s"]) > 0 and float(mv.tags["mg.carbon.mg_per_1k_tokens"]) > 0
    assert mv.tags["mg.carbon.estimated"] == "1.0"

    # the BoAmps-style report: every figure labelled, estimates marked
    path = client.download_artifacts(result.run_id, "carbon/boamps_report.json", str(tmp_path))
    report = json.loads(open(path).read())
    assert report["header"]["reportId"] == result.run_id and report["task"]["taskStage"] == "training"
    mg = report["modelGarden"]
    assert mg["estimated"] is True and report["quality"] == "low"
    assert mg["energyKWh"]["cpu"]["estimated"] is True and mg["energyKWh"]["cpu"]["source"].startswith("estimated")
    assert mg["emissionsKgCO2eq"]["value"] == pytest.approx(record["emissions"], rel=1e-9)
    assert "FRA" in mg["carbonIntensityGPerKWh"]["source"]
    assert mg["softwareVersions"]["codecarbon"] and mg["softwareVersions"]["transformers"]
    assert report["task"]["dataset"][0]["dataQuantity"] == m["trained_tokens"]


def test_unusable_carbon_output_folder_does_not_fail_training(mg_home, tiny_model, sample_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "carbon").write_text("a file where the tracker wants its folder")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train_tiny(tiny_model, sample_data, carbon=True, carbon_interval_steps=5, carbon_measure_secs=1,
                            max_steps=12, output_dir=str(out), register_as="none")
    said = [w for w in caught if "carbon tracking stopped" in str(w.message)]
    assert len(said) == 1, [str(w.message) for w in caught]
    run = _client().get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mg.carbon.status"].startswith("failed: codecarbon could not start")
    assert "train/loss_final" in run.data.metrics and not any(k.startswith("system/carbon/") for k in run.data.metrics)


def _trainer(tiny_model, sample_data, out, callback, max_steps=20):
    """A real SFTTrainer on the tiny model built with the library's own pieces."""
    from datasets import Dataset
    from trl import SFTTrainer

    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.training.backends import load_model
    from mg_mlflow.training.text import load_data, sft_config, token_rows

    cfg = build_config(TrainConfig, overrides={"base_model": str(tiny_model), "dataset": str(sample_data),
                                               "max_steps": max_steps, "batch_size": 4, "backend": "hf"})
    train, _ = load_data(cfg)
    model, tokenizer, peft_config = load_model("hf", cfg, str(tiny_model), None)
    return SFTTrainer(model=model, args=sft_config(cfg, out, False, "hf"),
                      train_dataset=Dataset.from_list(token_rows(cfg, tokenizer, train, str(tiny_model))),
                      processing_class=tokenizer, peft_config=peft_config, callbacks=[callback])


def test_tracker_that_raises_mid_run_keeps_training_and_what_it_logged(mg_home, tiny_model, sample_data, tmp_path):
    import mlflow
    from codecarbon import OfflineEmissionsTracker

    from mg_mlflow.tracking.carbon import CarbonCallback
    from mg_mlflow.tracking.run import ensure_experiment

    class SensorLost(OfflineEmissionsTracker):
        """A real tracker whose second flush fails (codecarbon's own methods swallow their errors)."""

        flushes = 0

        def flush(self):
            SensorLost.flushes += 1
            if SensorLost.flushes >= 2:
                raise RuntimeError("power sensor disappeared")
            return super().flush()

    class FlakyCarbon(CarbonCallback):
        def make_tracker(self):
            return SensorLost(country_iso_code="USA", measure_power_secs=1, output_dir=str(self.output_dir),
                              output_handlers=[self.handler], log_level="error", allow_multiple_runs=True)

    callback = FlakyCarbon(tmp_path / "out", interval_steps=4, measure_secs=1, min_gap_secs=0)
    trainer = _trainer(tiny_model, sample_data, tmp_path / "out", callback, max_steps=20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mlflow.start_run(experiment_id=ensure_experiment("carbon-fail")) as run:
            trainer.train()
    assert trainer.state.global_step == 20
    said = [w for w in caught if "carbon tracking stopped" in str(w.message)]
    assert len(said) == 1 and "power sensor disappeared" in str(said[0].message)
    client = _client()
    history = client.get_metric_history(run.info.run_id, "system/carbon/emissions_mg")
    assert [m.step for m in history] == [4]  # the point before the failure stays
    totals = callback.totals()
    assert totals["system/carbon/total_emissions_mg"] == pytest.approx(history[0].value)
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["mg.carbon.status"].startswith("failed: codecarbon flush failed")


def test_labels_follow_how_each_figure_was_obtained():
    from mg_mlflow.tracking import boamps

    assert boamps.intensity_source("ZZZ").startswith("world average")
    assert "FRA/" not in boamps.intensity_source("FRA") and "FRA" in boamps.intensity_source("FRA")
    record = {"timestamp": "2026-11-26T10:00:00", "duration": 10.0, "emissions": 0.002, "cpu_energy": 0.01,
              "gpu_energy": 0.03, "ram_energy": 0.001, "energy_consumed": 0.041, "cpu_power": 3.6,
              "gpu_power": 10.8, "ram_power": 0.36, "gpu_count": 1, "gpu_model": "H100", "cpu_count": 16}
    measured = boamps.source_tags({"cpu": "measured (RAPL)", "gpu": "measured (NVML)", "ram": "measured (RAPL)"}, "x")
    report = boamps.build_report(record, run_id="r1", stage="training", tags=measured)
    assert report["modelGarden"]["estimated"] is False and report["quality"] == "high"
    assert report["modelGarden"]["energyKWh"]["gpu"] == {"value": 0.03, "source": "measured (NVML)", "estimated": False}
    assert [c["componentType"] for c in report["infrastructure"]["components"]] == ["cpu", "gpu", "ram"]
    mixed = boamps.source_tags({"cpu": "estimated (TDP x load)", "gpu": "measured (NVML)", "ram": "estimated (model)"}, "x")
    report = boamps.build_report(record, run_id="r1", stage="training", tags=mixed)
    assert report["modelGarden"]["estimated"] is True and mixed["mg.carbon.estimated"] == "true"
    assert report["modelGarden"]["energyKWh"]["cpu"]["estimated"] is True
    assert report["modelGarden"]["emissionsKgCO2eq"]["source"].startswith("estimated")
    assert report["environment"]["powerSourceCarbonIntensity"] == pytest.approx(0.002 / 0.041 * 1000)


def test_a_stop_right_after_a_flush_does_not_report_zero_watts(tmp_path):
    """codecarbon's stop() does not sample again within 50 ms of the last sample: the final record then
    carries no energy of its own, and its interval must not read as 0 W (it joins the interval before)."""
    import time

    from mg_mlflow.tracking import boamps

    handler = boamps.recording_output()
    tracker = boamps.make_tracker(tmp_path, handler, country="FRA", measure_secs=0.1)
    tracker.start()
    intervals = boamps.Intervals()
    time.sleep(0.3)
    tracker.flush()
    intervals.metrics(handler.records[-1])
    tracker.stop()  # usually within 50 ms of the flush's sample
    final = intervals.metrics(handler.records[-1])
    assert final["system/carbon/cpu_power_w"] > 0 and final["system/carbon/ram_power_w"] > 0

    # the same sequence written out, so that it does not depend on how fast stop() came
    flushed = dict(handler.records[-2])
    stopped = {**flushed, "duration": flushed["duration"] + 0.01}
    assert boamps.interval_metrics(stopped, flushed)["system/carbon/cpu_power_w"] == 0.0  # the trap
    intervals = boamps.Intervals()
    first = intervals.metrics(flushed)
    merged = intervals.metrics(stopped)
    # the merged interval is the whole window (here, from the start): the energy over all of it
    assert merged["system/carbon/cpu_power_w"] == pytest.approx(
        flushed["cpu_energy"] * 3.6e6 / stopped["duration"], rel=1e-9) and merged["system/carbon/cpu_power_w"] > 0
    assert merged["system/carbon/energy_j"] == pytest.approx(first["system/carbon/energy_j"])
    assert intervals.metrics({**stopped, "duration": stopped["duration"] + 1.0,
                              "cpu_energy": stopped["cpu_energy"] + 1e-6,
                              "energy_consumed": stopped["energy_consumed"] + 1e-6})[
        "system/carbon/cpu_power_w"] == pytest.approx(3.6, rel=1e-6)  # a sampled record: its own interval
