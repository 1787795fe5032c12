"""codecarbon records -> labelled figures and a BoAmps-style report built from a run's own data.

Shared by the training callback (``carbon.py``) and the serving monitor; it imports neither
transformers nor MLflow (codecarbon only inside :func:`make_tracker` and :func:`recording_output`).

BoAmps (Boavizta's AI energy reporting format, https://github.com/Boavizta/BoAmps) is what the original
Model Garden produced. The report is built from one codecarbon record (a row of the run's
``emissions.csv``, or the tracker's last ``EmissionsData``), the run's tags (software versions, how
each component was measured) and its params. Nothing here imports codecarbon or MLflow.

A figure is *measured* when a hardware counter produced it (RAPL for CPUs, NVML for NVIDIA GPUs)
and *estimated* otherwise (a CPU's TDP scaled by its load, a RAM power model). Emissions are always
energy x grid carbon intensity, so they are estimated whenever any energy figure is.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import threading
from pathlib import Path
from typing import Any

from mg_mlflow import metric_names as mn

CSV_NAME = "emissions.csv"
FORMAT_VERSION = "0.1"
SPEC_URI = "https://github.com/Boavizta/BoAmps/tree/main/model"
COMPONENTS = ("cpu", "gpu", "ram")
CPU_MODES = {"intel_rapl": "measured (RAPL)", "intel_power_gadget": "measured (Intel Power Gadget)",
             "windows_emi": "measured (Windows EMI)", "cpu_load": "estimated (TDP x load)",
             "constant": "estimated (TDP)"}
NUMERIC = ("duration", "emissions", "emissions_rate", "cpu_power", "gpu_power", "ram_power", "cpu_energy",
           "gpu_energy", "ram_energy", "energy_consumed", "cpu_count", "gpu_count", "ram_total_size",
           "cpu_utilization_percent", "gpu_utilization_percent", "pue")


# ---------------------------------------------------------------- codecarbon glue

@functools.lru_cache(maxsize=None)
def _recording_class():
    from codecarbon.output_methods.base_output import BaseOutput

    class RecordingOutput(BaseOutput):
        """Keeps every cumulative ``EmissionsData`` codecarbon hands out (on flush and stop)."""

        def __init__(self):
            self.records: list[dict[str, Any]] = []
            self.lock = threading.Lock()

        def out(self, total, delta):
            with self.lock:
                self.records.append(dataclasses.asdict(total))

    return RecordingOutput


def recording_output():
    """A ``codecarbon`` ``BaseOutput`` handler with ``.records`` (cumulative dicts) and ``.lock``."""
    return _recording_class()()


def make_tracker(output_dir: str | Path, handler: Any, *, country: str = "USA", region: str = "",
                 pue: float = 1.0, measure_secs: float = 5.0, offline: bool = True,
                 project_name: str = "model-garden", gpu_ids: list | None = None):
    """A machine-wide codecarbon tracker writing ``output_dir/emissions.csv`` and feeding ``handler``;
    ``gpu_ids``: measure (and sum) exactly these GPUs (default: codecarbon's, every visible one)."""
    from codecarbon import EmissionsTracker, OfflineEmissionsTracker
    from codecarbon.external.logger import set_logger_level
    from codecarbon.output_methods.base_output import OutputMethod

    # codecarbon applies log_level only after its constructor has logged "offline tracker init" and
    # "Multiple instances ... are allowed" (codecarbon/emissions_tracker.py): set it first.
    set_logger_level("error")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    kwargs = dict(project_name=project_name, measure_power_secs=measure_secs, output_dir=str(output_dir),
                  output_file=CSV_NAME, on_csv_write="append", output_methods=[OutputMethod.CSV],
                  output_handlers=[handler], pue=pue, tracking_mode="machine", log_level="error",
                  api_call_interval=-1, allow_multiple_runs=True)
    if gpu_ids is not None:
        kwargs["gpu_ids"] = gpu_ids
    if not offline:
        return EmissionsTracker(**kwargs)
    if region:
        kwargs["region"] = region
    return OfflineEmissionsTracker(country_iso_code=country, **kwargs)


def interval_metrics(record: dict, previous: dict | None, tokens: float = 0.0,
                     per_tokens: str | None = None) -> dict[str, float]:
    """Cumulative emissions (mg) and energy (J), the interval's mean power per component (W) and emissions
    rate (g/h), plus cumulative mg per 1k ``tokens`` under the name ``per_tokens`` when given. codecarbon's
    kg and kWh become MLflow's mg and J here and in :func:`totals_from_record` (see :mod:`metric_names`)."""
    prev = previous or {"duration": 0.0, "emissions": 0.0, "cpu_energy": 0.0, "gpu_energy": 0.0,
                        "ram_energy": 0.0}
    dt = float(record["duration"]) - float(prev["duration"])
    out = {mn.carbon(mn.EMISSIONS_MG): float(record["emissions"]) * mn.MG_PER_KG,
           mn.carbon(mn.ENERGY_J): float(record["energy_consumed"]) * mn.J_PER_KWH}
    for part in COMPONENTS:
        delta_kwh = float(record[f"{part}_energy"]) - float(prev[f"{part}_energy"])
        # kWh over the interval -> mean W (codecarbon's own power field is a whole-run average)
        out[mn.power(part)] = delta_kwh * mn.J_PER_KWH / dt if dt > 1e-6 else float(record[f"{part}_power"])
    delta_kg = float(record["emissions"]) - float(prev["emissions"])
    out[mn.carbon(mn.EMISSIONS_RATE_G_PER_H)] = delta_kg * 1000.0 * 3600.0 / dt if dt > 1e-6 else 0.0
    if per_tokens and tokens > 0:
        out[per_tokens] = float(record["emissions"]) * mn.MG_PER_KG / tokens * 1000.0
    return out


class Intervals:
    """Successive codecarbon records of one tracker -> :func:`interval_metrics`, each against the record before.

    A record taken without a new power sample has no power of its own (codecarbon's ``stop()`` does not
    sample again within 50 ms of the last sample, so a flush just before it leaves the energy unchanged):
    its interval joins the one before, instead of reporting 0 W for every component."""

    def __init__(self) -> None:
        self.previous: dict | None = None
        self._base: dict | None = None  # the start of the previous record's interval

    def metrics(self, record: dict, tokens: float = 0.0, per_tokens: str | None = None) -> dict[str, float]:
        sampled = self.previous is None or float(record["energy_consumed"]) != float(self.previous["energy_consumed"])
        base = self.previous if sampled else self._base
        self._base, self.previous = base, record
        return interval_metrics(record, base, tokens, per_tokens)


def totals_from_record(record: dict, tokens: float, estimated: bool,
                       per_tokens: str = mn.carbon(mn.MG_PER_1K_TOKENS)) -> dict[str, float]:
    """Final figures of a run (``system/carbon/total_*``, mg and J), numbers only: they become metrics and
    version tags."""
    out = {mn.carbon(mn.TOTAL_EMISSIONS_MG): float(record["emissions"]) * mn.MG_PER_KG,
           mn.carbon(mn.TOTAL_ENERGY_J): float(record["energy_consumed"]) * mn.J_PER_KWH,
           **{mn.total_energy(p): float(record[f"{p}_energy"]) * mn.J_PER_KWH for p in COMPONENTS},
           mn.carbon(mn.DURATION_S): float(record["duration"]),
           mn.carbon(mn.ESTIMATED): 1.0 if estimated else 0.0}
    intensity = intensity_g_per_kwh(record)
    if intensity is not None:
        out[mn.carbon(mn.INTENSITY_G_PER_KWH)] = intensity
    if tokens > 0:
        out[per_tokens] = float(record["emissions"]) * mn.MG_PER_KG / tokens * 1000.0
    return out


# ---------------------------------------------------------------- labels

def is_measured(label: str | None) -> bool:
    return bool(label) and label.startswith("measured")


def tracker_sources(tracker: Any) -> dict[str, str]:
    """How a codecarbon tracker gets each component's power: {"cpu": "estimated (TDP x load)", ...}."""
    out: dict[str, str] = {}
    for hw in getattr(tracker, "_hardware", None) or []:
        kind = type(hw).__name__
        if kind == "GPU":
            out["gpu"] = "measured (NVML)"
        elif kind == "CPU":
            mode = str(getattr(hw, "_mode", ""))
            out["cpu"] = CPU_MODES.get(mode, f"estimated ({mode or 'unknown'})")
        elif kind == "RAM":
            forced = getattr(hw, "_force_ram_power", None)
            out["ram"] = "estimated (user-given power)" if forced else "estimated (model)"
        elif kind == "AppleSiliconChip":
            out[str(getattr(hw, "chip_part", "cpu")).lower()] = "measured (powermetrics)"
    out.setdefault("cpu", "estimated (unknown)")
    out.setdefault("ram", "estimated (model)")
    out.setdefault("gpu", "none (no GPU tracked)")
    return out


def known_country(country: str) -> bool:
    """Whether codecarbon has grid data for this ISO alpha-3 code (else it uses the world average)."""
    try:
        from codecarbon.input import DataSource

        return country.upper() in DataSource().get_global_energy_mix_data()
    except Exception:  # noqa: BLE001 - cannot tell: assume codecarbon knows it
        return True


def intensity_source(country: str, region: str = "", offline: bool = True) -> str:
    where = country + (f"/{region}" if region else "")
    if offline and not known_country(country):
        return f"world average (codecarbon has no grid data for country {country!r})"
    if offline:
        return f"codecarbon offline grid energy mix for {where} (yearly average)"
    return f"codecarbon online lookup for {where} (Electricity Maps when a token is set, else offline data)"


def source_tags(sources: dict[str, str], intensity_src: str) -> dict[str, str]:
    """Run tags that let any later reader rebuild the labels (the report and BoAmps use them)."""
    tags = {f"mg.carbon.source.{k}": v for k, v in sources.items()}
    tags["mg.carbon.source.intensity"] = intensity_src
    tags["mg.carbon.estimated"] = str(is_estimated(sources)).lower()
    return tags


def sources_from_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: tags[f"mg.carbon.source.{k}"] for k in COMPONENTS if f"mg.carbon.source.{k}" in tags}


def is_estimated(sources: dict[str, str]) -> bool:
    """True unless every component that drew power was measured by a counter."""
    used = [v for v in sources.values() if not v.startswith("none")]
    return not used or not all(is_measured(v) for v in used)


def label(value: float | None, source: str) -> dict[str, Any]:
    return {"value": value, "source": source, "estimated": not is_measured(source)}


def record_from_csv(path: str | Path) -> dict[str, Any] | None:
    """The last row of a codecarbon ``emissions.csv`` (cumulative totals), numbers as floats."""
    path = Path(path)
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return normalise(rows[-1]) if rows else None


def normalise(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    for key in NUMERIC:
        value = out.get(key)
        try:
            out[key] = float(value) if value not in (None, "") else 0.0
        except (TypeError, ValueError):
            out[key] = 0.0
    return out


def intensity_g_per_kwh(record: dict[str, Any]) -> float | None:
    energy = float(record.get("energy_consumed") or 0.0)
    return float(record.get("emissions") or 0.0) / energy * 1000.0 if energy > 0 else None


def build_report(record: dict[str, Any], *, run_id: str, stage: str, tags: dict[str, str] | None = None,
                 params: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A BoAmps-style report (camelCase BoAmps sections plus a ``modelGarden`` section of labelled figures).

    ``stage`` is ``training`` or ``inference``; ``extra`` may carry ``tokens``, ``requests``,
    ``generated_tokens`` and ``served_models``.
    """
    record, tags, params, extra = normalise(record), tags or {}, params or {}, extra or {}
    sources = {**{k: "estimated (unknown)" for k in ("cpu", "ram")}, "gpu": "none (no GPU tracked)",
               **sources_from_tags(tags)}
    estimated = is_estimated(sources)
    emissions_src = ("estimated (energy x grid intensity)" if estimated
                     else "computed (measured energy x grid intensity)")
    intensity_src = tags.get("mg.carbon.source.intensity", "codecarbon grid data")
    when = str(record.get("timestamp", "")).replace("T", " ")
    versions = {k.removeprefix("mg.version."): v for k, v in tags.items() if k.startswith("mg.version.")}
    tokens = extra.get("tokens") if stage == "training" else extra.get("generated_tokens")
    task: dict[str, Any] = {
        "taskStage": stage, "taskFamily": "textGeneration",
        "algorithms": [{"algorithmType": "llm", "trainingType": "supervisedLearning" if stage == "training" else None,
                        "algorithmName": params.get("method") or tags.get("mg.method"),
                        "foundationModelName": params.get("base_model") or extra.get("served_models"),
                        "framework": "transformers", "frameworkVersion": versions.get("transformers")}],
        "dataset": [{"dataUsage": "input" if stage == "training" else "output", "dataType": "token",
                     "dataQuantity": tokens}],
    }
    if stage == "inference":
        task["nbRequest"] = extra.get("requests")
    components = [{"componentType": "cpu", "componentName": record.get("cpu_model") or None,
                   "nbComponent": int(record.get("cpu_count") or 1)}]
    if record.get("gpu_count"):
        components.append({"componentType": "gpu", "componentName": record.get("gpu_model") or None,
                           "nbComponent": int(record["gpu_count"])})
    components.append({"componentType": "ram", "nbComponent": 1, "memorySize": record.get("ram_total_size")})
    mode = {"cpu": sources["cpu"], "gpu": sources["gpu"]}
    return {
        "header": {"formatVersion": FORMAT_VERSION, "formatVersionSpecificationUri": SPEC_URI,
                   "reportId": run_id, "reportDatetime": when, "reportStatus": "draft",
                   "publisher": {"name": "Model Garden", "confidentialityLevel": "public"}},
        "task": task,
        "measures": [{"measurementMethod": "codecarbon", "version": record.get("codecarbon_version"),
                      "cpuTrackingMode": mode["cpu"], "gpuTrackingMode": mode["gpu"],
                      "averageUtilizationCpu": round(record["cpu_utilization_percent"] / 100.0, 4) or None,
                      "powerConsumption": record["energy_consumed"], "measurementDuration": record["duration"],
                      "measurementDateTime": when}],
        "system": {"os": record.get("os")},
        "software": {"language": "python", "version": record.get("python_version")},
        "infrastructure": {"infraType": "publicCloud" if record.get("on_cloud") == "Y" else "onPremise",
                           "cloudProvider": record.get("cloud_provider") or None, "components": components},
        "environment": {"country": record.get("country_name"), "location": record.get("region") or None,
                        "powerSourceCarbonIntensity": intensity_g_per_kwh(record)},
        "quality": "low" if estimated else "high",
        "modelGarden": {
            "estimated": estimated,
            "note": ("figures marked estimated come from models (CPU TDP x load, RAM power model), "
                     "not from hardware counters" if estimated else "energy read from hardware counters"),
            "energyKWh": {"cpu": label(record["cpu_energy"], sources["cpu"]),
                          "gpu": label(record["gpu_energy"], sources["gpu"]),
                          "ram": label(record["ram_energy"], sources["ram"]),
                          "total": label(record["energy_consumed"],
                                         "estimated (sum of components)" if estimated else "measured (sum)")},
            "averagePowerW": {k: label(record[f"{k}_power"], sources[k]) for k in COMPONENTS},
            "emissionsKgCO2eq": label(record["emissions"], emissions_src),
            "carbonIntensityGPerKWh": {"value": intensity_g_per_kwh(record), "source": intensity_src},
            "pue": record.get("pue"), "durationS": record["duration"], "softwareVersions": versions,
            "hardware": {"device": tags.get("mg.device"), "cpu": record.get("cpu_model"),
                         "gpu": record.get("gpu_model") or tags.get("mg.gpu")},
            **{k: v for k, v in extra.items() if v is not None},
        },
    }


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    return path
