"""PNG plots logged as MLflow artifacts (loss curves)."""

from __future__ import annotations

from pathlib import Path

from mg_mlflow import metric_names as mn


def loss_curve_png(history: dict[str, list[tuple[int, float]]], out: Path, title: str = "") -> Path | None:
    """Plot ``train/loss`` (and ``eval/loss``) against the global step; None when there is nothing to plot."""
    series = {k: v for k, v in history.items() if k in (mn.LOSS, mn.EVAL_LOSS) and v}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
