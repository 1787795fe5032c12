"""The carbon report: per run and per model version (training + serving), from MLflow alone.

Training runs carry ``system/carbon/*`` metrics and ``mg.carbon.*`` tags (``carbon.py``); serving runs live in
the ``model-garden-serving`` experiment and name the versions they served in ``mg.served_versions``
(``serving_monitor.py``). A serving run that serves several versions counts under each of them.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mg_mlflow import metric_names as mn
from mg_mlflow.errors import MGError
from mg_mlflow.tracking import boamps
from mg_mlflow.tracking.run import use_tracking_uri
from mg_mlflow.tracking.serving_monitor import SERVING_EXPERIMENT

ESTIMATE_NOTE = ("* = estimated: no hardware energy counter (RAPL/NVML) was read, power came from a model "
                 "(CPU TDP x load, RAM power model); emissions = energy x grid carbon intensity")


def _first(metrics: dict[str, float], *names: str) -> float | None:
    return next((metrics[n] for n in names if n in metrics), None)


# The report computes in kg and kWh (and prints grams and Wh); runs log mg and J, or kg and kWh before.
PHASE_FIGURES = (mn.ENERGY_KWH, mn.EMISSIONS_KG, mn.DURATION_S)


def run_row(run) -> dict[str, Any] | None:
    """One run's figures, or None when it has no carbon data."""
    m, tags = run.data.metrics, run.data.tags
    emissions = mn.carbon_value(m, mn.TOTAL_EMISSIONS_KG, mn.carbon_value(m, mn.EMISSIONS_KG))
    if emissions is None:
        return None
    serving = tags.get("mg.kind") == "serving"
    tokens = _first(m, "serving/total_generated_tokens", "serving/generated_tokens") if serving else m.get("trained_tokens")
    versions = json.loads(tags.get("mg.served_versions") or "[]") if serving else (
        [f"{tags['mg.registered_model']}/{tags.get('mg.registered_version')}"] if tags.get("mg.registered_model") else [])
    phases = {p: {n: mn.carbon_value(m, mn.phase_name(p, n)) for n in PHASE_FIGURES} for p in mn.PHASES
              if mn.carbon_key(m, mn.phase_name(p, mn.ENERGY_KWH))}
    return {"run_id": run.info.run_id, "name": run.info.run_name or "", "kind": "serving" if serving else "training",
            "status": run.info.status, "emissions_kg": emissions,
            "energy_kwh": mn.carbon_value(m, mn.TOTAL_ENERGY_KWH, mn.carbon_value(m, mn.ENERGY_KWH)),
            "duration_s": mn.carbon_value(m, mn.DURATION_S, m.get("serving/duration_s")),
            "tokens": tokens, "requests": _first(m, "serving/total_requests", "serving/requests") if serving else None,
            "kg_per_1k_tokens": emissions / tokens * 1000.0 if tokens else None,
            "estimated": tags.get("mg.carbon.estimated", "true") != "false", "versions": versions,
            "carbon_status": tags.get("mg.carbon.status", ""),
            "phases": phases or None, "phases_source": tags.get("mg.carbon.phases") if phases else None,
            "generation_share_time": mn.carbon_value(m, mn.GENERATION_SHARE_TIME),
            "generation_share_energy": mn.carbon_value(m, mn.GENERATION_SHARE_ENERGY)}


def _experiment_runs(client, name: str, required: bool) -> list:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        if required:
            names = [e.name for e in client.search_experiments()]
            raise MGError(f"no experiment named {name!r}", hint=f"experiments: {', '.join(names) or '(none)'}")
        return []
    return client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"])


def collect(experiment: str = "model-garden", model: str | None = None,
            serving_experiment: str = SERVING_EXPERIMENT) -> dict[str, Any]:
    """``{"runs": [...], "versions": [...], "totals": {...}, "note": ...}`` for an experiment or a model."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    use_tracking_uri()
    client = MlflowClient()
    serving = [r for r in (run_row(x) for x in _experiment_runs(client, serving_experiment, False)) if r]
    if model:
        try:
            mvs = client.search_model_versions(f"name='{model}'")
        except MlflowException as exc:
            raise MGError(f"cannot read model {model!r}: {exc}") from None
        if not mvs:
            raise MGError(f"no registered model named {model!r}", hint="see the Models page of `model-garden ui`")
        training = []
        for mv in sorted(mvs, key=lambda v: int(v.version)):
            run_id = mv.run_id or mv.tags.get("mg.run_id")
            try:
                row = run_row(client.get_run(run_id)) if run_id else None
            except MlflowException:
                row = None
            if row:
                row["versions"] = [f"{mv.name}/{mv.version}"]
                training.append(row)
        keys = {f"{mv.name}/{mv.version}" for mv in mvs}
        serving = [r for r in serving if keys & set(r["versions"])]
    else:
        training = [r for r in (run_row(x) for x in _experiment_runs(client, experiment, True))
                    if r and r["kind"] == "training"]
        keys = {v for r in training for v in r["versions"]}
        serving = [r for r in serving if keys & set(r["versions"])]  # serving of this experiment's models
    versions = []
    for key in sorted(keys, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1]) if k.rsplit("/", 1)[1].isdigit() else 0)):
        train = [r for r in training if key in r["versions"]]
        serve = [r for r in serving if key in r["versions"]]
        t_kg = sum(r["emissions_kg"] for r in train)
        s_kg = sum(r["emissions_kg"] for r in serve)
        gen = sum(r["tokens"] or 0 for r in serve)
        versions.append({
            "model": key.rsplit("/", 1)[0], "version": key.rsplit("/", 1)[1],
            "training_runs": [r["run_id"] for r in train], "training_emissions_kg": t_kg,
            "training_energy_kwh": sum(r["energy_kwh"] or 0 for r in train),
            "serving_runs": [r["run_id"] for r in serve], "serving_emissions_kg": s_kg,
            "serving_energy_kwh": sum(r["energy_kwh"] or 0 for r in serve), "generated_tokens": gen,
            "requests": sum(r["requests"] or 0 for r in serve),
            "serving_kg_per_1k_tokens": s_kg / gen * 1000.0 if gen else None,
            "total_emissions_kg": t_kg + s_kg, "estimated": any(r["estimated"] for r in train + serve)})
    runs = training + serving
    totals = {"runs": len(runs), "emissions_kg": sum(r["emissions_kg"] for r in runs),
              "energy_kwh": sum(r["energy_kwh"] or 0 for r in runs),
              "estimated": any(r["estimated"] for r in runs)}
    return {"experiment": None if model else experiment, "model": model, "runs": runs, "versions": versions,
            "totals": totals, "note": ESTIMATE_NOTE}


def boamps_reports(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One BoAmps-style report per run, rebuilt from the run's CSV artifact, tags and params."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in data["runs"]:
            run = client.get_run(row["run_id"])
            record = None
            try:
                path = client.download_artifacts(row["run_id"], f"carbon/{boamps.CSV_NAME}", tmp)
                record = boamps.record_from_csv(path)
            except Exception:  # noqa: BLE001 - fall back to the metrics
                pass
            if record is None:
                m = run.data.metrics
                record = {"emissions": row["emissions_kg"], "energy_consumed": row["energy_kwh"] or 0.0,
                          "duration": row["duration_s"] or 0.0,
                          **{f"{p}_energy": mn.carbon_value(m, mn.total_energy_name(p, "kwh"), 0.0) for p in boamps.COMPONENTS}}
            stage = "inference" if row["kind"] == "serving" else "training"
            extra = ({"requests": row["requests"], "generated_tokens": row["tokens"], "served_models": row["versions"]}
                     if stage == "inference" else {"tokens": row["tokens"], "registered_versions": row["versions"]})
            out.append(boamps.build_report(record, run_id=row["run_id"], stage=stage, tags=run.data.tags,
                                           params=run.data.params, extra=extra))
    return out


def _fmt(value: float | None, estimated: bool = False, scale: float = 1.0, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value * scale:.{digits}g}" + ("*" if estimated else "")


def print_tables(data: dict[str, Any], console) -> None:
    from rich.table import Table

    where = f"model {data['model']!r}" if data["model"] else f"experiment {data['experiment']!r}"
    table = Table(title=f"carbon per run ({where})", title_justify="left")
    for col in ("run", "name", "kind", "gCO2eq", "Wh", "s", "tokens", "g/1k tok", "versions"):
        table.add_column(col, overflow="fold")
    for r in data["runs"]:
        est = r["estimated"]
        kind = r["kind"] + ("" if r["status"] == "FINISHED" else f" ({r['status'].lower()})")
        table.add_row(r["run_id"][:8], r["name"], kind, _fmt(r["emissions_kg"], est, 1e3),
                      _fmt(r["energy_kwh"], est, 1e3), _fmt(r["duration_s"], digits=4),
                      _fmt(r["tokens"], digits=6), _fmt(r["kg_per_1k_tokens"], est, 1e3), ", ".join(r["versions"]))
    console.print(table)
    if data["versions"]:
        vt = Table(title="carbon per model version (training + serving)", title_justify="left")
        for col in ("version", "train gCO2eq", "serve gCO2eq", "generated tokens", "serve g/1k tokens", "total gCO2eq"):
            vt.add_column(col)
        for v in data["versions"]:
            est = v["estimated"]
            vt.add_row(f"{v['model']}/{v['version']}", _fmt(v["training_emissions_kg"], est, 1e3),
                       _fmt(v["serving_emissions_kg"], est, 1e3) if v["serving_runs"] else "-",
                       _fmt(v["generated_tokens"], digits=6), _fmt(v["serving_kg_per_1k_tokens"], est, 1e3),
                       _fmt(v["total_emissions_kg"], est, 1e3))
        console.print(vt)
    print_phases(data["runs"], console)
    t = data["totals"]
    console.print(f"total: {_fmt(t['emissions_kg'], t['estimated'], 1e3)} gCO2eq, "
                  f"{_fmt(t['energy_kwh'], t['estimated'], 1e3)} Wh over {t['runs']} run(s)")
    if t["estimated"]:
        console.print(data["note"])


def print_phases(runs: list[dict[str, Any]], console) -> None:
    """Runs whose window was split (GRPO): generation and optimisation side by side, with the generation share."""
    split = [r for r in runs if r.get("phases")]
    if not split:
        return
    from rich.table import Table

    table = Table(title="carbon by phase (generation = sampling completions; optimisation = the rest)",
                  title_justify="left")
    for col in ("run", "name", "gen gCO2eq", "gen Wh", "gen s", "opt gCO2eq", "opt Wh", "opt s",
                "gen share of time", "gen share of energy"):
        table.add_column(col, overflow="fold")
    for r in split:
        est, gen, opt = r["estimated"], r["phases"].get(mn.GENERATION, {}), r["phases"].get(mn.OPTIMISATION, {})
        share = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
        table.add_row(r["run_id"][:8], r["name"], _fmt(gen.get(mn.EMISSIONS_KG), est, 1e3),
                      _fmt(gen.get(mn.ENERGY_KWH), est, 1e3), _fmt(gen.get(mn.DURATION_S), digits=4),
                      _fmt(opt.get(mn.EMISSIONS_KG), est, 1e3), _fmt(opt.get(mn.ENERGY_KWH), est, 1e3),
                      _fmt(opt.get(mn.DURATION_S), digits=4), share(r["generation_share_time"]),
                      share(r["generation_share_energy"]))
    console.print(table)


def bar_chart(data: dict[str, Any], out: str | Path) -> Path | None:
    """A PNG bar chart of emissions per run (hatched bars = estimated); None when there are no runs."""
    runs = data["runs"]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['name'] or r['run_id'][:8]} ({r['kind']})" for r in runs]
    grams = [r["emissions_kg"] * 1e3 for r in runs]
    colors = ["tab:green" if r["kind"] == "training" else "tab:blue" for r in runs]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(runs)), dpi=100)
    bars = ax.barh(range(len(runs)), grams, color=colors)
    for bar, r in zip(bars, runs):
        if r["estimated"]:
            bar.set_hatch("//")
    ax.set_yticks(range(len(runs)), labels)
    ax.invert_yaxis()
    est = any(r["estimated"] for r in runs)
    ax.set_xlabel("emissions, gCO2eq" + (" (hatched = estimated)" if est else ""))
    ax.set_title("emissions per run (green: training, blue: serving)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
