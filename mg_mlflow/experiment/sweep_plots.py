"""The sweep parent's PNGs: the objective of every trial, and Optuna's parameter importances."""

from __future__ import annotations

import math
from pathlib import Path

COLORS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red", "INTERRUPTED": "tab:gray"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def objective_png(table: list[dict], objective: str, direction: str, out: Path) -> Path | None:
    """One point per trial (colour = how it ended), the best-so-far line over complete trials."""
    points = [t for t in table if t["value"] is not None and math.isfinite(t["value"])]
    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for state, color in COLORS.items():
        xs = [t["number"] for t in points if t["state"] == state]
        ys = [t["value"] for t in points if t["state"] == state]
        if xs:
            label = state.lower() + (" (last reported)" if state == "PRUNED" else "")
            ax.scatter(xs, ys, color=color, label=label, zorder=3)
    best, steps, values = None, [], []
    for t in sorted((t for t in points if t["state"] == "COMPLETE"), key=lambda t: t["number"]):
        if best is None or (t["value"] < best if direction == "minimize" else t["value"] > best):
            best = t["value"]
        steps.append(t["number"])
        values.append(best)
    if steps:
        ax.step(steps, values, where="post", color="black", alpha=0.6, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title(f"{objective} per trial ({direction})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def importance_png(study, out: Path) -> Path | None:
    """Bars of ``optuna.importance.get_param_importances`` (needs >= 2 complete trials that differ)."""
    import warnings

    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2 or len({tuple(sorted(t.params.items())) for t in complete}) < 2:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # too few distinct values for the evaluator
        return None
    if not importances:
        return None
    plt = _plt()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(names)), dpi=100)
    ax.barh(names, [importances[n] for n in names], color="tab:green")
    ax.set_xlabel("importance (Optuna PED-ANOVA, normalised)")
    ax.set_title(f"parameter importance over {len(complete)} complete trials")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
