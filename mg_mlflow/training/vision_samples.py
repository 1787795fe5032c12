"""Sample images with the model's answers before and after training, logged under ``samples/``.

``samples/answers.json`` is an MLflow table (image, question, expected, before, after) shown in the
run's artifact view, ``samples/answers.png`` puts the images and answers side by side, and the
images themselves are copied to ``samples/images/``. Exact-match rates are logged as metrics.
"""

from __future__ import annotations

from pathlib import Path

from mg_mlflow.data.vision import image_paths
from mg_mlflow.data.vision_processor import generate_answer


def pick_samples(data, n: int) -> list[dict]:
    """The first ``n`` records as ``{"image", "question", "expected"}`` (first image of each record)."""
    out = []
    for rec in data.records:
        if len(out) >= n:
            break
        user = [m for m in rec["messages"][:-1] if m["role"] == "user"][-1]
        content = user["content"]
        question = content if isinstance(content, str) else " ".join(
            p["text"] for p in content if p["type"] == "text")
        out.append({"image": image_paths(rec)[0], "question": question.strip(),
                    "expected": rec["messages"][-1]["content"]})
    return out


def sample_answers(model, processor, samples: list[dict], max_new_tokens: int) -> list[str]:
    was_training = model.training
    model.eval()
    try:
        return [generate_answer(model, processor, s["image"], s["question"], max_new_tokens) for s in samples]
    finally:
        if was_training:
            model.train()


def _figure(samples: list[dict], before: list[str], after: list[str], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(1, len(samples), figsize=(3.2 * len(samples), 3.6), dpi=100, squeeze=False)
    for ax, s, b, a in zip(axes[0], samples, before, after):
        with Image.open(s["image"]) as img:
            ax.imshow(img.convert("RGB"))
        ax.set_axis_off()
        ax.set_title(f"{s['question'][:40]}\nexpected: {s['expected'][:30]}\nbefore: {b[:30]!r}\nafter: {a[:30]!r}",
                     fontsize=7, loc="left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def log_samples(samples: list[dict], before: list[str], after: list[str], output_dir: Path) -> dict[str, float]:
    """Log the table, the figure and the images; return exact-match metrics."""
    if not samples:
        return {}
    import mlflow

    # copied under numbered names so that two images called image.png do not collide
    names = [f"{i:02d}-{Path(s['image']).name}" for i, s in enumerate(samples)]
    tmp = output_dir / "samples" / "images"
    tmp.mkdir(parents=True, exist_ok=True)
    for s, name in zip(samples, names):
        (tmp / name).write_bytes(Path(s["image"]).read_bytes())
    mlflow.log_artifacts(str(tmp), "samples/images")
    mlflow.log_table({"image": names, "question": [s["question"] for s in samples],
                      "expected": [s["expected"] for s in samples], "before": before, "after": after},
                     "samples/answers.json")
    mlflow.log_artifact(str(_figure(samples, before, after, output_dir / "samples" / "answers.png")), "samples")

    def match(answers: list[str]) -> float:
        return sum(a.strip().lower() == s["expected"].strip().lower() for a, s in zip(answers, samples)) / len(samples)

    return {"samples/exact_match_before": match(before), "samples/exact_match_after": match(after)}
