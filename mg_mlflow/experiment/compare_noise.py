"""How much of a footprint difference between compared runs is noise.

Runs that did the same work (same base model, data, method, adapter rank, steps or epochs, batch and
sequence length: :data:`WORK_PARAMS`) should emit about the same; on a shared or estimated machine
they do not (the same 60 steps can take 3 s or 14 s). The run-to-run spread is the largest relative
gap, ``(max - min) / min``, between the training emissions of runs of the same work, from the compared
runs and the other finished runs of their experiments. A difference between two compared runs
smaller than that spread does not rank them, and the comparison says so.
"""

from __future__ import annotations

import json

from mg_mlflow import metric_names as mn

WORK_PARAMS = ("base_model", "dataset", "dataset_format", "method", "backend", "max_steps", "epochs", "batch_size",
               "grad_accum", "max_seq_length", "lora_r", "batching", "eval_split", "eval_steps", "dtype",
               "save_method", "num_gpus")
UNIT = "gCO2eq"
SCALE = 1000.0  # kg -> g: every text view of emissions (compare, carbon report) shows grams


def work_key(params: dict[str, str]) -> str:
    return json.dumps({k: params.get(k, "") for k in WORK_PARAMS}, sort_keys=True)


def same_work_emissions(client, runs) -> dict[str, list[float]]:
    """Training emissions (kg) per work key, from the compared runs and their experiments' finished runs."""
    seen: dict[str, float] = {}
    keys: dict[str, str] = {}
    for r in runs:
        if (kg := mn.carbon_value(r.data.metrics, mn.TOTAL_EMISSIONS_KG)) is not None:
            seen[r.info.run_id] = kg
            keys[r.info.run_id] = work_key(r.data.params)
    for exp_id in {r.info.experiment_id for r in runs}:
        try:
            others = client.search_runs([exp_id], "attributes.status = 'FINISHED'", max_results=500)
        except Exception:  # noqa: BLE001
            others = []
        for r in others:
            kg = mn.carbon_value(r.data.metrics, mn.TOTAL_EMISSIONS_KG)
            if kg is None or r.data.tags.get("mg.run_kind", "training") not in ("training", "sweep_trial"):
                continue
            seen[r.info.run_id], keys[r.info.run_id] = kg, work_key(r.data.params)
    groups: dict[str, list[float]] = {}
    for run_id, kg in seen.items():
        groups.setdefault(keys[run_id], []).append(kg)
    return groups


def _gap(a: float, b: float) -> float:
    low = min(a, b)
    return abs(a - b) / low if low > 0 else float("inf")


def carbon_noise(rows: list[dict], groups: dict[str, list[float]]) -> dict:
    """``{"unit", "spread", "spread_runs", "within_noise": [[a, b, gap]], "note"}`` for the compared rows."""
    spread, spread_runs = None, 0
    for values in groups.values():
        if len(values) >= 2 and min(values) > 0:
            gap = (max(values) - min(values)) / min(values)
            if spread is None or gap > spread:
                spread, spread_runs = gap, len(values)
    within = []
    measured = [r for r in rows if r.get("emissions_kg") is not None]
    for i, a in enumerate(measured):
        for b in measured[i + 1:]:
            gap = _gap(a["emissions_kg"], b["emissions_kg"])
            if a["work"] == b["work"] or (spread is not None and gap <= spread):
                within.append([a["name"], b["name"], gap])
    if within:
        pairs = "; ".join(f"{a} vs {b}: {gap:.0%}" for a, b, gap in within[:4])
        note = (f"training emissions differ by less than the run-to-run spread of the same work "
                f"({spread:.0%} over {spread_runs} runs)" if spread is not None else
                "training emissions differ between runs of the same work") + \
            f" ({pairs}): the footprint does not rank them"
    elif spread is None and len(measured) > 1:
        note = ("run-to-run spread unknown (no repeated run of the same work): small emission differences "
                "may be noise")
    else:
        note = ""
    return {"unit": UNIT, "spread": spread, "spread_runs": spread_runs, "within_noise": within, "note": note}
