"""The names of the metrics Model Garden logs, in one table, for every module that writes or reads them.

Energy and CO2 figures live under ``system/carbon/``: MLflow's run page shows metrics named
``system/...`` on its "System metrics" tab (beside CPU and memory), so a run opens on its loss and
evaluation charts instead of ~15 carbon charts. Runs logged before this layout carry the same figures
under ``carbon/``: :func:`carbon_value` reads either.
"""

from __future__ import annotations

CARBON_PREFIX = "system/carbon/"
LEGACY_CARBON_PREFIX = "carbon/"

# Training: per step (cumulative) and at the end (totals); evaluation and serving runs use the same names.
EMISSIONS_KG = "emissions_kg"
ENERGY_KWH = "energy_kwh"
TOTAL_EMISSIONS_KG = "total_emissions_kg"
TOTAL_ENERGY_KWH = "total_energy_kwh"
DURATION_S = "duration_s"
ESTIMATED = "estimated"
INTENSITY_G_PER_KWH = "intensity_g_per_kwh"
EMISSIONS_RATE_G_PER_H = "emissions_rate_g_per_h"
KG_PER_1K_TOKENS = "kg_per_1k_tokens"
KG_PER_1K_GENERATED_TOKENS = "kg_per_1k_generated_tokens"

# A training window split by phase (GRPO): ``system/carbon/<phase>/<name>`` with name ENERGY_KWH, EMISSIONS_KG or
# DURATION_S. Generation is read off the run's one tracker at the start and end of every generation call;
# optimisation is the rest of the window, so the two add up to the run's totals.
GENERATION = "generation"
OPTIMISATION = "optimisation"
PHASES = (GENERATION, OPTIMISATION)
PHASE_FIGURES = (ENERGY_KWH, EMISSIONS_KG, DURATION_S)
GENERATION_SHARE_TIME = "generation_share_time"      # generation seconds / tracked seconds
GENERATION_SHARE_ENERGY = "generation_share_energy"  # generation kWh / tracked kWh


def carbon(name: str) -> str:
    """The MLflow metric key of carbon figure ``name`` (e.g. ``total_emissions_kg``)."""
    return CARBON_PREFIX + name


def power(part: str) -> str:
    """Mean power of ``part`` (cpu, gpu, ram) over the last interval, in W."""
    return carbon(f"{part}_power_w")


def total_energy(part: str) -> str:
    """Energy of ``part`` (cpu, gpu, ram) over the whole run, in kWh."""
    return carbon(f"total_{part}_energy_kwh")


def phase(part: str, name: str) -> str:
    """Carbon figure ``name`` of phase ``part`` (generation, optimisation): ``system/carbon/generation/energy_kwh``."""
    return carbon(f"{part}/{name}")


def is_carbon(key: str) -> bool:
    return key.startswith((CARBON_PREFIX, LEGACY_CARBON_PREFIX))


def carbon_name(key: str) -> str:
    """``total_emissions_kg`` for ``system/carbon/total_emissions_kg`` (or the older ``carbon/...``)."""
    return key.removeprefix(CARBON_PREFIX).removeprefix(LEGACY_CARBON_PREFIX)


def carbon_value(metrics: dict, name: str, default=None):
    """Carbon figure ``name`` of a run's metrics, under its key or the older ``carbon/`` one."""
    if carbon(name) in metrics:
        return metrics[carbon(name)]
    return metrics.get(LEGACY_CARBON_PREFIX + name, default)
