"""Generate a small image question-answer dataset: coloured shapes on a plain background.

``write_vision_sample("shapes/data.jsonl", 64)`` writes ``shapes/data.jsonl`` plus the PNG images in
``shapes/images/``; each record is ``{"text", "image", "response"}`` (the original Model Garden
vision format) with the image path relative to the JSONL file. The answers follow from the picture
by a fixed rule (colour, shape or both), so a tiny model can learn them in a few hundred steps.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40)}
SHAPES = ("circle", "square", "triangle")
QUESTIONS = {
    "colour": "What colour is the shape?",
    "shape": "What shape is in the picture?",
    "both": "Describe the picture.",
}
IMAGE_SIZE = 56


def _answer(kind: str, colour: str, shape: str) -> str:
    if kind == "colour":
        return colour
    if kind == "shape":
        return shape
    return f"a {colour} {shape}"


def sample_vision_records(n: int = 64, seed: int = 0) -> list[dict]:
    """``n`` records ``{"text", "response", "colour", "shape", "box"}`` (no images drawn)."""
    rng = random.Random(seed)
    kinds = list(QUESTIONS)
    out = []
    for i in range(n):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        kind = kinds[i % len(kinds)]
        size = rng.randint(24, 36)
        x, y = rng.randint(2, IMAGE_SIZE - size - 2), rng.randint(2, IMAGE_SIZE - size - 2)
        out.append({"text": QUESTIONS[kind], "response": _answer(kind, colour, shape),
                    "colour": colour, "shape": shape, "box": [x, y, x + size, y + size]})
    return out


def draw_shape(colour: str, shape: str, box: list[int] | None = None, size: int = IMAGE_SIZE):
    """A PIL image of one coloured shape on a light grey background."""
    from PIL import Image, ImageDraw

    box = box or [size // 4, size // 4, 3 * size // 4, 3 * size // 4]
    img = Image.new("RGB", (size, size), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        x0, y0, x1, y1 = box
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return img


def write_vision_sample(path: str | Path, n: int = 64, seed: int = 0) -> Path:
    """Write ``n`` records as JSONL at ``path`` and their images under ``<dir>/images/``."""
    path = Path(path)
    images = path.parent / "images"
    images.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for i, rec in enumerate(sample_vision_records(n, seed)):
            name = f"images/{path.stem}-{i:05d}.png"
            draw_shape(rec["colour"], rec["shape"], rec["box"]).save(path.parent / name)
            fh.write(json.dumps({"text": rec["text"], "image": name, "response": rec["response"]}) + "\n")
    return path
