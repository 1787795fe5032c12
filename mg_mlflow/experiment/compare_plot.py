"""The comparison PNG: loss curves on one chart, evaluation-metric bars, and quality against footprint
(each run's quality metric against its training + serving emissions, the Pareto front marked)."""

from __future__ import annotations

from pathlib import Path


def quality_metric(data: dict) -> tuple[str, bool] | None:
    """(metric, higher_is_better) used for the quality axis: the first eval/* metric every run has,
    else the eval loss, else the training loss."""
    runs = data["runs"]
    for key in data["eval_metrics"]:
        if all(key in r["eval"] for r in runs):
            return key, "loss" not in key and "perplexity" not in key
    for key in ("eval_loss_final", "loss_final"):
        if all(r.get(key) is not None for r in runs):
            return key, False
    return None


def _quality(row: dict, key: str) -> float | None:
    return row["eval"].get(key) if key.startswith("eval/") else row.get(key)


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of points no other point beats on both footprint (lower) and quality."""
    front = []
    for i, (x, y) in enumerate(points):
        better = (lambda a, b: a > b) if higher_is_better else (lambda a, b: a < b)
        dominated = any(
            (x2 <= x and (better(y2, y) or y2 == y)) and (x2 < x or better(y2, y))
            for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def comparison_png(data: dict, histories: dict[str, list[tuple[int, float]]], out: Path) -> dict:
    """Write the PNG; returns what was drawn (``{"path", "pareto": [run names], "quality": metric}``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    fig, (ax_loss, ax_eval, ax_pareto) = plt.subplots(1, 3, figsize=(18, 5), dpi=100)
    for row in runs:
        points = histories.get(row["run_id"]) or []
        if points:
            steps, values = zip(*points)
            ax_loss.plot(steps, values, label=row["name"])
    ax_loss.set(title="training loss", xlabel="step", ylabel="loss")
    ax_loss.grid(alpha=0.3)
    if any(histories.values()):
        ax_loss.legend(fontsize=8)

    bar_keys = data["eval_metrics"] or [k for k in ("eval_loss_final",) if any(r.get(k) is not None for r in runs)]
    width = 0.8 / max(1, len(runs))
    for i, row in enumerate(runs):
        values = [(_quality(row, k) or 0.0) for k in bar_keys]
        ax_eval.bar([j + i * width for j in range(len(bar_keys))], values, width=width, label=row["name"])
    ax_eval.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(bar_keys))], bar_keys, fontsize=8)
    ax_eval.set_title("evaluation metrics" if data["eval_metrics"] else "eval loss (no evaluation runs yet)")
    ax_eval.grid(alpha=0.3, axis="y")
    if bar_keys:
        ax_eval.legend(fontsize=8)

    drawn = {"path": str(out), "pareto": [], "quality": None}
    picked = quality_metric(data)
    usable = [r for r in runs if r.get("footprint_kg") is not None]
    if picked and usable:
        key, higher = picked
        pts = [(r["footprint_kg"], _quality(r, key)) for r in usable]
        front = pareto_front(pts, higher)
        ax_pareto.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:gray", zorder=2)
        ax_pareto.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "o-", color="tab:red",
                       label="Pareto front", zorder=3)
        for r, (x, y) in zip(usable, pts):
            ax_pareto.annotate(r["registered"] or r["name"], (x, y), fontsize=8, xytext=(4, 4),
                               textcoords="offset points")
        ax_pareto.set(xlabel="emissions kg CO2eq (training + serving)",
                      ylabel=f"{key} ({'higher' if higher else 'lower'} is better)")
        drawn.update(pareto=[usable[i]["name"] for i in front], quality=key)
        ax_pareto.legend(fontsize=8)
    else:
        ax_pareto.text(0.5, 0.5, "no emissions recorded\n(train with carbon on)", ha="center", va="center",
                       transform=ax_pareto.transAxes)
    ax_pareto.set_title("quality vs footprint")
    ax_pareto.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return drawn


def loss_histories(run_ids: list[str]) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    return {i: sorted((m.step, m.value) for m in client.get_metric_history(i, "loss")) for i in run_ids}
