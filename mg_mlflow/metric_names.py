"""The names of the metrics Model Garden logs, in one table, for every module that writes or reads them.

Energy and CO2 figures live under ``system/carbon/``: MLflow's run page shows metrics named
``system/...`` on its "System metrics" tab (beside CPU and memory), so a run opens on its loss and
evaluation charts instead of ~15 carbon charts. Runs logged before this layout carry the same figures
under ``carbon/``: :func:`carbon_value` reads either.

Carbon figures are logged in milligrams of CO2eq (``*_mg``, ``mg_per_1k_*``) and joules (``*_j``); power
stays W, intensity g/kWh. MLflow's run page draws a metric logged once (a total) as a bar labelled
``value.toFixed(2)`` with no unit formatter (MLflow 3.17's ``RunsMetricsBarPlot``; its per-metric formatter
table is empty), so a total in kg or kWh of a short run (4.4e-06 kg, 1e-05 kWh) reads "0.00"; in mg and J it
reads 4.40 and 36.00, and a run of hours on GPUs (tens of kg, ~1e8 J) still reads as a plain number. Runs
logged before carry the figures in kg and kWh (``emissions_kg``, ``energy_kwh``): :func:`carbon_value`
converts between the units of a figure, so a reader asks for the unit it computes in and gets it from
either run.

The trainer's own figures carry the prefixes of transformers' W&B integration (``WandbCallback``'s
``rewrite_logs``): ``eval_<x>`` is logged as ``eval/<x>``, anything else as ``train/<x>`` (TRL's
``rewards/chosen`` as ``train/rewards/chosen``). MLflow's run page lists prefixed sections before
"Model metrics" and sorts sections and the charts in them by name (three charts a row), so a run
opens on the "eval" section (``eval/loss``, its final and first value) and then "train"
(``grad_norm``, ``learning_rate``, ``loss``, ...). The Trainer's bookkeeping, ``epoch`` and its
timings (``train_runtime``, ``eval_samples_per_second``, ...), is no model figure: it goes to the
System metrics tab as ``system/trainer/<name>``, where it does not push ``train/loss`` below the
first screen (MLflow's charts can still use ``epoch`` as their x axis).
Runs logged before carry the figures unprefixed (``loss``, ``eval_loss_final``, ``eval_runtime``):
:func:`value` reads either, :func:`canonical` turns a name a user gives the old way into the new one.
"""

from __future__ import annotations

CARBON_PREFIX = "system/carbon/"
LEGACY_CARBON_PREFIX = "carbon/"

# Training: per step (cumulative) and at the end (totals); evaluation and serving runs use the same names.
EMISSIONS_MG = "emissions_mg"
ENERGY_J = "energy_j"
TOTAL_EMISSIONS_MG = "total_emissions_mg"
TOTAL_ENERGY_J = "total_energy_j"
DURATION_S = "duration_s"
ESTIMATED = "estimated"
INTENSITY_G_PER_KWH = "intensity_g_per_kwh"
EMISSIONS_RATE_G_PER_H = "emissions_rate_g_per_h"
MG_PER_1K_TOKENS = "mg_per_1k_tokens"
MG_PER_1K_GENERATED_TOKENS = "mg_per_1k_generated_tokens"
# The same figures in kg and kWh: the names runs logged before carry, and what a reader that computes in kg
# (budgets, the compare and carbon-report rows) asks :func:`carbon_value` for.
EMISSIONS_KG = "emissions_kg"
ENERGY_KWH = "energy_kwh"
TOTAL_EMISSIONS_KG = "total_emissions_kg"
TOTAL_ENERGY_KWH = "total_energy_kwh"
# A sweep's parent run: its finished trials' summed training figures
SWEEP_TOTAL_EMISSIONS = "sweep/total_emissions_mg"
SWEEP_TOTAL_ENERGY = "sweep/total_energy_j"
# Registered versions carry a run's carbon totals as tags ``mg.carbon.<name>`` (e.g. ``mg.carbon.total_emissions_mg``)
CARBON_TAG_PREFIX = "mg.carbon."

# A training window split by phase (GRPO): ``system/carbon/<phase>/<name>`` with name ENERGY_J, EMISSIONS_MG or
# DURATION_S. Generation is read off the run's one tracker at the start and end of every generation call;
# optimisation is the rest of the window, so the two add up to the run's totals.
GENERATION = "generation"
OPTIMISATION = "optimisation"
PHASES = (GENERATION, OPTIMISATION)
PHASE_FIGURES = (ENERGY_J, EMISSIONS_MG, DURATION_S)
GENERATION_SHARE_TIME = "generation_share_time"      # generation seconds / tracked seconds
GENERATION_SHARE_ENERGY = "generation_share_energy"  # generation energy / tracked energy

MG_PER_KG = 1e6
J_PER_KWH = 3.6e6
# unit -> (quantity, its size in the quantity's reference unit)
_UNITS = {"mg": ("mass", 1e-6), "kg": ("mass", 1.0), "j": ("energy", 1.0), "kwh": ("energy", J_PER_KWH)}

TRAIN = "train/"
EVAL = "eval/"
TRAINER_SYSTEM = "system/trainer/"
# The Trainer's end-of-training mean loss (``train_loss``: not the last step's)
LOSS_MEAN = TRAIN + "loss_mean"

LOSS = TRAIN + "loss"
LEARNING_RATE = TRAIN + "learning_rate"
GRAD_NORM = TRAIN + "grad_norm"
EPOCH = TRAINER_SYSTEM + "epoch"
REWARD = TRAIN + "reward"
TOKENS_PER_SECOND = TRAIN + "tokens_per_second"
EVAL_LOSS = EVAL + "loss"
# Model Garden's summaries of a run: the first and last logged point of each loss
LOSS_FIRST = TRAIN + "loss_first"
LOSS_FINAL = TRAIN + "loss_final"
EVAL_LOSS_FIRST = EVAL + "loss_first"
EVAL_LOSS_FINAL = EVAL + "loss_final"
# names with no prefix before the rename that are not trainer figures, e.g. ``train_seconds``: not aliased
_OLD_TRAIN = {"loss", "learning_rate", "grad_norm", "reward", "tokens_per_second", "loss_first",
              "loss_final", "num_input_tokens_seen"}


def _is_bookkeeping(key: str) -> bool:
    return key == "epoch" or (key.startswith(("train_", "eval_"))
                              and key.endswith(("_runtime", "_runtime_s", "_per_second")))


def trainer_metric(key: str) -> str:
    """The MLflow key of the Trainer's log key ``key``: ``eval_loss`` -> ``eval/loss``, ``loss`` ->
    ``train/loss``, ``rewards/chosen`` -> ``train/rewards/chosen``, ``train_loss`` -> ``train/loss_mean``,
    ``epoch`` -> ``system/trainer/epoch``, ``train_runtime`` -> ``system/trainer/train_runtime_s``."""
    if _is_bookkeeping(key):
        return TRAINER_SYSTEM + (key + "_s" if key == "train_runtime" else key)
    if key == "train_loss":
        return LOSS_MEAN
    if key.startswith("eval_"):
        return EVAL + key.removeprefix("eval_")
    return TRAIN + key


def old_name(name: str) -> str | None:
    """The key ``name`` (``train/loss``, ``eval/loss_final``) had in runs logged before the prefixes."""
    if name == LOSS_MEAN:
        return "train_loss_mean"
    if name.startswith(TRAINER_SYSTEM):
        return name.removeprefix(TRAINER_SYSTEM)
    if name.startswith(EVAL):
        return "eval_" + name.removeprefix(EVAL)
    if name.startswith(TRAIN):
        return name.removeprefix(TRAIN)
    return None


def value(metrics: dict, name: str, default=None):
    """Metric ``name`` of a run's metrics, under its key or the one it had before the prefixes."""
    if name in metrics:
        return metrics[name]
    old = old_name(name)
    return metrics.get(old, default) if old is not None else default


def canonical(metric: str) -> str:
    """The name of a metric given the way runs were logged before the prefixes (``eval_loss_final`` ->
    ``eval/loss_final``, ``loss_final`` -> ``train/loss_final``); any other name as it is."""
    if "/" in metric:
        return metric
    if _is_bookkeeping(metric):  # as logged before (``train_runtime_s`` already carried its unit)
        return TRAINER_SYSTEM + metric
    if metric == "train_loss_mean":
        return LOSS_MEAN
    if metric.startswith("eval_") or metric in _OLD_TRAIN:
        return trainer_metric(metric)
    return metric


def carbon(name: str) -> str:
    """The MLflow metric key of carbon figure ``name`` (e.g. ``total_emissions_mg``)."""
    return CARBON_PREFIX + name


def power(part: str) -> str:
    """Mean power of ``part`` (cpu, gpu, ram) over the last interval, in W."""
    return carbon(f"{part}_power_w")


def total_energy(part: str) -> str:
    """Energy of ``part`` (cpu, gpu, ram) over the whole run, in J."""
    return carbon(total_energy_name(part))


def total_energy_name(part: str, unit: str = "j") -> str:
    """``total_cpu_energy_j``: the carbon figure name of ``part``'s energy (``unit`` kwh: the older name)."""
    return f"total_{part}_energy_{unit}"


def phase_name(part: str, name: str) -> str:
    """``generation/energy_j``: carbon figure ``name`` of phase ``part`` (generation, optimisation)."""
    return f"{part}/{name}"


def phase(part: str, name: str) -> str:
    """The key of carbon figure ``name`` of phase ``part``: ``system/carbon/generation/energy_j``."""
    return carbon(phase_name(part, name))


def is_carbon(key: str) -> bool:
    return key.startswith((CARBON_PREFIX, LEGACY_CARBON_PREFIX))


def carbon_name(key: str) -> str:
    """``total_emissions_mg`` for ``system/carbon/total_emissions_mg`` (or the older ``carbon/...``)."""
    return key.removeprefix(CARBON_PREFIX).removeprefix(LEGACY_CARBON_PREFIX)


def _unit_of(name: str) -> tuple[str, str] | None:
    """(a template with ``{}`` for the unit, the unit) of a figure name in mg/kg/J/kWh, else None:
    ``total_emissions_mg`` -> (``total_emissions_{}``, mg), ``mg_per_1k_tokens`` -> (``{}_per_1k_tokens``, mg).
    A rate (``intensity_g_per_kwh``) is none: its unit is a ratio."""
    first, per, rest = name.partition("_per_")
    if per:
        return (f"{{}}_per_{rest}", first) if first in _UNITS else None
    head, _, last = name.rpartition("_")
    return (f"{head}_{{}}", last) if head and last in _UNITS else None


def carbon_names(name: str) -> list[tuple[str, float]]:
    """Carbon figure ``name`` and the same figure in its other units, each with the factor that turns a value
    under it into ``name``'s unit: ``total_emissions_mg`` -> [(``total_emissions_mg``, 1),
    (``total_emissions_kg``, 1e6)]."""
    out = [(name, 1.0)]
    found = _unit_of(name)
    if found is not None:
        template, unit = found
        quantity, size = _UNITS[unit]
        out += [(template.format(other), other_size / size) for other, (q, other_size) in _UNITS.items()
                if q == quantity and other != unit]
    return out


def carbon_key(keys, name: str, prefixes: tuple[str, ...] = (CARBON_PREFIX, LEGACY_CARBON_PREFIX)
               ) -> tuple[str, float] | None:
    """(the key among ``keys`` that holds carbon figure ``name``, the factor into ``name``'s unit), trying
    ``name`` under each prefix first, then the same figure in its other units; None when none is there."""
    for candidate, factor in carbon_names(name):
        for prefix in prefixes:
            if prefix + candidate in keys:
                return prefix + candidate, factor
    return None


def carbon_value(metrics: dict, name: str, default=None,
                 prefixes: tuple[str, ...] = (CARBON_PREFIX, LEGACY_CARBON_PREFIX)):
    """Carbon figure ``name`` of a run's metrics in ``name``'s unit, whichever prefix (``system/carbon/``,
    the older ``carbon/``) and unit (mg or kg, J or kWh) the run logged it under. ``prefixes``: other
    places, e.g. a version's tags (:data:`CARBON_TAG_PREFIX`; their values are parsed as numbers)."""
    found = carbon_key(metrics, name, prefixes)
    return default if found is None else float(metrics[found[0]]) * found[1]
