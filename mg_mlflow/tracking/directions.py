"""Which way a metric is better, and whether it measures quality: the one table that ``compare``,
``promote`` and ``sweep`` read.

A metric name is matched by its last part (``eval/rougeL`` -> ``rougel``, ``eval/arc/acc_norm`` ->
``acc_norm``, ``system/carbon/total_emissions_mg`` -> ``total_emissions_mg``), word by word; a reward named by
the user (``eval/reward/<name>``, ``train/rewards/<name>/mean``) is a quality, higher is better:

========================  =========  =======================================================
kind                      better     words
========================  =========  =======================================================
quality                   higher     exact_match, f1, rouge*, bleu, chrf, accuracy, acc, mcc,
                                     json_valid (a valid-output rate), reward(s), margin(s)
quality                   lower      loss, perplexity, bits_per_byte
cost                      lower      emissions, energy, seconds, latency, duration, ``*_s``,
                                     ``*_mg``, ``*_kg``, ``*_j``, ``*_kwh``
throughput                higher     ``*_per_s``, ``*_per_second``
count                     none       examples, tokens, records, steps, samples (and anything
                                     unknown): never ranked, never a quality axis
========================  =========  =======================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

QUALITY_UP = ("exact_match", "f1", "rouge", "bleu", "chrf", "accuracy", "accuracies", "acc", "mcc",
              "json_valid", "reward", "rewards", "margin", "margins", "valid")
QUALITY_DOWN = ("loss", "perplexity", "bits_per_byte")
COST_DOWN = ("emissions", "energy", "seconds", "latency", "duration")


@dataclass(frozen=True)
class Direction:
    metric: str
    kind: str                      # quality | cost | throughput | count
    higher_is_better: bool | None  # None: a count, not ranked

    @property
    def is_quality(self) -> bool:
        return self.kind == "quality"

    @property
    def label(self) -> str:
        if self.higher_is_better is None:
            return "not ranked"
        return "higher is better" if self.higher_is_better else "lower is better"


def _last_part(metric: str) -> str:
    name = metric.lower().rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1]  # a digest-qualified key: <digest>.bleu


def _has(name: str, word: str) -> bool:
    """``word`` as a whole word of ``name`` (words split on ``_``), or its prefix for ``rouge``."""
    if word == "rouge":
        return name.startswith("rouge")
    return re.search(rf"(^|_){re.escape(word)}(_|$)", name) is not None


def direction(metric: str) -> Direction:
    """The declared direction of ``metric`` (see the module's table)."""
    name = _last_part(metric)
    if "stderr" in name or name == "std":
        return Direction(metric, "count", None)
    parts = metric.lower().removeprefix("train/").split("/")
    if "reward" in parts[:-1] or (parts[0] == "rewards" and name == "mean"):
        return Direction(metric, "quality", True)
    if name.endswith("_per_s") or name.endswith("_per_second"):
        return Direction(metric, "throughput", True)
    if any(_has(name, w) for w in QUALITY_DOWN):
        return Direction(metric, "quality", False)
    if any(_has(name, w) for w in QUALITY_UP):
        return Direction(metric, "quality", True)
    if any(_has(name, w) for w in COST_DOWN) or name.endswith(("_s", "_mg", "_kg", "_j", "_kwh")):
        return Direction(metric, "cost", False)
    return Direction(metric, "count", None)


def lower_is_better(metric: str) -> bool:
    """True for losses, perplexity, time, energy and emissions; False for scores and rates."""
    return direction(metric).higher_is_better is False


def is_quality(metric: str) -> bool:
    return direction(metric).is_quality


def optuna_direction(metric: str) -> str | None:
    """``minimize`` / ``maximize`` for a metric with a declared direction, else None."""
    d = direction(metric).higher_is_better
    return None if d is None else ("maximize" if d else "minimize")
