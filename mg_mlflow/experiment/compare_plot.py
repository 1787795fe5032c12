"""The comparison PNG: loss curves on one chart, the chosen evaluation metrics (one small chart and
one scale each), and quality against footprint: each run's quality metric against its training
emissions, with the Pareto front marked.

The quality axis is a quality metric with a declared direction
(:mod:`mg_mlflow.tracking.directions`): ``--metric`` names it, else the first of :data:`DEFAULT_QUALITY`
that every run has on the dataset they share, else any other quality ``eval/*`` metric, else the
final eval loss, else the final training loss. Counts, rates and timings are never a quality axis.
Serving emissions are not on the footprint axis (a version served longer is not a worse model),
and footprints closer than the run-to-run spread of the same work count as equal.
"""

from __future__ import annotations

from pathlib import Path

from mg_mlflow import metric_names as mn
from mg_mlflow.errors import MGError
from mg_mlflow.experiment.compare_noise import SCALE, UNIT
from mg_mlflow.tracking.directions import direction

DEFAULT_QUALITY = ("eval/loss", "eval/token_f1", "eval/exact_match", "eval/rougeL", "eval/chrf", "eval/bleu")
TRAINING_QUALITY = ("eval_loss_final", "loss_final")


def _row_key(metric: str) -> str:
    """A metric as compare's rows and ``--metric`` name it: ``eval/loss_final`` is the row's ``eval_loss_final``
    (the training run's), ``bleu`` is ``eval/bleu`` (an evaluation's)."""
    if mn.old_name(metric) in TRAINING_QUALITY:
        return mn.old_name(metric)
    return metric if metric.startswith("eval/") or metric in TRAINING_QUALITY else f"eval/{metric}"


def _value(row: dict, key: str) -> float | None:
    return row["eval"].get(key) if key.startswith("eval/") else row.get(key)


def _all_have(runs: list[dict], key: str) -> bool:
    return all(_value(r, key) is not None for r in runs)


def quality_metric(data: dict, metric: str | None = None) -> tuple[str, bool] | None:
    """(metric, higher_is_better) for the quality axis; MGError for a ``metric`` that is not a
    quality metric or that a run lacks."""
    runs = data["runs"]
    if metric:
        key = _row_key(metric)
        d = direction(key)
        if not d.is_quality:
            raise MGError(f"--metric {metric}: a {d.kind}, not a quality metric ({d.label})",
                          hint="name a score or a loss: eval/loss, eval/token_f1, eval/exact_match, eval/rougeL, "
                               "eval/bleu, eval/chrf, eval_loss_final")
        missing = [r["name"] for r in runs if _value(r, key) is None]
        if missing:
            shared = [k for k in data["eval_metrics"] if direction(k).is_quality and _all_have(runs, k)]
            raise MGError(f"--metric {key}: no value for {', '.join(missing)}",
                          hint="quality metrics every run has: " + (", ".join(shared + [
                              k for k in TRAINING_QUALITY if _all_have(runs, k)]) or "none"))
        return key, bool(d.higher_is_better)
    others = sorted(k for k in data["eval_metrics"] if k not in DEFAULT_QUALITY)
    for key in (*DEFAULT_QUALITY, *others, *TRAINING_QUALITY):
        d = direction(key)
        if d.is_quality and _all_have(runs, key):
            return key, bool(d.higher_is_better)
    return None


def bar_metrics(data: dict, quality: str | None, metrics: list[str] | None = None) -> list[str]:
    """The metrics of the middle panel: ``--metrics`` (those every run has), else the quality metric."""
    if metrics:
        keys = [_row_key(m) for m in metrics]
        return [k for k in dict.fromkeys(keys) if any(_value(r, k) is not None for r in data["runs"])]
    return [quality] if quality else []


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool, x_tolerance: float = 0.0) -> list[int]:
    """Indices of points no other point beats on both footprint (lower) and quality; two footprints
    whose relative gap is within ``x_tolerance`` count as equal. The tolerance is a gap measured elsewhere
    (in kg, where these footprints are in g), so a gap equal to it counts as equal up to rounding."""
    def same_x(a: float, b: float) -> bool:
        return abs(a - b) <= x_tolerance * min(a, b) * (1 + 1e-9)

    def better(a: float, b: float) -> bool:
        return a > b if higher_is_better else a < b

    front = []
    for i, (x, y) in enumerate(points):
        dominated = False
        for j, (x2, y2) in enumerate(points):
            if j == i:
                continue
            x_not_worse = x2 <= x or same_x(x2, x)
            x_better = x2 < x and not same_x(x2, x)
            if x_not_worse and (better(y2, y) or y2 == y) and (x_better or better(y2, y)):
                dominated = True
                break
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def comparison_png(data: dict, histories: dict[str, list[tuple[int, float]]], out: Path,
                   metric: str | None = None, metrics: list[str] | None = None) -> dict:
    """Write the PNG; returns what was drawn (``{"path", "pareto": [names], "quality", "higher_is_better",
    "bars": [metrics], "noise"}``)."""
    picked = quality_metric(data, metric)
    bars = bar_metrics(data, picked[0] if picked else None, metrics)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    fig = plt.figure(figsize=(18, 5), dpi=100)
    outer = fig.add_gridspec(1, 3)
    ax_loss, ax_pareto = fig.add_subplot(outer[0, 0]), fig.add_subplot(outer[0, 2])
    for row in runs:
        points = histories.get(row["run_id"]) or []
        if points:
            steps, values = zip(*points)
            ax_loss.plot(steps, values, label=row["name"])
    ax_loss.set(title="training loss", xlabel="step", ylabel="loss")
    ax_loss.grid(alpha=0.3)
    if any(histories.values()):
        ax_loss.legend(fontsize=8)

    colours = [f"C{i % 10}" for i in range(len(runs))]
    if bars:
        middle = outer[0, 1].subgridspec(1, len(bars), wspace=0.6)
        for j, key in enumerate(bars):
            ax = fig.add_subplot(middle[0, j])
            values = [_value(r, key) for r in runs]
            ax.bar(range(len(runs)), [v if v is not None else 0.0 for v in values], color=colours)
            ax.set_xticks(range(len(runs)), [r["name"] for r in runs], rotation=30, ha="right", fontsize=7)
            ax.set_title(f"{key}\n({direction(key).label})", fontsize=8)
            ax.grid(alpha=0.3, axis="y")
    else:
        ax = fig.add_subplot(outer[0, 1])
        ax.text(0.5, 0.5, "no evaluation metric every run has\n(model-garden evaluate ...)", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()

    noise = data.get("carbon", {})
    drawn = {"path": str(out), "pareto": [], "quality": None, "higher_is_better": None, "bars": bars,
             "noise": noise.get("note", "")}
    usable = [r for r in runs if r.get("emissions_kg") is not None]
    if picked and usable:
        key, higher = picked
        pts = [(r["emissions_kg"] * SCALE, _value(r, key)) for r in usable]
        front = pareto_front(pts, higher, noise.get("spread") or 0.0 if noise.get("within_noise") else 0.0)
        ax_pareto.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:gray", zorder=2)
        ax_pareto.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "o-", color="tab:red",
                       label="Pareto front", zorder=3)
        for r, (x, y) in zip(usable, pts):
            ax_pareto.annotate(r["registered"] or r["name"], (x, y), fontsize=8, xytext=(4, 4),
                               textcoords="offset points")
        ax_pareto.set(xlabel=f"training emissions, {UNIT} (serving counted apart)",
                      ylabel=f"{key} ({'higher' if higher else 'lower'} is better)")
        drawn.update(pareto=[usable[i]["name"] for i in front], quality=key, higher_is_better=higher)
        ax_pareto.legend(fontsize=8)
        if noise.get("within_noise"):
            ax_pareto.text(0.02, 0.02, "emission gaps within run-to-run noise", transform=ax_pareto.transAxes,
                           fontsize=8, color="tab:red")
    else:
        ax_pareto.text(0.5, 0.5, "no emissions recorded\n(train with carbon on)" if picked else
                       "no quality metric every run has", ha="center", va="center", transform=ax_pareto.transAxes)
    ax_pareto.set_title(f"quality vs footprint: {picked[0]}" if picked else "quality vs footprint")
    ax_pareto.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return drawn


def loss_histories(run_ids: list[str]) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    return {i: sorted((m.step, m.value) for m in client.get_metric_history(i, mn.LOSS)
                      or client.get_metric_history(i, mn.old_name(mn.LOSS))) for i in run_ids}
