"""``model-garden ask``: a vision-language model's answer about an image, computed locally
(``train-vision`` lives with ``train`` in :mod:`mg_mlflow.cli.train`)."""

from __future__ import annotations

import click

from mg_mlflow.cli.base import console
from mg_mlflow.data.vision_processor import generate_answer
from mg_mlflow.env import setup_env
from mg_mlflow.errors import MGError
from mg_mlflow.registry.loader import load_vision_dir
from mg_mlflow.registry.resolve import resolve_model_uri


@click.command("ask")
@click.argument("model_uri")
@click.option("--image", "image", required=True, type=click.Path(exists=True, dir_okay=False),
              help="image file to ask about")
@click.option("--question", "-q", default="Describe the picture.", show_default=True)
@click.option("--max-new-tokens", type=int, default=32, show_default=True)
def ask_cmd(model_uri, image, question, max_new_tokens):
    """Answer QUESTION about IMAGE with a registered vision model, in this process (no server).

    \b
    Example:
      model-garden ask models:/tiny-vl-lora@champion --image shapes/images/data-00000.png -q "What colour is the shape?"
    """
    setup_env()
    resolved = resolve_model_uri(model_uri)
    if resolved.metadata.get("modality") != "vision" and not (resolved.local_dir / "preprocessor_config.json").is_file():
        raise MGError(f"{model_uri} is not a vision model (no image processor in {resolved.local_dir})")
    model, processor = load_vision_dir(resolved.local_dir)
    console().print(generate_answer(model, processor, image, question, max_new_tokens))


def register(group: click.Group) -> None:
    group.add_command(ask_cmd)
