"""``model-garden dev``: tools for tests, demos and benchmarks (tiny offline models)."""

from __future__ import annotations

import click

from mg_mlflow.cli.base import console
from mg_mlflow.dev.tiny import build_tiny_llama
from mg_mlflow.dev.tiny_vision import build_tiny_qwen2_5_vl
from mg_mlflow.env import setup_env


@click.group("dev")
def dev_group():
    """Developer tools: build tiny random-init models offline."""


@dev_group.command("tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--hidden-size", type=int, default=128, show_default=True)
@click.option("--layers", type=int, default=2, show_default=True)
@click.option("--vision", is_flag=True, help="build a tiny Qwen2.5-VL model instead of a Llama")
def tiny_model_cmd(out_dir, hidden_size, layers, vision):
    """Build a tiny random-init model + tokenizer (with a chat template) in OUT_DIR, offline.

    \b
    Example:
      model-garden dev tiny-model ./tiny && model-garden train --base-model ./tiny --dataset data.jsonl
    """
    setup_env()
    if vision:
        path = build_tiny_qwen2_5_vl(out_dir)
    else:
        path = build_tiny_llama(out_dir, hidden_size=hidden_size, layers=layers)
    console().print(f"tiny model written to [bold]{path}[/]")


def register(group: click.Group) -> None:
    group.add_command(dev_group)
