"""Carbon split by phase: the run's one codecarbon tracker read at the start and end of a phase gives that phase's
time and energy, the rest of the window is the optimisation phase, and the two add up to the totals; the carbon
report and compare show the split. Real codecarbon (offline, estimated on this machine), real sqlite MLflow store.
The GRPO training that logs it end to end is in test_grpo_train.py.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from mg_mlflow import metric_names as mn


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(i * i for i in range(1000))


def test_a_phase_gets_its_own_time_and_energy_and_the_rest_adds_up_to_the_totals(tmp_path):
    from mg_mlflow.tracking.carbon import CarbonCallback

    cb = CarbonCallback(tmp_path, country="FRA", measure_secs=5.0)
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=3, num_input_tokens_seen=0)
    cb.on_train_begin(None, state, None)
    assert cb.tracker is not None and cb.error is None
    timed = 0.0
    for _ in range(3):  # three generation calls between optimisation work
        with cb.phase(mn.GENERATION):
            started = time.perf_counter()
            _busy(0.15)
            timed += time.perf_counter() - started
        _busy(0.1)
    state.global_step = 3
    cb.on_train_end(None, state, None)
    totals = cb.totals()

    gen, opt = (lambda name, p=p: totals[mn.phase(p, name)] for p in mn.PHASES)
    assert gen(mn.ENERGY_J) > 0 and opt(mn.ENERGY_J) > 0
    assert gen(mn.ENERGY_J) + opt(mn.ENERGY_J) == pytest.approx(totals[mn.carbon(mn.TOTAL_ENERGY_J)], rel=1e-9)
    assert gen(mn.EMISSIONS_MG) + opt(mn.EMISSIONS_MG) == pytest.approx(
        totals[mn.carbon(mn.TOTAL_EMISSIONS_MG)], rel=1e-9)
    assert gen(mn.DURATION_S) + opt(mn.DURATION_S) == pytest.approx(totals[mn.carbon(mn.DURATION_S)], rel=1e-9)
    # the phase's seconds are the time inside it, within the reading's cost (~0.2 ms a reading here)
    assert gen(mn.DURATION_S) == pytest.approx(timed, abs=0.02)
    share = totals[mn.carbon(mn.GENERATION_SHARE_TIME)]
    assert share == pytest.approx(timed / totals[mn.carbon(mn.DURATION_S)], abs=0.02) and 0.4 < share < 0.8
    assert 0 < totals[mn.carbon(mn.GENERATION_SHARE_ENERGY)] < 1
    # the run's clock covers the whole window (codecarbon's task API would restart it at each task)
    assert totals[mn.carbon(mn.DURATION_S)] >= timed + 0.3 - 0.02


def test_no_phase_no_split(tmp_path):
    from mg_mlflow.tracking.carbon import CarbonCallback

    cb = CarbonCallback(tmp_path, country="FRA")
    state = SimpleNamespace(is_world_process_zero=True, global_step=1, max_steps=1, num_input_tokens_seen=0)
    cb.on_train_begin(None, state, None)
    cb.on_train_end(None, state, None)
    totals = cb.totals()
    assert totals and not any("/generation" in k or "/optimisation" in k or "share" in k for k in totals)


def _logged(figures: dict[str, float], units: str) -> dict[str, float]:
    """Carbon figures given in kg and kWh as a run logs them: ``mg/J`` now, ``kg/kWh`` before, ``legacy``
    (kg/kWh under ``carbon/``) before that."""
    if units != "mg/J":
        prefix = mn.LEGACY_CARBON_PREFIX if units == "legacy" else mn.CARBON_PREFIX
        return {prefix + k: v for k, v in figures.items()}
    new = {"_kg": ("_mg", mn.MG_PER_KG), "_kwh": ("_j", mn.J_PER_KWH)}
    out = {}
    for k, v in figures.items():
        suffix = next((s for s in new if k.endswith(s)), None)
        out[mn.carbon(k.removesuffix(suffix) + new[suffix][0] if suffix else k)] = v * (new[suffix][1] if suffix else 1)
    return out


@pytest.mark.parametrize("units", ["mg/J", "kg/kWh", "legacy"])
def test_carbon_report_and_compare_show_the_split(mg_home, units):
    """Runs logged in mg and J, and runs logged before in kg and kWh (under either prefix), read the same."""
    import mlflow
    from rich.console import Console

    from mg_mlflow.experiment import compare
    from mg_mlflow.experiment.compare_table import grouped_rows
    from mg_mlflow.tracking import report

    mlflow.set_experiment("model-garden")
    metrics = _logged({mn.TOTAL_EMISSIONS_KG: 0.004, mn.TOTAL_ENERGY_KWH: 0.08, mn.DURATION_S: 100.0,
                       mn.phase_name(mn.GENERATION, mn.EMISSIONS_KG): 0.003,
                       mn.phase_name(mn.GENERATION, mn.ENERGY_KWH): 0.06,
                       mn.phase_name(mn.GENERATION, mn.DURATION_S): 70.0,
                       mn.phase_name(mn.OPTIMISATION, mn.EMISSIONS_KG): 0.001,
                       mn.phase_name(mn.OPTIMISATION, mn.ENERGY_KWH): 0.02,
                       mn.phase_name(mn.OPTIMISATION, mn.DURATION_S): 30.0,
                       mn.GENERATION_SHARE_TIME: 0.7, mn.GENERATION_SHARE_ENERGY: 0.75}, units)
    if units == "mg/J":
        assert metrics[mn.carbon(mn.TOTAL_EMISSIONS_MG)] == pytest.approx(4000.0)
        assert metrics[mn.phase(mn.GENERATION, mn.ENERGY_J)] == pytest.approx(216000.0)
    with mlflow.start_run(run_name="grpo-run") as grpo:
        mlflow.log_metrics(metrics)
        mlflow.set_tags({"mg.carbon.estimated": "true", "mg.carbon.phases": "generation: read at each call"})
    with mlflow.start_run(run_name="sft-run") as sft:
        mlflow.log_metrics({k: v for k, v in metrics.items() if "/generation" not in k and "/optimisation" not in k
                            and "share" not in k})

    data = report.collect("model-garden")
    rows = {r["name"]: r for r in data["runs"]}
    assert rows["sft-run"]["phases"] is None
    assert rows["grpo-run"]["phases"][mn.GENERATION] == pytest.approx({mn.ENERGY_KWH: 0.06, mn.EMISSIONS_KG: 0.003,
                                                                       mn.DURATION_S: 70.0})
    assert rows["grpo-run"]["emissions_kg"] == pytest.approx(0.004) and rows["grpo-run"]["energy_kwh"] == pytest.approx(0.08)
    assert rows["grpo-run"]["generation_share_energy"] == 0.75
    console = Console(record=True, width=200)
    report.print_tables(data, console)
    text = console.export_text()
    assert "carbon by phase" in text and "grpo-run" in text.split("carbon by phase")[1]
    assert "sft-run" not in text.split("carbon by phase")[1].split("total:")[0]
    line = next(x for x in text.splitlines() if "grpo-run" in x and "70%" in x)
    assert "3*" in line and "60*" in line and "75%" in line, line  # gCO2eq and Wh, estimated

    cmp = compare.collect([grpo.info.run_id, sft.info.run_id])
    groups = dict(grouped_rows(cmp))
    carbon = {row[0]: row[1:] for row in next(v for k, v in groups.items() if k.startswith("carbon"))}
    assert carbon["generation gCO2eq"] == ["3", ""] and carbon["optimisation gCO2eq"] == ["1", ""]
    assert carbon["training gCO2eq"] == ["4", "4"] and carbon["training energy Wh"] == ["80", "80"]
    assert carbon["generation share of energy"] == ["0.75", ""]


def test_a_tracker_that_cannot_be_read_at_a_boundary_keeps_its_totals_without_a_split(tmp_path):
    from mg_mlflow.tracking.carbon import CarbonCallback

    cb = CarbonCallback(tmp_path, country="FRA")
    state = SimpleNamespace(is_world_process_zero=True, global_step=1, max_steps=1, num_input_tokens_seen=0)
    cb.on_train_begin(None, state, None)
    measure = cb.tracker._measure_power_and_energy
    calls = []

    def fails_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("sensor gone")
        return measure()

    cb.tracker._measure_power_and_energy = fails_once
    with pytest.warns(RuntimeWarning, match="sensor gone.*without the phase split"):
        with cb.phase(mn.GENERATION):
            _busy(0.05)
    with cb.phase(mn.GENERATION):  # no second try: one run, one way of measuring
        _busy(0.05)
    cb.on_train_end(None, state, None)
    totals = cb.totals()
    assert totals[mn.carbon(mn.TOTAL_ENERGY_J)] > 0 and len(calls) >= 1
    assert not any("/generation" in k or "/optimisation" in k for k in totals)
