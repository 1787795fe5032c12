"""The comparison as text: runs in columns, params and metrics in rows (as MLflow's compare view),
grouped: the params that differ, training, evaluation per dataset (by its name), carbon, registry.

``table`` and ``markdown`` print the grouped rows; ``csv`` is one row per run with every value (each
evaluation metric once per dataset); ``json`` is everything :func:`~mg_mlflow.experiment.compare.collect`
read. Emissions are shown in grams (kilograms in JSON, by the key's name), energy in Wh.
"""

from __future__ import annotations

import json
from typing import Any

from mg_mlflow.errors import MGError
from mg_mlflow.experiment.compare_noise import SCALE, UNIT
from mg_mlflow.tracking.directions import direction

TRAINING = (("steps", "steps", 1.0), ("loss_final", "loss (final)", 1.0), ("eval_loss_final", "eval loss (final)", 1.0),
            ("duration_s", "seconds", 1.0), ("tokens_per_s", "tokens/s", 1.0))


def fmt(value: Any, scale: float = 1.0) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value * scale:.4g}"
    return str(value)


def wanted(metrics: list[str] | None, key: str) -> bool:
    """``--metrics``: ``eval/bleu`` or ``bleu`` selects the row; none given selects all."""
    return not metrics or key in metrics or key.removeprefix("eval/") in metrics


def _arrow(key: str) -> str:
    d = direction(key).higher_is_better
    return "" if d is None else (" (higher better)" if d else " (lower better)")


def _dataset_title(digest: str, name: str) -> str:
    if not digest:
        return "evaluation"
    return f"evaluation on {name or digest} ({digest[:8]})" if name else f"evaluation on {digest}"


def grouped_rows(data: dict, metrics: list[str] | None = None) -> list[tuple[str, list[list[str]]]]:
    """``[(group title, [[row label, value per run...], ...]), ...]``."""
    runs = data["runs"]
    groups: list[tuple[str, list[list[str]]]] = []
    if data["differing_params"]:
        groups.append(("params that differ", [[k, *(r["params"].get(k, "") for r in runs)]
                                              for k in data["differing_params"]]))
    training = [[label, *(fmt(r.get(key)) for r in runs)] for key, label, _ in TRAINING
                if any(r.get(key) is not None for r in runs)]
    if any(r.get("epochs") for r in runs):
        training.insert(0, ["epochs", *(fmt(r.get("epochs")) for r in runs)])
    groups.append(("training", training))
    for ds in data.get("datasets", []):
        digest = ds["digest"]
        keys = sorted({k for r in runs for k in r["evaluations"].get(digest, {}).get("metrics", {}) if wanted(metrics, k)})
        if keys:
            groups.append((_dataset_title(digest, ds["name"]),
                           [[k + _arrow(k), *(fmt(r["evaluations"].get(digest, {}).get("metrics", {}).get(k))
                                              for r in runs)] for k in keys]))
    carbon = [[f"training {UNIT}", *(fmt(r["emissions_kg"], SCALE) for r in runs)],
              ["training energy Wh", *(fmt(r["energy_kwh"], SCALE) for r in runs)],
              ["energy source", *(r.get("energy_source") or "" for r in runs)]]
    if any(r.get("generation_emissions_kg") is not None for r in runs):  # GRPO: the window split by phase
        carbon += [[f"generation {UNIT}", *(fmt(r.get("generation_emissions_kg"), SCALE) for r in runs)],
                   [f"optimisation {UNIT}", *(fmt(r.get("optimisation_emissions_kg"), SCALE) for r in runs)],
                   ["generation share of energy", *(fmt(r.get("generation_share_energy")) for r in runs)]]
    if any(r.get("serving_emissions_kg") for r in runs):
        carbon.append([f"serving {UNIT} (apart)", *(fmt(r.get("serving_emissions_kg"), SCALE) for r in runs)])
    groups.append((f"carbon ({UNIT}, Wh)", carbon))
    groups.append(("registry", [["version", *(r["registered"] for r in runs)],
                                ["aliases now", *(" ".join(f"@{a}" for a in r.get("aliases", [])) for r in runs)]]))
    return groups


def flat_rows(data: dict) -> tuple[list[str], list[list[str]]]:
    """One row per run with every value (the csv format)."""
    runs = data["runs"]
    several = len(data.get("datasets", [])) > 1
    eval_cols = [(ds["digest"], k) for ds in data.get("datasets", [])
                 for k in sorted({k for r in runs for k in r["evaluations"].get(ds["digest"], {}).get("metrics", {})})]

    def eval_label(digest: str, key: str) -> str:
        name = next((d["name"] for d in data["datasets"] if d["digest"] == digest), "") or digest
        return f"{key} [{name}]" if several else key

    header = ["run", "run_id", *data["differing_params"], *(label for _, label, _ in TRAINING),
              *(eval_label(d, k) for d, k in eval_cols), "emissions_g", "energy_wh", "energy_source",
              "serving_emissions_g", "registered", "aliases"]
    body = []
    for r in runs:
        body.append([r["name"], r["run_id"], *(r["params"].get(k, "") for k in data["differing_params"]),
                     *(fmt(r.get(key)) for key, _, _ in TRAINING),
                     *(fmt(r["evaluations"].get(d, {}).get("metrics", {}).get(k)) for d, k in eval_cols),
                     fmt(r["emissions_kg"], SCALE), fmt(r["energy_kwh"], SCALE), r.get("energy_source") or "",
                     fmt(r.get("serving_emissions_kg"), SCALE), r["registered"], " ".join(r.get("aliases", []))])
    return header, body


def render(data: dict, fmt_name: str, metrics: list[str] | None = None) -> str:
    """``json``, ``csv`` or ``markdown`` text (the table format is printed by the CLI with rich)."""
    if fmt_name == "json":
        return json.dumps(data, indent=2)
    if fmt_name == "csv":
        import csv
        import io

        header, body = flat_rows(data)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        writer.writerows(body)
        return buf.getvalue()
    if fmt_name == "markdown":
        cells = lambda row: "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"  # noqa: E731
        lines = [cells(["", *(r["name"] for r in data["runs"])]), "|" + "---|" * (len(data["runs"]) + 1)]
        for title, rows in grouped_rows(data, metrics):
            lines.append(cells([f"**{title}**", *([""] * len(data["runs"]))]))
            lines += [cells(row) for row in rows]
        notes = [n for n in (data.get("carbon", {}).get("note"),) if n]
        return "\n".join(lines + ([""] + notes if notes else []))
    raise MGError(f"unknown format {fmt_name!r}: use table, json, csv or markdown")
