"""``model-garden train-vision`` and ``model-garden ask``: vision-language fine-tuning and a local answer."""

from __future__ import annotations

import click

from mg_mlflow.cli.base import config_options, console, print_kv
from mg_mlflow.vision_config import VisionTrainConfig


@click.command("train-vision", context_settings={"max_content_width": 110})
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML recipe whose keys are the option names below (e.g. projects/tiny-vision/config.yaml)")
@click.option("--set", "set_args", multiple=True, metavar="KEY=VALUE",
              help="override any option, repeatable: --set max_pixels=50176 --set finetune_vision_layers=true")
@click.option("--progress/--no-progress", default=None, help="live progress bar (default: when on a terminal)")
@config_options(VisionTrainConfig)
def train_vision_cmd(config_file, set_args, progress, **options):
    """Fine-tune a vision-language model (Qwen2.5-VL family), log it to MLflow and register it.

    Records are {"text", "image", "response"} or chat messages with image parts; image paths are
    absolute or relative to the dataset file. Every bad record and every missing or unreadable image
    is reported as file:line before a model is loaded.

    \b
    Examples:
      model-garden dev tiny-model --vision ./tiny-vl && model-garden data sample --vision shapes/data.jsonl
      model-garden train-vision --base-model ./tiny-vl --dataset shapes/data.jsonl --max-steps 60
      model-garden train-vision --base-model Qwen/Qwen2.5-VL-3B-Instruct --dataset data.jsonl \\
          --max-pixels 200704 --finetune-vision-layers --alias champion

    Under `mlflow run . -e train_vision`, the run MLflow created (MLFLOW_RUN_ID) is used.
    """
    from mg_mlflow.config import build_config
    from mg_mlflow.env import setup_env
    from mg_mlflow.training.vision import train_vision

    setup_env()
    cfg = build_config(VisionTrainConfig, config_file, options, set_args)
    result = train_vision(cfg, show_progress=progress)
    import mlflow

    m = result.metrics
    rows = [("run id", result.run_id), ("tracking URI", mlflow.get_tracking_uri()),
            ("loss", f"{m.get('loss_first', float('nan')):.4f} -> {m.get('loss_final', float('nan')):.4f}"),
            ("eval loss", f"{m['eval_loss_final']:.4f}" if "eval_loss_final" in m else None),
            ("sample answers right", f"{m['samples/exact_match_before']:.0%} -> {m['samples/exact_match_after']:.0%}"
             if "samples/exact_match_after" in m else None),
            ("model folder", result.model_dir), ("logged model", result.model_uri)]
    if result.registered_name:
        rows.append(("registered", f"models:/{result.registered_name}/{result.registered_version}"))
        if cfg.alias:
            rows.append(("alias", f"models:/{result.registered_name}@{cfg.alias}"))
    print_kv("vision training finished", rows)


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
    from mg_mlflow.env import setup_env

    setup_env()
    from mg_mlflow.errors import MGError
    from mg_mlflow.registry.pyfunc_vision import load_vision_dir
    from mg_mlflow.registry.resolve import resolve_model_uri
    from mg_mlflow.training.vision_collator import generate_answer

    resolved = resolve_model_uri(model_uri)
    if resolved.metadata.get("modality") != "vision" and not (resolved.local_dir / "preprocessor_config.json").is_file():
        raise MGError(f"{model_uri} is not a vision model (no image processor in {resolved.local_dir})")
    model, processor = load_vision_dir(resolved.local_dir)
    console().print(generate_answer(model, processor, image, question, max_new_tokens))


def register(group: click.Group) -> None:
    group.add_command(train_vision_cmd)
    group.add_command(ask_cmd)
